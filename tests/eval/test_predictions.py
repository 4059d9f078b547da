"""The predictions store: crash safety, resume without duplicates, DDP shards, SAKURA result files."""

import json

import pytest
from tests.helpers.eval_records import synthetic_records
from tests.helpers.golden import SAKURA_MINI
from torch.utils.data import DistributedSampler

from salmonn_pl.data.datamodule import SakuraDataset
from salmonn_pl.data.sakura import read_sakura
from salmonn_pl.data.variants import Variant
from salmonn_pl.eval.metrics import count_slices
from salmonn_pl.eval.predictions import (
    PREDICTIONS_FILE,
    PredictionStore,
    make_record,
    read_jsonl,
    read_predictions,
    record_key,
    write_sakura_results,
)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _batches(records, size):
    return [records[i : i + size] for i in range(0, len(records), size)]


def test_append_is_durable_and_never_duplicates(tmp_path, records):
    store = PredictionStore(tmp_path)
    assert store.append(records[:10]) == records[:10]
    assert store.append(records[5:15]) == records[10:15]  # only the new keys are written
    store.close()

    reopened = PredictionStore(tmp_path)
    assert reopened.done_keys == {record_key(r) for r in records[:15]}
    assert reopened.pending([record_key(r) for r in records[12:20]]) == list(range(3, 8))
    assert _lines(tmp_path / PREDICTIONS_FILE) == records[:15]


def test_truncated_last_line_is_dropped_and_the_file_repaired(tmp_path, records):
    store = PredictionStore(tmp_path)
    store.append(records[:3])
    store.close()
    path = tmp_path / PREDICTIONS_FILE
    with path.open("a") as f:  # a crash in the middle of writing the fourth record
        f.write(json.dumps(records[3])[:40])

    resumed = PredictionStore(tmp_path)
    assert resumed.done_keys == {record_key(r) for r in records[:3]}
    assert path.read_text().endswith("\n")
    resumed.append(records[3:5])
    resumed.close()
    assert _lines(path) == records[:5]


def test_a_corrupt_line_before_the_end_is_an_error_naming_the_line(tmp_path, records):
    path = tmp_path / PREDICTIONS_FILE
    path.write_text(json.dumps(records[0]) + "\n{not json\n" + json.dumps(records[1]) + "\n")
    with pytest.raises(ValueError, match=rf"{PREDICTIONS_FILE}:2"):
        PredictionStore(tmp_path)


def test_record_without_key_is_an_error(tmp_path):
    path = tmp_path / PREDICTIONS_FILE
    path.write_text('{"id": "x"}\n{"id": "y", "variant": "original"}\n')
    with pytest.raises(ValueError, match=rf"{PREDICTIONS_FILE}:1"):
        read_jsonl(path)


def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path, records):
    batches = _batches(records, 7)
    uninterrupted = PredictionStore(tmp_path / "a")
    for batch in batches:
        uninterrupted.append(batch)
    uninterrupted.close()

    crashed = PredictionStore(tmp_path / "b")
    for batch in batches[:4]:
        crashed.append(batch)
    crashed.close()
    with (tmp_path / "b" / PREDICTIONS_FILE).open("a") as f:  # the batch in flight dies half-written
        f.write("".join(json.dumps(r) + "\n" for r in batches[4])[:-30])

    resumed = PredictionStore(tmp_path / "b")
    survived = len(resumed.done_keys)
    assert 4 * 7 <= survived < 5 * 7  # at most the batch in flight is lost
    generated = 0
    for batch in batches:
        todo = resumed.pending([record_key(r) for r in batch])
        generated += len(todo)
        resumed.append([batch[i] for i in todo])
    resumed.close()

    assert generated == len(records) - survived  # nothing is answered twice
    a, b = read_predictions(tmp_path / "a"), read_predictions(tmp_path / "b")
    assert sorted(map(record_key, a)) == sorted(map(record_key, b))
    assert len(b) == len({record_key(r) for r in b})
    assert count_slices(a) == count_slices(b)


def test_ddp_shards_merge_into_the_single_process_result(tmp_path, records):
    single = PredictionStore(tmp_path / "single")
    single.append(records)
    single.merge_shards()

    world = 3  # 80 questions: the sampler pads to 81
    stores = [PredictionStore(tmp_path / "ddp", rank=r, world_size=world) for r in range(world)]
    for rank, store in enumerate(stores):
        # Lightning's sampler pads the last rank's share with questions already on another rank
        indices = list(DistributedSampler(records, num_replicas=world, rank=rank, shuffle=False))
        for batch in _batches([records[i] for i in indices], 4):
            store.append(batch)
    total_written = sum(len(read_jsonl(s.own_path)) for s in stores)
    assert total_written > len(records)  # the padding duplicates reached the shards
    merged = stores[0].merge_shards()

    assert not list((tmp_path / "ddp").glob("predictions.rank*.jsonl"))
    assert sorted(map(record_key, merged)) == sorted(map(record_key, records))
    assert count_slices(merged) == count_slices(read_predictions(tmp_path / "single"))
    # a rank re-opening the merged directory sees every answer as done
    assert PredictionStore(tmp_path / "ddp", rank=1, world_size=world).done_keys == {record_key(r) for r in records}


def test_make_record_from_example_meta():
    meta = {
        "track": "Emotion", "hop": "single", "file": "x.wav", "label": "angry", "answer": " (c) angry",
        "instruction": "How does the speaker feel? (a) happy (b) sad (c) angry (d) fear",
        "question": "How does the speaker feel?", "variant": "pad30s-zero-late-no_options",
        "variant_params": {"pad_seconds": 30.0, "pad_position": "late", "strip_options": True, "ablation": "none"},
        "longer_than_target": False,
    }
    record = make_record("Emotion/single/x.wav", meta, "angry")
    assert record_key(record) == ("Emotion/single/x.wav", "pad30s-zero-late-no_options")
    assert record["label"] == "(c) angry" and record["attribute_label"] == "angry"
    assert record["instruction"] == "How does the speaker feel?"  # what the model saw
    assert record["meta"] == {
        "variant_params": {"pad_seconds": 30.0, "pad_position": "late", "strip_options": True, "ablation": "none"},
        "file": "x.wav", "longer_than_target": False, "original_instruction": meta["instruction"],
    }
    nested = make_record("Emotion/single/x.wav", {**meta, "variant": "long_audio", "variant_params": {"position": "late"}}, "a")
    assert nested["meta"]["variant_params"] == {"position": "late"}
    with pytest.raises(ValueError, match=r"example Emotion/single/y.wav: meta lacks \['hop'\]"):
        make_record("Emotion/single/y.wav", {k: v for k, v in meta.items() if k != "hop"}, "angry")


def test_sakura_results_are_in_the_release_judge_format(tmp_path):
    records = synthetic_records(n_clips=3, variants=("original", "no_options"))
    written = write_sakura_results(records, tmp_path, model_name="salmonn_7b")
    assert len(written) == 2 * 4 * 2
    document = json.loads((tmp_path / "original" / "Emotion_salmonn_7b_multi.json").read_text())
    assert document["attribute"] == "emotion" and document["type"] == "multi"
    expected = [r for r in records if r["variant"] == "original" and r["track"] == "Emotion" and r["hop"] == "multi"]
    # keyed like the release's metadata.json
    assert sorted(document["results"]) == sorted(f"data/Emotion/audio/{r['id'].rsplit('/', 1)[1]}" for r in expected)
    # the fields the benchmark's judge script reads for every entry
    for record in expected:
        entry = document["results"][f"data/Emotion/audio/{record['id'].rsplit('/', 1)[1]}"]
        assert entry == {"instruction": record["instruction"], "response": record["response"], "label": record["label"]}


@pytest.mark.skipif(not SAKURA_MINI.is_dir(), reason=f"no SAKURA sample at {SAKURA_MINI}")
def test_sakura_results_of_the_release_keep_its_keys_and_verbatim_labels(tmp_path):
    questions, skipped = read_sakura(SAKURA_MINI)
    assert not skipped
    dataset = SakuraDataset(questions, [Variant(name="original")])
    records = [make_record(e["id"], e["meta"], f"answer to {e['id']}") for e in dataset]
    assert any(r["label"] != r["meta"].get("answer_verbatim", r["label"]) for r in records)  # the release's stray spaces
    write_sakura_results(records, tmp_path, model_name="salmonn")
    for track in ("Animal", "Emotion", "Gender", "Language"):
        metadata = json.loads((SAKURA_MINI / "data" / track / "metadata.json").read_text(encoding="utf-8"))
        for hop in ("single", "multi"):
            document = json.loads((tmp_path / "original" / f"{track}_salmonn_{hop}.json").read_text(encoding="utf-8"))
            assert document["attribute"] == track.lower() and document["type"] == hop
            assert sorted(document["results"]) == sorted(metadata)  # the same keys
            for key, entry in document["results"].items():
                assert entry["label"] == metadata[key][f"{hop}_answer"]  # verbatim, " (c) angry" included
                assert entry["instruction"] == metadata[key][f"{hop}_instruction"]
