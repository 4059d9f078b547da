"""During ``salmonn-pl test`` the progress bar fits 80 columns and shows questions done/total,
questions/s and an ETA; the run ends with an accuracy table that keeps track and hop apart."""

import re

import pytest
from tests.helpers.cli_runs import run_test, write_config

from salmonn_pl.callbacks import QuestionProgressBar

# One frame of the bar, e.g. "Testing ━━━━━━━━━━ 4/12 questions  2.41 q/s  ETA 0:00:03"
FRAME = re.compile(
    r"Testing\s+\S+\s+(?P<done>\d+)/(?P<total>\d+) questions\s+(?P<rate>[\d.]+) q/s\s+"
    r"ETA (?P<eta>\d+:\d\d:\d\d|-:--:--)"
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _screen(tiny_files, tmp_path, capsys, **config) -> str:
    bar = {"class_path": "salmonn_pl.callbacks.QuestionProgressBar",
           # An 80-column terminal, even though pytest captures the output; redrawn 20 times a second
           # so that this short run shows frames between batches.
           "init_args": {"refresh_rate": 20, "console_kwargs": {"force_terminal": True, "width": 80}}}
    path = write_config(tmp_path / "config.yaml", tiny_files, tmp_path / "out", callbacks=[bar], progress_bar=True,
                        **config)
    run_test(path)
    return ANSI.sub("", capsys.readouterr().out)


@pytest.mark.slow
def test_questions_rate_and_eta_in_80_columns(tiny_files, tmp_path, capsys):
    screen = _screen(tiny_files, tmp_path, capsys, batch_size=2, limit=3)
    frames = [m.groupdict() for m in FRAME.finditer(screen)]
    assert frames, f"no progress-bar frame with questions, q/s and ETA in:\n{screen[-2000:]}"
    assert all(f["total"] == "6" for f in frames)  # 3 clips x 2 hops
    running = [f for f in frames if int(f["done"]) < int(f["total"])]
    assert running and any(f["eta"] != "-:--:--" for f in running), running
    assert all(float(f["rate"]) > 0 for f in frames)
    assert frames[-1]["done"] == "6" and frames[-1]["eta"] == "0:00:00"
    lines = [line for line in screen.splitlines() if "Testing" in line]
    assert all(len(line.rstrip()) <= 80 for line in lines), lines
    assert "v_num" not in screen


@pytest.mark.slow
def test_final_table_keeps_track_and_hop_apart(tiny_files, tmp_path, capsys):
    screen = _screen(tiny_files, tmp_path, capsys, batch_size=4, limit=2)
    table = screen[screen.index("Accuracy (%)"):]
    header = table.splitlines()[1:4]
    assert any(re.search(r"synthetic\s+synthetic", line) for line in header), header
    assert any(re.search(r"variant\s+multi\s+single\s+average", line) for line in header), header
    assert re.search(r"original\s+[\d.]+\s+[\d.]+\s+[\d.]+", table)
    assert all(len(line.rstrip()) <= 80 for line in screen.splitlines() if "━" not in line)
    assert "test/acc/original/synth" not in screen  # Lightning's cut-off metric names are gone


class _Trainer:
    def __init__(self, max_steps, max_epochs, global_step=0):
        self.max_steps, self.max_epochs, self.global_step = max_steps, max_epochs, global_step


def test_fit_bar_counts_steps_out_of_max_steps():
    bar = QuestionProgressBar()
    bar._trainer = _Trainer(max_steps=400, max_epochs=-1, global_step=120)
    assert bar._get_train_description(5) == "Step 120/400"
    bar._trainer = _Trainer(max_steps=-1, max_epochs=12)
    assert bar._get_train_description(0) == "Epoch 1/12"
