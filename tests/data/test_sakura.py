"""SAKURA reader: release layout (csv/json), Hugging Face parquet copy, ids, selection, bad input."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from tests.helpers.golden import SAKURA_MINI

from salmonn_pl.audio.load import load_audio
from salmonn_pl.data.sakura import (
    COLUMNS,
    HOPS,
    TRACKS,
    SakuraDataError,
    find_unreadable_audio,
    load_question_audio,
    read_sakura,
)

needs_mini = pytest.mark.skipif(not SAKURA_MINI.is_dir(), reason=f"no sakura-mini at {SAKURA_MINI}")


def make_release(root: Path, track: str = "Animal", n: int = 3, rows: list[dict] | None = None) -> Path:
    """A tiny release-layout track with sine clips; returns the metadata.csv path."""
    audio_dir = root / "data" / track / "audio"
    audio_dir.mkdir(parents=True)
    if rows is None:
        rows = [
            {
                "file": f"clip{i}.wav",
                "attribute_label": f"label{i}",
                "single_instruction": f"Which sound {i}? (a) cat (b) dog",
                "single_answer": "(a) cat",
                "multi_instruction": f"What does it eat {i}? (a) fish (b) bones (c) hay",
                "multi_answer": " (b) bones ",
            }
            for i in range(n)
        ]
    for row in rows:
        if row.get("file"):
            sf.write(audio_dir / row["file"], 0.1 * np.sin(np.arange(8000) * 0.05), 16000)
    path = root / "data" / track / "metadata.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@needs_mini
def test_reads_all_of_sakura_mini_with_stable_ids():
    questions, skipped = read_sakura(SAKURA_MINI)
    assert not skipped
    assert len(questions) == 4 * 24 * 2
    ids = [q.id for q in questions]
    assert len(set(ids)) == len(ids)
    for q in questions:
        assert q.id == f"{q.track}/{q.hop}/{q.file}"
        assert Path(q.audio).is_file() and q.answer == q.answer.strip() and q.answer.startswith("(")
        assert q.answer.split(")")[0] + ")" in q.instruction  # the golden option is among the options
    again, _ = read_sakura(SAKURA_MINI)
    assert [q.id for q in again] == ids
    # The CSV row order is kept, so the first Animal single question is the first CSV row.
    with (SAKURA_MINI / "data/Animal/metadata.csv").open(newline="", encoding="utf-8") as handle:
        first = next(csv.DictReader(handle))
    assert questions[0].id == f"Animal/single/{first['file']}"
    assert questions[0].instruction == first["single_instruction"]


@needs_mini
def test_json_metadata_gives_the_same_questions(tmp_path: Path):
    for track in TRACKS:
        (tmp_path / "data" / track).mkdir(parents=True)
        shutil.copy(SAKURA_MINI / "data" / track / "metadata.json", tmp_path / "data" / track)
        (tmp_path / "data" / track / "audio").symlink_to(SAKURA_MINI / "data" / track / "audio")
    from_json, _ = read_sakura(tmp_path)
    from_csv, _ = read_sakura(SAKURA_MINI)
    key = lambda q: q.id  # noqa: E731
    pairs = zip(sorted(from_json, key=key), sorted(from_csv, key=key))
    for j, c in pairs:
        assert (j.id, j.label, j.instruction, j.answer) == (c.id, c.label, c.instruction, c.answer)
    assert len(from_json) == len(from_csv)


@needs_mini
def test_selection_and_limit():
    questions, _ = read_sakura(SAKURA_MINI, tracks=["Gender", "Emotion"], hops=["multi"], limit=5)
    assert [(q.track, q.hop) for q in questions] == [("Gender", "multi")] * 5 + [("Emotion", "multi")] * 5
    with pytest.raises(SakuraDataError, match="no such track directory") as excinfo:
        read_sakura(SAKURA_MINI, tracks=["Animals"])
    assert "'Animal'" in str(excinfo.value) and str(SAKURA_MINI / "data" / "Animals") in str(excinfo.value)
    with pytest.raises(ValueError, match="unknown hop"):
        read_sakura(SAKURA_MINI, hops=["double"])


def test_missing_header_column_names_file_and_column(tmp_path: Path):
    rows = [{c: "x" for c in COLUMNS if c != "multi_answer"} | {"file": "a.wav"}]
    path = make_release(tmp_path, rows=rows)
    with pytest.raises(SakuraDataError, match="multi_answer") as excinfo:
        read_sakura(tmp_path, tracks=["Animal"])
    assert str(path) in str(excinfo.value)
    # A header error concerns every row: skipping cannot help, so it still raises.
    with pytest.raises(SakuraDataError, match="multi_answer"):
        read_sakura(tmp_path, tracks=["Animal"], on_error="skip")


def test_row_with_missing_value_raises_or_is_skipped(tmp_path: Path):
    path = make_release(tmp_path, n=3)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0]  # clip1: drop the multi_answer field
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    with pytest.raises(SakuraDataError, match="multi_answer") as excinfo:
        read_sakura(tmp_path, tracks=["Animal"])
    assert f"{path}, row 3" in str(excinfo.value)

    questions, skipped = read_sakura(tmp_path, tracks=["Animal"], on_error="skip")
    assert [s.id for s in skipped] == ["Animal/multi/clip1.wav"]
    assert "multi_answer" in skipped[0].reason and str(path) in skipped[0].reason
    assert "Animal/single/clip1.wav" in [q.id for q in questions] and len(questions) == 5


def test_missing_audio_file_raises_or_is_skipped(tmp_path: Path):
    make_release(tmp_path, n=2)
    missing = tmp_path / "data/Animal/audio/clip0.wav"
    missing.unlink()
    with pytest.raises(SakuraDataError, match="not found") as excinfo:
        read_sakura(tmp_path, tracks=["Animal"])
    assert str(missing) in str(excinfo.value)
    questions, skipped = read_sakura(tmp_path, tracks=["Animal"], on_error="skip")
    assert sorted(s.id for s in skipped) == ["Animal/multi/clip0.wav", "Animal/single/clip0.wav"]
    assert all(q.file == "clip1.wav" for q in questions)


def test_unreadable_audio_is_found_and_reported_per_question(tmp_path: Path):
    make_release(tmp_path, n=4)
    audio = tmp_path / "data/Animal/audio"
    (audio / "clip0.wav").write_bytes(b"")
    (audio / "clip1.wav").write_bytes(b"RIFF" + b"\x00" * 100)
    nan = np.zeros(800, dtype=np.float32)
    nan[5] = np.nan
    sf.write(audio / "clip2.wav", nan, 16000, subtype="FLOAT")

    questions, _ = read_sakura(tmp_path, tracks=["Animal"])
    usable, skipped = find_unreadable_audio(questions)
    assert {q.file for q in usable} == {"clip3.wav"}
    reasons = {s.id: s.reason for s in skipped}
    assert set(reasons) == {f"Animal/{hop}/clip{i}.wav" for hop in HOPS for i in range(3)}
    empty_reason = reasons["Animal/single/clip0.wav"]
    assert "empty" in empty_reason and str(audio / "clip0.wav") in empty_reason
    assert "cannot decode" in reasons["Animal/multi/clip1.wav"]
    assert "NaN" in reasons["Animal/single/clip2.wav"]


def test_not_a_benchmark_root_is_a_clear_error(tmp_path: Path):
    with pytest.raises(SakuraDataError, match="not a SAKURA release"):
        read_sakura(tmp_path)
    (tmp_path / "data" / "Animal").mkdir(parents=True)
    with pytest.raises(SakuraDataError, match="no metadata.csv or metadata.json"):
        read_sakura(tmp_path, tracks=["Animal"])


def _write_parquet_copy(src: Path, dst: Path, track: str, n: int) -> list[str]:
    """A Hugging Face-style copy of the first n rows of a track (Audio feature = {bytes, path})."""
    with (src / "data" / track / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:n]
    audio_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "file": [r["file"] for r in rows],
            "audio": pa.array(
                [{"bytes": (src / "data" / track / "audio" / r["file"]).read_bytes(), "path": r["file"]} for r in rows],
                type=audio_type,
            ),
            **{c: [r[c] for r in rows] for c in COLUMNS if c != "file"},
        }
    )
    out = dst / f"{track}QA" / "data" / "test-00000-of-00001.parquet"
    out.parent.mkdir(parents=True)
    pq.write_table(table, out)
    return [r["file"] for r in rows]


@needs_mini
def test_reads_a_hugging_face_parquet_copy(tmp_path: Path):
    files = {track: _write_parquet_copy(SAKURA_MINI, tmp_path, track, n=3) for track in ("Animal", "Language")}
    questions, skipped = read_sakura(tmp_path, tracks=["Animal", "Language"])
    assert not skipped and len(questions) == 12
    reference = {q.id: q for q in read_sakura(SAKURA_MINI, tracks=["Animal", "Language"])[0]}
    for q in questions:
        assert q.file in files[q.track]
        ref = reference[q.id]
        assert (q.label, q.instruction, q.answer) == (ref.label, ref.instruction, ref.answer)
        np.testing.assert_array_equal(load_question_audio(q), load_audio(ref.audio))


def test_parquet_missing_column_names_the_file(tmp_path: Path):
    out = tmp_path / "GenderQA" / "test.parquet"
    out.parent.mkdir()
    pq.write_table(pa.table({"file": ["a.wav"], "audio": [{"bytes": b"", "path": "a.wav"}]}), out)
    with pytest.raises(SakuraDataError, match="attribute_label") as excinfo:
        read_sakura(tmp_path, tracks=["Gender"])
    assert str(out) in str(excinfo.value)


def _json_release(root: Path, text: str, track: str = "Animal") -> Path:
    """A release-layout track whose metadata.json is ``text`` (clips clip0.wav, clip1.wav exist)."""
    make_release(root, track=track, n=2)
    (root / "data" / track / "metadata.csv").unlink()
    path = root / "data" / track / "metadata.json"
    path.write_text(text, encoding="utf-8")
    return path


def _json_entry(i: int, answer: str = "(a) cat") -> str:
    return (
        f'{{"attribute_label": "cat", "single_instruction": "Which {i}? (a) cat (b) dog", "single_answer": "{answer}", '
        f'"multi_instruction": "Eats {i}? (a) fish (b) hay", "multi_answer": "(a) fish"}}'
    )


def test_duplicate_json_key_is_an_error_naming_file_and_key(tmp_path: Path):
    key = "data/Animal/audio/clip0.wav"
    path = _json_release(
        tmp_path,
        f'{{"{key}": {_json_entry(0)}, "data/Animal/audio/clip1.wav": {_json_entry(1)}, "{key}": {_json_entry(0, "(b) dog")}}}',
    )
    for on_error in ("raise", "skip"):  # the file itself is wrong: skipping cannot pick an entry
        with pytest.raises(SakuraDataError, match="appears more than once") as excinfo:
            read_sakura(tmp_path, tracks=["Animal"], on_error=on_error)
        assert str(path) in str(excinfo.value) and repr(key) in str(excinfo.value)
    # A column given twice inside one entry is rejected the same way.
    doubled = _json_entry(0).replace('"attribute_label": "cat"', '"attribute_label": "cat", "attribute_label": "dog"')
    _json_release(tmp_path / "inner", f'{{"{key}": {doubled}}}')
    with pytest.raises(SakuraDataError, match="'attribute_label' appears more than once"):
        read_sakura(tmp_path / "inner", tracks=["Animal"])


def test_json_entry_that_is_not_an_object_names_file_and_entry(tmp_path: Path):
    path = _json_release(
        tmp_path, f'{{"data/Animal/audio/clip0.wav": {_json_entry(0)}, "data/Animal/audio/clip1.wav": ["cat"]}}'
    )
    with pytest.raises(SakuraDataError, match="expected an object of metadata columns, got list") as excinfo:
        read_sakura(tmp_path, tracks=["Animal"])
    assert f"{path}, entry 'data/Animal/audio/clip1.wav'" in str(excinfo.value)


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_non_utf8_metadata_names_the_file(tmp_path: Path, kind: str):
    if kind == "csv":
        path = make_release(tmp_path, n=2)
        path.write_bytes(path.read_bytes().replace(b"label1", "\u00e9tiquette".encode("latin-1")))
    else:
        path = _json_release(tmp_path, f'{{"data/Animal/audio/clip0.wav": {_json_entry(0)}}}')
        path.write_bytes(path.read_bytes().replace(b"Which 0?", "Qu\u00e9 0?".encode("latin-1")))
    with pytest.raises(SakuraDataError, match="not UTF-8") as excinfo:
        read_sakura(tmp_path, tracks=["Animal"])
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_metadata_saved_with_a_byte_order_mark_reads_like_without(tmp_path: Path, kind: str):
    if kind == "csv":
        path = make_release(tmp_path, n=2)
    else:
        entries = ", ".join(f'"data/Animal/audio/clip{i}.wav": {_json_entry(i)}' for i in range(2))
        path = _json_release(tmp_path, "{" + entries + "}")
    expected, _ = read_sakura(tmp_path, tracks=["Animal"])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    questions, skipped = read_sakura(tmp_path, tracks=["Animal"])
    assert not skipped and questions == expected and len(questions) == 4


@pytest.mark.parametrize("content", ["", "{}", "csv-header-only"])
def test_track_without_questions_is_an_error_naming_its_metadata(tmp_path: Path, content: str):
    path = make_release(tmp_path, n=1)
    if content == "csv-header-only":
        path.write_text(",".join(COLUMNS) + "\n", encoding="utf-8")
        match = "no questions"
    else:
        path.unlink()
        path = _json_release(tmp_path / "j", content)
        match = "not valid JSON" if content == "" else "no questions"
        tmp_path = tmp_path / "j"
    with pytest.raises(SakuraDataError, match=match) as excinfo:
        read_sakura(tmp_path, tracks=["Animal"], on_error="skip")
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize("limit", [0, -1, 2.5, True])
def test_limit_must_be_a_positive_integer(tmp_path: Path, limit):
    make_release(tmp_path, n=2)
    with pytest.raises(ValueError, match=rf"limit must be a positive integer or null, got {limit!r}"):
        read_sakura(tmp_path, tracks=["Animal"], limit=limit)


def test_limit_selects_the_first_rows_whatever_their_errors(tmp_path: Path):
    """The first N questions of the release per track and hop, then skip: missing and unreadable
    audio count alike, and a bad row is not replaced by the next one."""
    make_release(tmp_path, n=5)
    audio = tmp_path / "data/Animal/audio"
    (audio / "clip0.wav").unlink()  # missing: found by read_sakura
    (audio / "clip1.wav").write_bytes(b"RIFF not audio")  # unreadable: found by decoding

    questions, skipped = read_sakura(tmp_path, tracks=["Animal"], limit=3, on_error="skip")
    assert sorted(s.id for s in skipped) == [f"Animal/{hop}/clip0.wav" for hop in ("multi", "single")]
    assert [q.file for q in questions] == ["clip1.wav", "clip2.wav"] * 2
    usable, unreadable = find_unreadable_audio(questions)
    assert [q.id for q in usable] == ["Animal/single/clip2.wav", "Animal/multi/clip2.wav"]
    assert [s.id for s in unreadable] == ["Animal/single/clip1.wav", "Animal/multi/clip1.wav"]
    # The same selection as without errors: the first 3 rows.
    assert {q.file for q in questions} | {"clip0.wav"} == {f"clip{i}.wav" for i in range(3)}


def test_truncated_clip_is_skipped_and_listed(tmp_path: Path):
    make_release(tmp_path, n=2)
    clip = tmp_path / "data/Animal/audio/clip0.wav"
    clip.write_bytes(clip.read_bytes()[:-2000])
    questions, _ = read_sakura(tmp_path, tracks=["Animal"])
    usable, skipped = find_unreadable_audio(questions)
    assert {q.file for q in usable} == {"clip1.wav"}
    assert [s.id for s in skipped] == ["Animal/single/clip0.wav", "Animal/multi/clip0.wav"]
    assert all("truncated" in s.reason and str(clip) in s.reason for s in skipped)
