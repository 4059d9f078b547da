"""``salmonn-pl fit --ckpt_path`` after N steps ends where an uninterrupted run ends, bit for bit.

What must survive the interruption: the trainable weights, AdamW's moments, the warm-up/cosine
schedule position, the position in the epoch's (seeded) data order, and the dropout masks, which are
drawn per (rank, epoch, batch) from the run's seed. Validation runs in between, as it does in real runs.
"""

import pytest
import torch
from tests.helpers.fit_runs import checkpoint_callback, run_fit, write_fit_config
from torch.utils.data import DataLoader

from salmonn_pl.model.checkpoint import PAD_ROW_KEYS, load_salmonn_checkpoint, trainable_state_dict
from salmonn_pl.model.salmonn import Salmonn
from salmonn_pl.data.resumable import ResumableDataLoader
from salmonn_pl.training.rng import seeded_rng, step_seed

STOP, TOTAL = 3, 6  # 8 items / batch 2 = 4 batches per epoch: the stop is mid-epoch, the end in epoch 2


class _SeededOrder(torch.utils.data.Sampler):
    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch)).tolist())

    def __len__(self) -> int:
        return self.n


def _loader() -> ResumableDataLoader:
    return ResumableDataLoader(list(range(10)), batch_size=3, sampler=_SeededOrder(10))


def test_resumable_loader_continues_the_epoch_where_it_stopped():
    first = _loader()
    full_epoch = [b.tolist() for b in first]
    iterator = iter(first)
    served = [next(iterator).tolist() for _ in range(2)]
    assert first.state_dict() == {"batches_served": 2}

    resumed = _loader()
    resumed.load_state_dict(first.state_dict())
    assert len(resumed) == len(first)  # Lightning numbers batches from the restored position
    assert served + [b.tolist() for b in resumed] == full_epoch
    assert [b.tolist() for b in resumed] == full_epoch, "the skip must apply to one epoch only"

    finished = _loader()
    finished.load_state_dict({"batches_served": len(finished)})
    assert [b.tolist() for b in finished] == full_epoch, "a completed epoch must not be skipped again"


def test_seeded_rng_repeats_dropout_and_leaves_the_global_stream_alone():
    dropout = torch.nn.Dropout(0.5)
    x = torch.ones(1000)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with seeded_rng(step_seed(0, 0, 0, 5), torch.device("cpu")):
        a = dropout(x)
    assert torch.equal(torch.rand(3), expected_next)
    with seeded_rng(step_seed(0, 0, 0, 5), torch.device("cpu")):
        b = dropout(x)
    with seeded_rng(step_seed(0, 0, 0, 6), torch.device("cpu")):
        c = dropout(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({step_seed(0, r, e, i) for r in range(2) for e in range(2) for i in range(50)}) == 200


@pytest.mark.slow
def test_resumed_fit_matches_uninterrupted_fit(tiny_files, synthetic_task, tmp_path):
    objectives = {"prior_contrast_weight": 0.5, "prior_contrast_kind": "margin"}

    straight = write_fit_config(tmp_path / "straight.yaml", tiny_files, synthetic_task, tmp_path / "straight", TOTAL,
                                objectives, callbacks=[checkpoint_callback(tmp_path / "ckpt-straight", STOP)])
    uninterrupted = run_fit(straight).model
    stopped_at = tmp_path / "ckpt-straight" / f"step={STOP}.ckpt"
    assert stopped_at.is_file()

    resumed_config = write_fit_config(tmp_path / "resumed.yaml", tiny_files, synthetic_task, tmp_path / "resumed", TOTAL,
                                      objectives, callbacks=[checkpoint_callback(tmp_path / "ckpt-resumed", TOTAL)])
    resumed_cli = run_fit(resumed_config, "--ckpt_path", str(stopped_at))
    resumed = resumed_cli.model
    assert resumed_cli.trainer.global_step == TOTAL

    want, got = trainable_state_dict(uninterrupted.salmonn), trainable_state_dict(resumed.salmonn)
    initial = trainable_state_dict(Salmonn(uninterrupted.model_config))
    changed = [k for k in want if k not in PAD_ROW_KEYS and not torch.equal(want[k], initial[k])]
    assert len(changed) > len(want) // 2, "training did not move the weights"
    diffs = {k: (want[k] - got[k]).abs().max().item() for k in want}
    assert max(diffs.values()) == 0.0, f"resumed weights differ: {sorted(diffs.items(), key=lambda kv: -kv[1])[:3]}"
    assert resumed.trainer.lr_scheduler_configs[0].scheduler.get_last_lr() == (
        uninterrupted.trainer.lr_scheduler_configs[0].scheduler.get_last_lr()
    )

    # The checkpoint: trainable weights + [PAD] rows, optimizer and scheduler state, the loader position;
    # plain enough for weights_only loading (what the CLI uses to read --ckpt_path).
    checkpoint = torch.load(stopped_at, weights_only=True)
    trainable = {f"salmonn.{n}" for n, p in uninterrupted.salmonn.named_parameters() if p.requires_grad}
    assert set(checkpoint["state_dict"]) == trainable | {f"salmonn.{k}" for k in PAD_ROW_KEYS}
    assert checkpoint["optimizer_states"][0]["state"], "AdamW moments missing"
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == STOP
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"batches_served": STOP}]
    assert checkpoint["dropout_seed"] == 0

    # A fit checkpoint also serves as `model.ckpt` of a later run (e.g. salmonn-pl test).
    final = tmp_path / "ckpt-resumed" / f"step={TOTAL}.ckpt"
    fresh = Salmonn(uninterrupted.model_config)
    load_salmonn_checkpoint(fresh, final)
    loaded = trainable_state_dict(fresh)
    assert all(torch.equal(loaded[k], want[k]) for k in want)


def test_plain_dataloader_is_not_resumable():
    # Why ResumableDataLoader exists: Lightning restores only loaders with state_dict/load_state_dict.
    assert not hasattr(DataLoader(list(range(4))), "state_dict")
    assert hasattr(_loader(), "state_dict") and hasattr(_loader(), "load_state_dict")


def test_checkpoint_hooks_keep_trainable_weights_and_reject_a_mismatched_model(tiny_config, tmp_path):
    from dataclasses import replace

    from salmonn_pl.lit_module import SalmonnModule

    module = SalmonnModule(tiny_config, dropout_seed=7)
    module.configure_model()
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": "2"}
    module.on_save_checkpoint(checkpoint)
    trainable = {f"salmonn.{n}" for n, p in module.salmonn.named_parameters() if p.requires_grad}
    assert set(checkpoint["state_dict"]) == trainable | {f"salmonn.{k}" for k in PAD_ROW_KEYS}
    torch.save(checkpoint, tmp_path / "hooks.ckpt")
    reread = torch.load(tmp_path / "hooks.ckpt", weights_only=True)  # plain hyperparameters
    assert reread["hyper_parameters"]["model"]["lora_rank"] == tiny_config.lora_rank
    assert reread["dropout_seed"] == 7

    pad_row = torch.full_like(reread["state_dict"][f"salmonn.{PAD_ROW_KEYS[0]}"], 0.5)
    reread["state_dict"][f"salmonn.{PAD_ROW_KEYS[0]}"] = pad_row
    same = SalmonnModule(tiny_config)
    same.on_load_checkpoint(reread)
    assert same.dropout_seed == 7
    assert torch.equal(same.salmonn.llm.get_input_embeddings().weight[-1], pad_row)

    other = SalmonnModule(replace(tiny_config, ckpt="", lora_rank=tiny_config.lora_rank * 2))
    with pytest.raises(ValueError, match="lora_rank"):
        other.on_load_checkpoint(torch.load(tmp_path / "hooks.ckpt", weights_only=True))

    foreign = {"pytorch-lightning_version": "2", "state_dict": {"model.layer.weight": torch.zeros(1)}}
    torch.save(foreign, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="foreign.ckpt"):
        load_salmonn_checkpoint(Salmonn(tiny_config), tmp_path / "foreign.ckpt")
