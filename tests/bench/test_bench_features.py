"""The features benchmark at toy size: every method and worker count measured, outputs that agree, RESULTS.md updated.

Correctness only: no figure is asserted, since CI machines differ in speed.
"""

import pytest
import torch
from tests.helpers.bench_scripts import load_script, needs_mini
from tests.helpers.golden import SAKURA_MINI
from torch.utils.data import DataLoader

import common  # noqa: E402,I001  (bench/common.py, registered under that name by tests.helpers.bench_scripts)

bench = load_script("bench_features", "features.py")


@pytest.mark.slow
@needs_mini
def test_toy_run_measures_every_method_and_replaces_its_results_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmarks\n\nHow figures are made.\n\n## features\n\nstale figures\n\n## other\n\nkept\n")
    clips, workers, repeats = 10, [0, 1], 2  # 10 clips in batches of 4: the last batch is ragged

    report = bench.main(root=SAKURA_MINI, clips=clips, batch_size=4, workers=workers, repeats=repeats, results=results)

    conditions = list(report.max_abs_diff)
    assert len(conditions) == 2 and conditions[1].startswith("padded to 30 s")
    assert all(diff <= bench.MAX_ABS_DIFF for diff in report.max_abs_diff.values())
    methods = [bench.TRANSFORMERS, bench.LOG_MEL, bench.LOG_MEL_FBANK]
    expected = {("features", c, m, None) for c in conditions for m in methods}
    expected |= {("data path", conditions[1], m, w) for m in methods for w in workers}
    if torch.cuda.is_available():
        expected |= {("features", c, bench.FBANK_GPU, None) for c in conditions}
    assert {(r.section, r.condition, r.method, r.workers) for r in report.rows} == expected
    for row in report.rows:
        assert row.clips == clips and len(row.timing.seconds) == repeats and row.timing.best > 0
    assert report.speedup(report.row("features", conditions[0], bench.TRANSFORMERS)) == pytest.approx(1.0)

    text = results.read_text()
    assert text.startswith("# Benchmarks\n\nHow figures are made.\n\n## features\n")
    assert "stale figures" not in text and text.count("## features") == 1
    assert text.rstrip().endswith("## other\n\nkept")
    assert report.markdown.strip() in text
    for method in methods:
        assert f"| {conditions[0]} | {method} |" in text and f"| {method} | 1 |" in text
    assert "- (b) >= 3x (a), features alone, as released: x" in text


@needs_mini
def test_data_path_collators_agree_with_each_other():
    """The data-path comparison is fair only if (a) and (b) deliver the same spectrograms."""
    from transformers import WhisperFeatureExtractor

    from salmonn_pl.data.datamodule import SakuraDataModule
    from salmonn_pl.data.variants import Variant

    dm = SakuraDataModule(SAKURA_MINI, tracks=["Emotion"], limit=2, variants=[Variant(pad_seconds=30)], batch_size=4)
    dm.setup("test")
    dataset = bench.repeat_dataset(dm.dataset, 6)  # 4 questions, repeated in order
    assert [dataset[i]["id"] for i in range(6)] == [dm.dataset[i % 4]["id"] for i in range(6)]

    ours = next(iter(DataLoader(dataset, batch_size=6, collate_fn=bench.FbankCollator(dm.collator))))
    official = bench.TransformersCollator(WhisperFeatureExtractor())
    reference = next(iter(DataLoader(dataset, batch_size=6, collate_fn=official)))
    assert (ours["spectrogram"] - reference["spectrogram"]).abs().max().item() <= bench.MAX_ABS_DIFF
    for key in ("raw_wav", "padding_mask", "wav_lengths"):  # both paths ship the same tensors to the model
        assert torch.equal(ours[key], reference[key]), key
    fbank = ours["fbank"]
    assert fbank.shape == (6, 2998, 128) and fbank.dtype == torch.float64  # 30 s: 1 + (480000 - 400) // 160 frames
    assert torch.equal(fbank[4], fbank[0])  # the same question gives the same fbank wherever it sits


def test_write_section_replaces_or_appends_only_its_own_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    common.write_section(results, "features", "first")
    assert results.read_text() == "## features\n\nfirst\n"
    common.write_section(results, "training", "steps")
    common.write_section(results, "features", "second\n\n### sub\n\nx")
    assert results.read_text() == "## features\n\nsecond\n\n### sub\n\nx\n\n## training\n\nsteps\n"


def test_markdown_table_rejects_ragged_rows():
    table = common.markdown_table(["a", "b"], [[1, 0.12345], ["x", 1234.5]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.123 |", "| x | 1234 |"]
    with pytest.raises(ValueError, match="2 headers"):
        common.markdown_table(["a", "b"], [[1]])


def test_time_interleaved_takes_turns_and_warms_up_untimed():
    calls = []
    timings = common.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 1, 2)
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert [len(timings[name].seconds) for name in "ab"] == [2, 2]
    assert timings["a"].best <= timings["a"].median
    with pytest.raises(ValueError, match="repeats"):
        common.time_it(lambda: None, repeats=0)
