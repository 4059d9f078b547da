"""``salmonn-pl fit`` on 2 CPU processes (DDP, gloo): the training step runs on each rank's shard of the
data, both ranks end with the same weights, and the one checkpoint written loads back."""

import pytest
import torch
from tests.helpers.fit_runs import checkpoint_callback, run_fit_subprocess, write_fit_config

from salmonn_pl.model.checkpoint import PAD_ROW_KEYS, load_salmonn_checkpoint, trainable_state_dict
from salmonn_pl.model.salmonn import Salmonn

STEPS = 2  # 8 train items, batch 2, 2 ranks: one epoch is 2 steps


@pytest.mark.slow
def test_ddp_fit_on_two_cpu_processes(tiny_files, tiny_config, synthetic_task, tmp_path):
    record, checkpoints = tmp_path / "ranks", tmp_path / "checkpoints"
    callbacks = [checkpoint_callback(checkpoints, STEPS),
                 {"class_path": "tests.helpers.fit_runs.RecordTraining", "init_args": {"out_dir": str(record)}}]
    config = write_fit_config(tmp_path / "ddp.yaml", tiny_files, synthetic_task, tmp_path / "out", STEPS,
                              objectives={"prior_contrast_weight": 0.5, "prior_contrast_kind": "kl_uniform"},
                              trainer={"devices": 2, "strategy": "ddp"}, callbacks=callbacks)
    run_fit_subprocess(config)

    ranks = [torch.load(record / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # Each rank trained on its own half of the epoch.
    assert not set(ranks[0]["ids"]) & set(ranks[1]["ids"])
    assert len(ranks[0]["ids"]) == len(ranks[1]["ids"]) == STEPS * 2
    # Gradients were averaged: the ranks' weights are identical, and differ from the initial ones.
    w0, w1 = ranks[0]["weights"], ranks[1]["weights"]
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0), [k for k in w0 if not torch.equal(w0[k], w1[k])][:3]
    initial = trainable_state_dict(Salmonn(tiny_config))
    assert sum(not torch.equal(w0[k], initial[k]) for k in w0 if k not in PAD_ROW_KEYS) > len(w0) // 2

    # One checkpoint (written by rank 0), trainable weights only, loading back to the trained weights.
    assert [p.name for p in checkpoints.iterdir()] == [f"step={STEPS}.ckpt"]
    checkpoint = torch.load(checkpoints / f"step={STEPS}.ckpt", weights_only=True)
    assert len(checkpoint["state_dict"]) == len(w0)
    fresh = Salmonn(tiny_config)
    load_salmonn_checkpoint(fresh, checkpoints / f"step={STEPS}.ckpt")
    loaded = trainable_state_dict(fresh)
    assert all(torch.equal(loaded[k], w0[k]) for k in w0)
