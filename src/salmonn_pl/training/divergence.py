"""Stop a diverging fit at its first non-finite loss or gradient, and never checkpoint non-finite weights.

A NaN loss does not stop a Lightning fit: the optimiser writes NaN into every trainable weight, the run
ends with exit status 0 and its checkpoints hold NaN. The checks here turn that into an error naming
where it happened (global step, epoch, batch, and the loss terms or parameters that are not finite).

Under fp16 AMP with a ``GradScaler`` (``precision: 16-mixed`` on GPU) infinite gradients are expected:
the scaler skips that step and lowers the scale. There only the loss is checked, not the gradients.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


class TrainingDivergedError(FloatingPointError):
    """A training loss or gradient is NaN or infinite."""


def where(global_step: int, epoch: int, batch_idx: int | None = None) -> str:
    batch = f", batch {batch_idx}" if batch_idx is not None else ""
    return f"global step {global_step} (epoch {epoch}{batch})"


def describe_losses(losses: Mapping[str, torch.Tensor]) -> str:
    """``"loss=nan, loss_lm=nan, loss_prior=0.31"`` for the error message."""
    return ", ".join(f"{name}={float(value.detach()):.4g}" for name, value in losses.items() if value.numel() == 1)


def check_finite_loss(loss_is_finite: bool, losses: Mapping[str, torch.Tensor], place: str) -> None:
    """Raise :class:`TrainingDivergedError` unless the loss is finite; ``place`` is from :func:`where`."""
    if not loss_is_finite:
        raise TrainingDivergedError(
            f"non-finite training loss at {place}: {describe_losses(losses)}. The fit diverged; no optimiser "
            "step was taken with it (lower optim.lr, raise optim.warmup_steps, or set trainer.gradient_clip_val)."
        )


def gradient_norm(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
    """The total 2-norm of the gradients present (``None`` if no parameter has one)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0)


def nonfinite_names(named: Iterable[tuple[str, torch.Tensor | None]]) -> list[str]:
    """Names of the tensors that hold a NaN or an infinity (``None`` entries are skipped)."""
    return [name for name, t in named if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_finite_gradients(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], norm_is_finite: bool,
                           norm: float, place: str) -> None:
    """Raise :class:`TrainingDivergedError` naming the parameters whose gradient is not finite."""
    if norm_is_finite:
        return
    bad = nonfinite_names((name, p.grad) for name, p in named_parameters)
    raise TrainingDivergedError(
        f"non-finite gradient norm ({norm}) at {place}, before the optimiser step: {len(bad)} parameters "
        f"have NaN/inf gradients, e.g. {bad[:3]}. The fit diverged (lower optim.lr, or set "
        "trainer.gradient_clip_val); the weights were not updated with it."
    )


def check_finite_state(state: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise ``ValueError`` naming the entries of ``state`` that are not finite (``what``: e.g. the checkpoint)."""
    bad = nonfinite_names(state.items())
    if bad:
        raise ValueError(f"refusing to write {what}: {len(bad)} trainable tensors hold NaN/inf, e.g. {bad[:3]}")
