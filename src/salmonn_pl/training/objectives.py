"""Training objectives: the official LM loss and the prior-contrast penalty against the LLM's text prior.

Notation per example: ``a`` audio, ``q`` question (with its options), ``y`` the answer tokens,
``n = |y|``. ``ℓ_a = log p(y | a, q) / n`` and ``ℓ_t = log p(y | q) / n`` are the per-token
log-likelihoods with the audio tokens in the prompt and with them removed (text-only prompt).

* ``lm``: the official next-token loss, ``-Σ log p(y | a, q) / Σ n`` over the batch.
* ``prior_contrast`` (``kind="margin"``): ``mean(max(0, m - (ℓ_a - ℓ_t)))``. It is zero once the
  audio raises the answer's likelihood by at least ``m`` nats per token over what the question
  alone gives, so it pushes down answers the text alone already predicts (and up the audio's say).
* ``prior_contrast`` (``kind="kl_uniform"``): with the audio removed, the model's distribution over
  the K options ``π_t(o) ∝ exp(log p(o | q) / |o|)`` is pulled toward uniform:
  ``KL(U || π_t) = -log K - mean_o log π_t(o)``, averaged over the questions that have options
  (each option is scored as the answer ``"(x) text"``). A model with no audio should have no preference.

The total is ``lm_weight · lm + prior_contrast_weight · prior_contrast``. Every term is logged on
its own: ``loss_lm``, ``loss_prior``, and ``audio_gain`` (mean ``ℓ_a - ℓ_t``, margin) or
``text_only_acc`` (how often the text-only favourite option is the right one, kl_uniform).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from salmonn_pl.settings_check import at_least, require

PRIOR_KINDS = ("margin", "kl_uniform")


@dataclass
class Objectives:
    """Which training terms are on, and their weights (see the module docstring for the formulas).

    Args:
        lm_weight: weight of the official next-token loss on the answer.
        prior_contrast_weight: weight of the prior-contrast term; 0 turns it (and its text-only pass) off.
        prior_contrast_kind: ``"margin"`` on ``ℓ_a - ℓ_t``, or ``"kl_uniform"`` on the text-only option distribution.
        margin: ``m`` of the margin penalty, in nats per answer token.
    """

    lm_weight: float = 1.0
    prior_contrast_weight: float = 0.0
    prior_contrast_kind: Literal["margin", "kl_uniform"] = "margin"
    margin: float = 0.5

    def __post_init__(self) -> None:
        kind = self.prior_contrast_kind
        require(kind in PRIOR_KINDS, "objectives.prior_contrast_kind", kind, f"one of {PRIOR_KINDS}")
        for name in ("lm_weight", "prior_contrast_weight", "margin"):
            require(at_least(getattr(self, name), 0), f"objectives.{name}", getattr(self, name), ">= 0")
        require(self.lm_weight > 0 or self.prior_contrast_weight > 0, "objectives.lm_weight", self.lm_weight,
                "> 0 when prior_contrast_weight is 0 too (nothing would be trained)")


def lm_loss(logp: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """The official token-mean loss ``-Σ log p(y | a, q) / Σ n`` from per-row sums and counts."""
    return -logp.sum() / n_tokens.sum().clamp(min=1)


def margin_penalty(
    logp_audio: torch.Tensor, logp_text: torch.Tensor, n_tokens: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean(relu(m - (ℓ_a - ℓ_t)))`` and the mean audio gain ``ℓ_a - ℓ_t`` (for logging)."""
    gain = (logp_audio - logp_text) / n_tokens.clamp(min=1)
    return torch.relu(margin - gain).mean(), gain.detach().mean()


def kl_to_uniform(
    option_logps: torch.Tensor, option_lengths: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """``KL(U || π_t)`` averaged over questions; ``option_logps`` / ``option_lengths`` are ``[B, K]``.

    ``valid [B, K]`` marks the real options when questions have different numbers of options (the
    rest is padding and ignored). Questions without any valid option are left out (their softmax is
    undefined); with none left the term is zero, still in the graph (DDP needs every rank's gradients).
    """
    if valid is None:
        valid = torch.ones_like(option_logps, dtype=torch.bool)
    has_options = valid.any(-1)
    if not bool(has_options.all()):
        if not bool(has_options.any()):
            return option_logps.sum() * 0.0
        option_logps, option_lengths, valid = option_logps[has_options], option_lengths[has_options], valid[has_options]
    scores = (option_logps / option_lengths.clamp(min=1)).masked_fill(~valid, float("-inf"))
    log_pi = scores.log_softmax(-1).masked_fill(~valid, 0.0)
    k = valid.sum(-1).to(option_logps.dtype)
    return (-k.log() - log_pi.sum(-1) / k).mean()


def text_only_accuracy(
    option_logps: torch.Tensor, option_lengths: torch.Tensor, valid: torch.Tensor, answers: torch.Tensor
) -> torch.Tensor | None:
    """Share of questions whose text-only favourite option is the answer (``answers [B]``, -1 = unknown);
    ``None`` when no answer is known."""
    scores = (option_logps / option_lengths.clamp(min=1)).masked_fill(~valid, float("-inf"))
    known = answers >= 0
    if not known.any():
        return None
    return (scores.argmax(-1) == answers)[known].float().mean()
