"""SAKURA by its Hugging Face name (``SLLM-multi-hop``), offline: the datasets cache and the hub cache.

The Hub cannot be reached from the tests, so they build what a first online load leaves behind from
sakura-mini: the ``datasets`` cache of ``load_dataset("SLLM-multi-hop/<Track>QA", split="test")``,
or the hub-cache snapshot that ``hf download SLLM-multi-hop/<Track>QA --repo-type dataset`` writes,
both of parquet files with the hub's schema (audio as a ``{bytes, path}`` Audio struct). The name
is resolved in a subprocess that has ``HF_HOME`` in the test's folder and ``HF_HUB_OFFLINE=1``
(``datasets`` and ``huggingface_hub`` read them when imported).
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.helpers.golden import SAKURA_MINI

import salmonn_pl
from salmonn_pl.data.sakura import COLUMNS, TRACKS, load_question_audio, read_sakura

datasets = pytest.importorskip("datasets")
# End-to-end: each test loads the benchmark by name in a subprocess.
pytestmark = pytest.mark.slow
needs_mini = pytest.mark.skipif(not SAKURA_MINI.is_dir(), reason=f"no sakura-mini at {SAKURA_MINI}")

REVISION = "0123456789abcdef0123456789abcdef01234567"
SRC = Path(salmonn_pl.__file__).resolve().parents[1]  # the subprocess imports the code under test

# Runs in the subprocess: every question read by name, with its audio, written to an npz.
READ_BY_NAME = """
import json, sys
import numpy as np
from salmonn_pl.data.sakura import _open_hub_dataset, hub_tracks, load_question_audio, read_sakura
root, out = sys.argv[1], sys.argv[2]
questions, skipped = read_sakura(root)
assert not skipped, skipped
records = [dict(id=q.id, label=q.label, instruction=q.instruction, answer=q.answer) for q in questions]
sources = sorted({type(_open_hub_dataset(repo)).__name__ for repo in hub_tracks(root).values()})
np.savez(out, records=json.dumps(records), sources=json.dumps(sources),
         **{f"wav{i}": load_question_audio(q) for i, q in enumerate(questions)})
"""


def _hub_parquet(track: str, out: Path) -> None:
    """The test split of ``SLLM-multi-hop/<track>QA`` as the hub stores it, from sakura-mini."""
    with (SAKURA_MINI / "data" / track / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    features = datasets.Features(
        {"file": datasets.Value("string"), "audio": datasets.Audio(), **{c: datasets.Value("string") for c in COLUMNS[1:]}}
    )
    schema = features.arrow_schema  # carries the Audio feature in its "huggingface" metadata
    audio = [{"bytes": (SAKURA_MINI / "data" / track / "audio" / r["file"]).read_bytes(), "path": r["file"]} for r in rows]
    columns = {"file": [r["file"] for r in rows], "audio": audio, **{c: [r[c] for r in rows] for c in COLUMNS[1:]}}
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), out)


def _hub_cache(home: Path, tracks=TRACKS) -> None:
    """Hub-cache snapshots, as ``hf download SLLM-multi-hop/<Track>QA --repo-type dataset`` leaves them."""
    for track in tracks:
        repo_dir = home / "hub" / f"datasets--SLLM-multi-hop--{track}QA"
        _hub_parquet(track, repo_dir / "snapshots" / REVISION / "data" / "test-00000-of-00001.parquet")
        (repo_dir / "refs").mkdir()
        (repo_dir / "refs" / "main").write_text(REVISION)


def _datasets_cache(home: Path, tracks=TRACKS) -> None:
    """The ``datasets`` cache that ``load_dataset("SLLM-multi-hop/<Track>QA", split="test")`` leaves
    (``<cache>/SLLM-multi-hop___<track>_qa/default/0.0.0/<revision>/``), prepared from parquet files
    by the builder that load would use, under the repository's name."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    for track in tracks:
        source = home / "staging" / f"{track}QA" / "test-00000-of-00001.parquet"
        _hub_parquet(track, source)
        builder = Parquet(
            cache_dir=str(home / "datasets"),
            dataset_name=f"{track}QA",
            data_files={"test": [str(source)]},
            hash=REVISION,
            config_name="default",
        )
        # What a load from the Hub names its cache by (a local data_files path cannot belong to a repo).
        builder.repo_id, builder.config_id = f"SLLM-multi-hop/{track}QA", "default"
        builder._cache_dir = builder._build_cache_dir()
        builder.download_and_prepare()
        assert (home / "datasets" / f"SLLM-multi-hop___{track.lower()}_qa" / "default").is_dir()


def _offline_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return env | {
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]),
    }


def _read_by_name(root: str, home: Path, out: Path) -> tuple[list[dict], list[str], list[np.ndarray]]:
    result = subprocess.run(
        [sys.executable, "-c", READ_BY_NAME, root, str(out)],
        env=_offline_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out) as saved:
        records = json.loads(str(saved["records"]))
        return records, json.loads(str(saved["sources"])), [saved[f"wav{i}"] for i in range(len(records))]


def _assert_same_as_release(records: list[dict], wavs: list[np.ndarray], tracks) -> None:
    """Example for example: ids, labels, questions and answers verbatim, waveforms bit for bit."""
    release, _ = read_sakura(SAKURA_MINI, tracks=list(tracks))
    assert [r["id"] for r in records] == [q.id for q in release]
    for record, wav, question in zip(records, wavs, release):
        assert (record["label"], record["instruction"], record["answer"]) == (
            question.label,
            question.instruction,
            question.answer,
        )
        assert np.array_equal(wav, load_question_audio(question)), question.id


@needs_mini
def test_benchmark_by_name_through_the_datasets_cache_equals_the_release(tmp_path: Path):
    home = tmp_path / "hf"
    _datasets_cache(home)
    records, sources, wavs = _read_by_name("SLLM-multi-hop", home, tmp_path / "out.npz")
    assert sources == ["Dataset"]  # loaded by datasets.load_dataset, not read from parquet by hand
    assert len(records) == 4 * 24 * 2
    _assert_same_as_release(records, wavs, TRACKS)


@needs_mini
def test_one_track_by_name_through_the_hub_cache_equals_the_release(tmp_path: Path):
    home = tmp_path / "hf"
    _hub_cache(home, tracks=["Animal"])
    records, sources, wavs = _read_by_name("SLLM-multi-hop/AnimalQA", home, tmp_path / "out.npz")
    assert sources == ["PosixPath"]  # load_dataset has no cache offline: the snapshot is read
    assert {r["id"].split("/")[0] for r in records} == {"Animal"} and len(records) == 48
    _assert_same_as_release(records, wavs, ["Animal"])


@needs_mini
def test_data_module_takes_a_hub_name_as_root(tmp_path: Path):
    home = tmp_path / "hf"
    _hub_cache(home, tracks=["Gender"])
    script = """
from salmonn_pl.data.datamodule import SakuraDataModule
dm = SakuraDataModule("SLLM-multi-hop/GenderQA", limit=2, batch_size=4)
assert dm.tracks == ["Gender"], dm.tracks
batch = next(iter(dm.test_dataloader()))
print(sorted(batch["id"]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], env=_offline_env(home), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = [q.file for q in read_sakura(SAKURA_MINI, tracks=["Gender"], limit=2)[0]][:2]
    assert result.stdout.strip() == str(sorted(f"Gender/{hop}/{f}" for hop in ("single", "multi") for f in files))


def test_uncached_name_offline_fails_at_construction_saying_how_to_fetch_it(tmp_path: Path):
    script = """
from salmonn_pl.data.datamodule import SakuraDataModule

try:
    SakuraDataModule("SLLM-multi-hop/AnimalQA")
except Exception as err:
    print(type(err).__name__, err)
else:
    print("built")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], env=_offline_env(tmp_path / "empty"), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    message = result.stdout
    assert message.startswith("SakuraDataError SLLM-multi-hop/AnimalQA: ")
    assert "huggingface-cli download SLLM-multi-hop/AnimalQA --repo-type dataset" in message
    assert "hf download SLLM-multi-hop/AnimalQA --repo-type dataset" in message
