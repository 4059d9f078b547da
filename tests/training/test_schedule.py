"""The official warm-up/cosine learning-rate schedule over the run's optimiser steps."""

import math

import pytest
from tests.helpers.fit_runs import run_fit, write_fit_config

from salmonn_pl.training.schedule import OptimSettings, warmup_cosine_factor


def test_an_endless_fit_is_refused_with_a_clear_message(tiny_files, synthetic_task, tmp_path):
    """The cosine schedule is defined over the run's optimiser steps; an endless run has none."""
    config = write_fit_config(tmp_path / "fit.yaml", tiny_files, synthetic_task, tmp_path / "run", -1,
                              trainer={"max_epochs": -1, "val_check_interval": None, "limit_val_batches": 0})
    with pytest.raises(ValueError, match="set trainer.max_steps"):
        run_fit(config)


def test_schedule_warms_up_then_decays_to_min_lr():
    settings = OptimSettings(lr=1e-3, min_lr=1e-4, warmup_start_lr=1e-5, warmup_steps=10)
    lrs = [settings.lr * warmup_cosine_factor(step, settings, 100) for step in (0, 5, 10, 100, 150)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[1] == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    assert lrs[2] == pytest.approx(1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * 0.1)))
    assert lrs[3] == pytest.approx(1e-4) and lrs[4] == pytest.approx(1e-4)


def test_a_warm_up_longer_than_the_run_is_reported(tiny_files, synthetic_task, tmp_path):
    # The official warm-up is 3000 steps: a short fit with the default would never reach optim.lr.
    config = write_fit_config(tmp_path / "fit.yaml", tiny_files, synthetic_task, tmp_path / "run", 2,
                              trainer={"val_check_interval": None, "limit_val_batches": 0})
    with pytest.warns(UserWarning, match=r"optim.warmup_steps \(2\) >= the run's 2 optimiser steps"):
        run_fit(config)
