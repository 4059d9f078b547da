"""Training objectives: the official LM loss and the prior-contrast penalty against the LLM's text prior.

Notation per example: ``a`` audio, ``q`` question (with its options), ``y`` the answer tokens,
``n = |y|``. ``ℓ_a = log p(y | a, q) / n`` and ``ℓ_t = log p(y | q) / n`` are the per-token
log-likelihoods with the audio tokens in the prompt and with them removed (text-only prompt).

* ``lm``: the official next-token loss, ``-Σ log p(y | a, q) / Σ n`` over the batch.
* ``prior_contrast`` (``kind="margin"``): ``mean(max(0, m - (ℓ_a - ℓ_t)))``. It is zero once the
  audio raises the answer's likelihood by at least ``m`` nats per token over what the question
  alone gives, so it pushes down answers the text alone already predicts (and up the audio's say).
* ``prior_contrast`` (``kind="kl_uniform"``): with the audio removed, the model's distribution over
  the options ``π_t(o) ∝ exp(log p(o | q) / |o|)`` is pulled toward uniform:
  ``KL(U || π_t) = -log K - mean_o log π_t(o)``. A model with no audio should have no preference.

Both terms are logged separately (``train/loss_lm``, ``train/loss_prior``, ``train/audio_gain``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass
class Objectives:
    lm_weight: float = 1.0
    prior_contrast_weight: float = 0.0
    prior_contrast_kind: Literal["margin", "kl_uniform"] = "margin"
    margin: float = 0.5


def margin_penalty(logp_audio: torch.Tensor, logp_text: torch.Tensor, n_tokens: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean(relu(m - (ℓ_a - ℓ_t)))`` and the mean audio gain ``ℓ_a - ℓ_t`` (for logging)."""
    gain = (logp_audio - logp_text) / n_tokens.clamp(min=1)
    return torch.relu(margin - gain).mean(), gain.detach().mean()


def kl_to_uniform(option_logps: torch.Tensor, option_lengths: torch.Tensor) -> torch.Tensor:
    """``KL(U || π_t)`` averaged over questions; ``option_logps`` / ``option_lengths`` are ``[B, K]``."""
    scores = option_logps / option_lengths.clamp(min=1)
    log_pi = scores.log_softmax(-1)
    k = option_logps.size(-1)
    return (-math.log(k) - log_pi.mean(-1)).mean()
