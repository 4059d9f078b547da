"""The official SALMONN optimiser recipe: AdamW, linear warm-up then cosine decay per step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from salmonn_pl.settings_check import above, at_least, require


@dataclass
class OptimSettings:
    lr: float = 3e-5
    min_lr: float = 1e-5
    warmup_start_lr: float = 1e-6
    warmup_steps: int = 3000
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        require(above(self.lr, 0), "optim.lr", self.lr, "> 0")
        for name in ("min_lr", "warmup_start_lr", "weight_decay"):
            require(at_least(getattr(self, name), 0), f"optim.{name}", getattr(self, name), ">= 0")
        require(at_least(self.warmup_steps, 0), "optim.warmup_steps", self.warmup_steps, ">= 0")
        require(len(self.betas) == 2 and all(at_least(b, 0) and b < 1 for b in self.betas), "optim.betas",
                self.betas, "two numbers in [0, 1)")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms and other 1-D tensors (as the official runner)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "bias" in name or "ln_" in name or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine_factor(step: int, settings: OptimSettings, total_steps: int) -> float:
    """Multiplier of ``settings.lr`` at ``step``: linear warm-up from ``warmup_start_lr``, then cosine to ``min_lr``."""
    if step < settings.warmup_steps:
        lr = settings.warmup_start_lr + (settings.lr - settings.warmup_start_lr) * step / max(1, settings.warmup_steps)
    else:
        progress = min(1.0, step / max(1, total_steps))
        lr = settings.min_lr + (settings.lr - settings.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr / settings.lr


def build_optimizer(model: nn.Module, settings: OptimSettings, total_steps: int):
    optimizer = torch.optim.AdamW(param_groups(model, settings.weight_decay), lr=settings.lr, betas=settings.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine_factor(step, settings, total_steps))
    return optimizer, scheduler
