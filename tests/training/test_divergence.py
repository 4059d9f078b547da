"""A diverging ``salmonn-pl fit`` stops at its first non-finite loss or gradient, naming the step, and
never writes a checkpoint whose weights are not finite."""

import pytest
import torch
from tests.helpers.fit_runs import checkpoint_callback, run_fit, write_fit_config

from salmonn_pl.lit_module import SalmonnModule
from salmonn_pl.training import objectives as objectives_module
from salmonn_pl.training.divergence import TrainingDivergedError, check_finite_state


def _poison_lm_loss(monkeypatch, on_call: int, kind: str) -> None:
    """Make the LM loss of the ``on_call``-th training batch (1-based) NaN (``kind="loss"``), or keep its
    value and give it NaN gradients (``kind="grad"``: ``sqrt(|x - x|)`` is 0 with an infinite slope)."""
    real = objectives_module.lm_loss
    calls = {"n": 0}

    def lm_loss(logp, n_tokens):
        loss = real(logp, n_tokens)
        if not torch.is_grad_enabled():  # validation
            return loss
        calls["n"] += 1
        if calls["n"] != on_call:
            return loss
        if kind == "loss":
            return loss * float("nan")
        return loss + (logp[0] - logp[0].detach()).abs().sqrt()

    monkeypatch.setattr("salmonn_pl.lit_module.lm_loss", lm_loss)


def _checkpoints(folder):
    return sorted(p.name for p in folder.glob("*.ckpt")) if folder.exists() else []


def _all_finite(path) -> bool:
    state = torch.load(path, weights_only=True)["state_dict"]
    return all(bool(torch.isfinite(t).all()) for t in state.values())


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_fit_stops_at_the_first_non_finite_loss_or_gradient(tiny_files, synthetic_task, tmp_path, monkeypatch, kind):
    _poison_lm_loss(monkeypatch, on_call=3, kind=kind)  # the third batch: global step 2 (epoch 0, batch 2)
    config = write_fit_config(tmp_path / "fit.yaml", tiny_files, synthetic_task, tmp_path / "run", 6,
                              callbacks=[checkpoint_callback(tmp_path / "ckpt", 1)],
                              trainer={"val_check_interval": None, "limit_val_batches": 0})
    with pytest.raises(TrainingDivergedError) as error:
        run_fit(config)
    message = str(error.value)
    assert "global step 2 (epoch 0, batch 2)" in message
    if kind == "loss":
        assert "non-finite training loss" in message and "loss_lm=nan" in message
    else:
        assert "non-finite gradient norm" in message and "lora_" in message
    # The two good steps were checkpointed; nothing after them, and nothing non-finite.
    assert _checkpoints(tmp_path / "ckpt") == ["step=1.ckpt", "step=2.ckpt"]
    assert all(_all_finite(p) for p in (tmp_path / "ckpt").glob("*.ckpt"))


def test_no_checkpoint_is_written_with_non_finite_weights(tiny_files, synthetic_task, tmp_path):
    poison = {"class_path": "tests.helpers.fit_runs.PoisonLoraAfterStep", "init_args": {"step": 2}}
    config = write_fit_config(tmp_path / "fit.yaml", tiny_files, synthetic_task, tmp_path / "run", 4,
                              callbacks=[poison, checkpoint_callback(tmp_path / "ckpt", 1)],
                              trainer={"val_check_interval": None, "limit_val_batches": 0})
    with pytest.raises(ValueError, match=r"refusing to write the checkpoint of global step 2: 1 trainable tensors "
                                         r"hold NaN/inf, e\.g\. \['salmonn\.llm\..*lora_A"):
        run_fit(config)
    assert _checkpoints(tmp_path / "ckpt") == ["step=1.ckpt"], "the NaN weights must not reach a file"
    assert _all_finite(tmp_path / "ckpt" / "step=1.ckpt")


def test_checkpoint_hook_names_the_non_finite_parameter(tiny_config):
    module = SalmonnModule(tiny_config)
    module.configure_model()
    name, weight = next((n, p) for n, p in module.salmonn.named_parameters() if p.requires_grad and "proj" in n)
    with torch.no_grad():
        weight.view(-1)[0] = float("inf")
    with pytest.raises(ValueError, match=f"salmonn.{name}"):
        module.on_save_checkpoint({"state_dict": module.state_dict(), "global_step": 5})
    check_finite_state({"a": torch.zeros(2), "ids": torch.arange(3)}, "x")  # finite and integer tensors pass


def test_fp16_grad_scaler_skips_an_infinite_step_without_stopping_the_fit(tiny_files, synthetic_task, tmp_path,
                                                                           monkeypatch):
    """Under ``16-mixed`` with a GradScaler, inf/NaN gradients are the scaler's business (it skips the
    step and lowers its scale): the fit must go on."""
    _poison_lm_loss(monkeypatch, on_call=2, kind="grad")
    scaler = {"class_path": "torch.amp.GradScaler", "init_args": {"device": "cpu"}}
    plugin = {"class_path": "lightning.pytorch.plugins.precision.MixedPrecision",
              "init_args": {"precision": "16-mixed", "device": "cpu", "scaler": scaler}}
    config = write_fit_config(tmp_path / "fit.yaml", tiny_files, synthetic_task, tmp_path / "run", 3,
                              trainer={"val_check_interval": None, "limit_val_batches": 0, "plugins": plugin})
    cli = run_fit(config)
    assert cli.trainer.global_step == 3
    assert cli.trainer.precision_plugin.scaler.get_scale() < 2.0**16, "the scaler should have skipped a step"
    weights = [p for p in cli.model.salmonn.parameters() if p.requires_grad]
    assert all(bool(torch.isfinite(p).all()) for p in weights)



def test_with_gradient_accumulation_the_gradient_is_checked_once_per_optimiser_step(tiny_files, synthetic_task,
                                                                                       tmp_path, monkeypatch):
    _poison_lm_loss(monkeypatch, on_call=3, kind="grad")  # batch 2: the first half of optimiser step 1
    config = write_fit_config(tmp_path / "fit.yaml", tiny_files, synthetic_task, tmp_path / "run", 2,
                              callbacks=[checkpoint_callback(tmp_path / "ckpt", 1)],
                              trainer={"val_check_interval": None, "limit_val_batches": 0,
                                       "accumulate_grad_batches": 2})
    with pytest.raises(TrainingDivergedError, match=r"non-finite gradient norm .* at global step 1 \(epoch 0, batch 3\)"):
        run_fit(config)
    assert _checkpoints(tmp_path / "ckpt") == ["step=1.ckpt"]
