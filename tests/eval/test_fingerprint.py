"""run.json: a re-run resumes only when the stored answers came from the same settings and judge."""

import json
import os

import pytest

from salmonn_pl.eval.fingerprint import RUN_FILE, RunMismatch, check_run, flatten, path_digest

ANSWERS = {"module": {"generation": {"num_beams": 4, "top_p": 0.9}, "padding_side": "left"},
           "weights": {"ckpt": "10 bytes, blake2b 00"}, "data": {"tracks": ["Animal"], "limit": None}}


def test_first_start_writes_run_json_and_the_same_settings_resume(tmp_path):
    assert check_run(tmp_path, ANSWERS, "rule", has_answers=False) == "new"
    stored = json.loads((tmp_path / RUN_FILE).read_text())
    assert stored == {"answers": flatten(ANSWERS), "judge": "rule"}
    assert check_run(tmp_path, json.loads(json.dumps(ANSWERS)), "rule", has_answers=True) == "resume"


def test_changed_settings_are_listed_field_by_field(tmp_path):
    check_run(tmp_path, ANSWERS, "rule", has_answers=False)
    changed = {**ANSWERS, "module": {"generation": {"num_beams": 1, "top_p": 0.9}, "padding_side": "left"},
               "data": {"tracks": ["Animal", "Gender"], "limit": None}, "precision": "16-mixed"}
    with pytest.raises(RunMismatch) as error:
        check_run(tmp_path, changed, "rule", has_answers=True)
    message = str(error.value)
    assert "module.generation.num_beams: 4 -> 1" in message
    assert 'data.tracks: ["Animal"] -> ["Animal", "Gender"]' in message
    assert 'precision: "<absent>" -> "16-mixed"' in message
    assert "top_p" not in message
    assert "--model.output_dir" in message


def test_a_changed_judge_points_to_rejudge(tmp_path):
    check_run(tmp_path, ANSWERS, "rule", has_answers=False)
    with pytest.raises(RunMismatch, match=rf"salmonn-pl-eval rejudge --predictions {tmp_path}"):
        check_run(tmp_path, ANSWERS, "llm:gpt-4o", has_answers=True)


def test_answers_without_run_json_are_not_resumed(tmp_path):
    with pytest.raises(RunMismatch, match="no run.json"):
        check_run(tmp_path, ANSWERS, "rule", has_answers=True)


def test_a_directory_without_answers_starts_afresh_whatever_run_json_says(tmp_path):
    check_run(tmp_path, ANSWERS, "rule", has_answers=False)
    assert check_run(tmp_path, {"other": 1}, "llm:x", has_answers=False) == "new"
    assert json.loads((tmp_path / RUN_FILE).read_text())["judge"] == "llm:x"


def test_weight_digests_follow_the_content_not_the_timestamps(tmp_path):
    weights = tmp_path / "llm"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"\0" * 1000)
    (weights / "config.json").write_text("{}")
    digest = path_digest(weights)
    os.utime(weights / "model.safetensors", (0, 0))
    assert path_digest(weights) == digest
    (weights / "model.safetensors").write_bytes(b"\0" * 999 + b"\1")  # same size, other weights
    assert path_digest(weights) != digest


def test_large_files_are_sampled_but_a_changed_block_is_seen(tmp_path, monkeypatch):
    import salmonn_pl.eval.fingerprint as fingerprint

    monkeypatch.setattr(fingerprint, "_FULL_HASH_BYTES", 1 << 16)
    big = tmp_path / "shard.bin"
    big.write_bytes(bytes(range(256)) * 4096)  # 1 MiB, above the patched limit
    digest = path_digest(big)
    with big.open("r+b") as handle:
        handle.seek((1 << 20) - 10)
        handle.write(b"changed!")
    assert path_digest(big) != digest


def test_a_setting_added_later_at_its_neutral_value_still_resumes(tmp_path):
    """A run.json written before a variant had ``text_caption`` resumes under a salmonn-pl whose
    variants carry ``text_caption: false``; a caption variant is a change."""
    before = {"data": {"variants": [{"pad_seconds": 15.0, "ablation": "none"}], "limit": None}}
    check_run(tmp_path, before, "rule", has_answers=False)
    same = {"data": {"variants": [{"pad_seconds": 15.0, "ablation": "none", "text_caption": False}],
                     "caption_templates": None, "limit": None}}
    assert check_run(tmp_path, same, "rule", has_answers=True) == "resume"
    changed = {"data": {"variants": [{"pad_seconds": 15.0, "ablation": "none", "text_caption": True}], "limit": None}}
    with pytest.raises(RunMismatch, match="data.variants"):
        check_run(tmp_path, changed, "rule", has_answers=True)
