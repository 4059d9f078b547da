"""During ``salmonn-pl test`` the progress bar shows questions/s and an ETA while the run goes on."""

import re

import pytest
from tests.helpers.cli_runs import run_test, write_config

# One frame of the bar, e.g. "Testing ━━━╺━━━ 2/6 elapsed 0:00:01 • ETA 0:00:03 1.21 batches/s questions_per_s: 2.418"
FRAME = re.compile(
    r"Testing\S*\s+\S+\s+(?P<done>\d+)/(?P<total>\d+)\s+elapsed (?P<elapsed>\d+:\d\d:\d\d) • "
    r"ETA (?P<eta>\d+:\d\d:\d\d|-:--:--)\s+(?P<batches>[\d.]+) batches/s\s+questions_per_s: (?P<rate>[\d.]+)"
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.mark.slow
def test_questions_per_second_and_eta_are_shown(tiny_files, tmp_path, capsys):
    bar = {"class_path": "salmonn_pl.callbacks.QuestionProgressBar",
           # A terminal as wide as a real one, even though pytest captures the output; redrawn 20
           # times a second so that this short run shows frames between batches.
           "init_args": {"refresh_rate": 20, "console_kwargs": {"force_terminal": True, "width": 250}}}
    config = write_config(tmp_path / "config.yaml", tiny_files, tmp_path / "out", batch_size=1, limit=3,
                          callbacks=[bar], progress_bar=True)
    run_test(config)
    screen = ANSI.sub("", capsys.readouterr().out)

    frames = [m.groupdict() for m in FRAME.finditer(screen)]
    assert frames, f"no progress-bar frame with questions/s and ETA in:\n{screen[-2000:]}"
    assert all(f["total"] == "6" for f in frames)
    # Shown while the run is still going, with a real estimate of the time left.
    running = [f for f in frames if int(f["done"]) < int(f["total"])]
    assert any(f["eta"] != "-:--:--" for f in running), running
    assert all(float(f["rate"]) > 0 for f in frames)
    final = frames[-1]
    assert final["done"] == "6" and final["eta"] == "0:00:00"
