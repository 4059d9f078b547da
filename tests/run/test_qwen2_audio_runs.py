"""``salmonn-pl test`` with Qwen2-Audio as the model: through the data path a user runs (SAKURA layout,
variants, batches that mix tracks, hops and clip lengths), every answer is what transformers' own
``generate`` gives the question alone; settings the family cannot follow fail before the model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml
from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from salmonn_pl.cli import build_cli
from tests.helpers.cli_runs import REPO
from tests.helpers.golden import SAKURA_MINI
from tests.helpers.qwen2_audio import TINY_QWEN

MAX_NEW_TOKENS = 10


def _config(path: Path, output_dir: Path, num_beams: int, **model) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "enable_model_summary": False,
                    "enable_progress_bar": False},
        "model": {
            "model": {"qwen2_audio_path": str(TINY_QWEN), "dtype": "float32"},
            "decoder": "Generate",
            "generation": {"num_beams": num_beams, "max_new_tokens": MAX_NEW_TOKENS},
            "output_dir": str(output_dir),
            **model,
        },
        "data": {
            "class_path": "salmonn_pl.data.datamodule.SakuraDataModule",
            "init_args": {"root": str(SAKURA_MINI), "limit": 2, "batch_size": 5,
                          "variants": [{"name": "original"}, {"name": "text_only", "ablation": "no_audio"}]},
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _alone(model, processor, question: str, clip) -> str:
    """One question as in the transformers docs: its chat template, the processor on it alone, generate."""
    content = [{"type": "text", "text": question}]
    if clip is not None:
        content.insert(0, {"type": "audio", "audio_url": "clip.wav"})
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    audio = {"audio": [clip], "sampling_rate": 16000} if clip is not None else {}
    inputs = processor(text=text, return_tensors="pt", **audio)
    return inputs, text


@pytest.mark.slow
@pytest.mark.parametrize("num_beams", [1, 4])
def test_every_answer_of_a_batched_run_is_the_answer_alone(tmp_path, num_beams):
    if not (SAKURA_MINI / "data").is_dir():
        pytest.skip(f"{SAKURA_MINI} not found")
    out = tmp_path / "run"
    build_cli(["test", "--config", str(_config(tmp_path / "config.yaml", out, num_beams))])
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 4 * 2 * 2 * 2  # tracks x hops x clips x variants

    model = Qwen2AudioForConditionalGeneration.from_pretrained(TINY_QWEN).eval()
    processor = Qwen2AudioProcessor.from_pretrained(TINY_QWEN)
    ends = set(model.generation_config.eos_token_id)
    lengths, answers = set(), set()
    for record in records:
        track, _, file = record["id"].split("/")
        clip, _ = sf.read(SAKURA_MINI / "data" / track / "audio" / file, dtype="float32")
        clip = clip if clip.ndim == 1 else clip[:, 0]
        heard = None if record["variant"] == "text_only" else clip
        inputs, _ = _alone(model, processor, record["instruction"], heard)
        with torch.no_grad():
            output = model.generate(**inputs, do_sample=False, num_beams=num_beams, max_new_tokens=MAX_NEW_TOKENS,
                                    min_new_tokens=1, temperature=None, top_p=None, top_k=None)
        new = output[0, inputs["input_ids"].shape[1]:].tolist()
        new = next((new[:i] for i, token in enumerate(new) if token in ends), new)
        expected = processor.tokenizer.decode(new, skip_special_tokens=True).strip()
        assert record["response"] == expected, (record["id"], record["variant"])
        lengths.add(len(clip))
        answers.add(record["response"])
    assert len(lengths) >= 6 and len(answers) >= 8  # clips of different lengths, answers that depend on them


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--model.ablation", "zero_beats"], "model.ablation 'zero_beats' has no meaning for Qwen2-Audio"),
        (["--model.decoder", "DiverseBeam", "--model.decoder.query", "hidden"],
         "model.decoder.query 'hidden' needs the decoder's hidden states"),
        (["--model.padding_side", "right"], "model.padding_side: SALMONN-only setting"),
        (["--model.lora_scale", "2"], "model.lora_scale: SALMONN-only setting"),
    ],
)
def test_salmonn_only_settings_fail_when_parsed(tmp_path, capsys, override, message):
    config = _config(tmp_path / "config.yaml", tmp_path / "run", 1)
    with pytest.raises(SystemExit):
        build_cli(["test", "--config", str(config), *override])
    assert capsys.readouterr().err.startswith(f"error: {message}")
    assert not (tmp_path / "run").exists()


def test_a_variant_longer_than_the_window_fails_before_any_answer(tmp_path):
    config = _config(tmp_path / "config.yaml", tmp_path / "run", 1)
    with pytest.raises(ValueError, match=r"variant 'pad45s-zero-early': pad_seconds 45.0 is longer than "
                                         r"model.model.max_audio_seconds \(30 s\); Qwen2-Audio would not hear"):
        build_cli(["test", "--config", str(config), "--data.init_args.variants", '[{"pad_seconds": 45}]'])
    assert not (tmp_path / "run" / "predictions.jsonl").exists()


def test_swapping_the_family_carries_no_salmonn_setting_over(capsys):
    with pytest.raises(SystemExit):
        build_cli(["test", "--config", str(REPO / "configs" / "demo.yaml"), "--config",
                   str(REPO / "configs" / "qwen2_audio_tiny.yaml"), "--print_config"])
    model = yaml.safe_load(capsys.readouterr().out)["model"]["model"]
    assert model == {"qwen2_audio_path": "assets/tiny-qwen2-audio", "dtype": "float32", "system_prompt": None,
                     "adapters": None, "finetuned": "", "max_audio_seconds": 30.0}


def test_qwen2_audio_by_hub_name_offline_answers_as_the_local_directory(tmp_path, hf_home, monkeypatch):
    """``qwen2_audio_path: Qwen/...`` resolves through the Hugging Face cache (offline here, as on a
    cluster) and the run gives the answers of the same files named by path."""
    from huggingface_hub import constants

    from tests.helpers.hub_cache import add_to_hub_cache, dir_files

    add_to_hub_cache(hf_home / "hub", "Qwen/Qwen2-Audio-tiny", dir_files(TINY_QWEN))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    runs = {}
    for name, path in (("local", str(TINY_QWEN)), ("hub", "Qwen/Qwen2-Audio-tiny")):
        config = _config(tmp_path / f"{name}.yaml", tmp_path / name, 1, decoder="OptionScoring")
        build_cli(["test", "--config", str(config), "--model.model.qwen2_audio_path", path,
                   "--data.init_args.limit", "1", "--data.init_args.tracks", "[Animal, Gender]"])
        runs[name] = [json.loads(line)["response"] for line in (tmp_path / name / "predictions.jsonl").open()]
    assert runs["hub"] == runs["local"] and len(runs["local"]) == 8
    with pytest.raises(FileNotFoundError, match="model.qwen2_audio_path: 'Qwen/Qwen2-Audio-7B-Instruct' is not in"):
        config = _config(tmp_path / "missing.yaml", tmp_path / "missing", 1)
        build_cli(["test", "--config", str(config), "--model.model.qwen2_audio_path", "Qwen/Qwen2-Audio-7B-Instruct"])


def test_a_typo_in_the_family_config_is_named_once_with_its_closest_key(tmp_path, capsys):
    (tmp_path / "typo.yaml").write_text("model:\n  model:\n    class_path: salmonn_pl.model.qwen2_audio.Qwen2AudioConfig\n"
                                        "    init_args: {qwen2_audio_path: x, dtyp: float32}\n")
    with pytest.raises(SystemExit):
        build_cli(["test", "--config", str(REPO / "configs" / "demo.yaml"), "--config", str(tmp_path / "typo.yaml")])
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ['error: Key "model.model.dtyp" is not expected', "model.model.dtyp: did you mean model.model.dtype?"]


@pytest.mark.parametrize("swap", ["fields", "class_path"])
def test_a_command_line_field_keeps_the_family_configs_other_fields(tmp_path, capsys, swap):
    """``--model.model.<field>`` changes that field of whichever family the config names, and no other."""
    if swap == "fields":
        config = [str(_config(tmp_path / "config.yaml", tmp_path / "run", 1))]
    else:
        config = [str(REPO / "configs" / "demo.yaml"), "--config", str(REPO / "configs" / "qwen2_audio_tiny.yaml")]
    with pytest.raises(SystemExit):
        build_cli(["test", "--config", *config, "--model.model.system_prompt", "Answer briefly.",
                   "--model.model.adapters.rank=4", "--print_config"])
    model = yaml.safe_load(capsys.readouterr().out)["model"]["model"]
    assert model["qwen2_audio_path"].endswith("tiny-qwen2-audio") and model["dtype"] == "float32"
    assert model["system_prompt"] == "Answer briefly." and model["adapters"]["rank"] == 4
    assert model["adapters"]["target_modules"] == ["q_proj", "v_proj"]  # the group's other defaults


def test_a_command_line_field_of_salmonn_keeps_the_others(capsys):
    with pytest.raises(SystemExit):
        build_cli(["test", "--config", str(REPO / "configs" / "demo.yaml"), "--model.model.qformer.hidden_size=64",
                   "--model.model.lora_rank", "3", "--print_config"])
    model = yaml.safe_load(capsys.readouterr().out)["model"]["model"]
    assert (model["qformer"]["hidden_size"], model["qformer"]["num_hidden_layers"], model["lora_rank"]) == (64, 2, 3)
    assert model["llm_path"] == "assets/tiny-salmonn/llama" and model["lora_alpha"] == 2


@pytest.mark.slow
def test_the_long_audio_recipe_runs_on_qwen2_audio_in_chunks(tmp_path, monkeypatch):
    """configs/long_audio.yaml (60 s and 120 s recordings) with the family swap: its max_audio_seconds
    carries over (it means the same for both families) and each recording is heard in 30 s chunks."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    cli = build_cli(["test", "--config", "configs/long_audio.yaml", "--config", "configs/tiny.yaml", "--config",
                     "configs/qwen2_audio_tiny.yaml", "--model.output_dir", str(out), "--data.init_args.limit", "1",
                     "--data.init_args.hops", "[single]", "--model.decoder", "OptionScoring"])
    assert cli.model.family_model.max_audio_seconds == 120
    records = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    assert {r["variant"] for r in records} >= {"long120s-late", "long60s-early"}
    assert not any(r.get("error") for r in records)
