"""Audio-contrastive decoding: favour what the audio adds over the text-only prior.

Two KV-cached streams of the same LLM are decoded in lockstep on the same chosen tokens: the prompt
with its audio tokens, and the prompt with them removed (or replaced by other tokens). At every step

    contrastive logits = (1 + beta) * logits(with audio) - beta * logits(without audio)

restricted to the *plausible* tokens, those with ``p_audio >= plausibility * max p_audio`` (the
adaptive plausibility constraint of contrastive decoding); the others get ``-inf``.

In greedy decoding and sampling the contrast is added to the processed logits. In beam search the
beam scores must be log-probabilities, so the contrastive logits are renormalised over the plausible
tokens and the processors' own changes (repetition penalty, min length, ...) are kept on top.
``beta = 0`` is plain decoding: exactly, for greedy decoding at any plausibility, and for beam search
with ``plausibility = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from salmonn_pl.generation.decode import CachedLM, DecodeOutput, DecodeStep, GenerationSettings, ScoreHook
from salmonn_pl.generation.generate import generate
from salmonn_pl.model.salmonn import PaddingSide, Salmonn
from salmonn_pl.settings_check import at_least, require


@dataclass
class ContrastiveSettings:
    beta: float = 1.0  # contrast strength; 0 = plain decoding
    plausibility: float = 0.1  # keep tokens with p_audio >= plausibility * max p_audio; 0 keeps all

    def __post_init__(self) -> None:
        require(at_least(self.beta, 0), "contrastive.beta", self.beta, ">= 0")
        require(at_least(self.plausibility, 0) and self.plausibility <= 1, "contrastive.plausibility",
                self.plausibility, "in [0, 1]")


class AudioContrast(ScoreHook):
    """Decodes the audio-free prompt alongside the main loop and contrasts the two next-token logits.

    ``inputs_embeds``/``attention_mask`` are the audio-free prompts, one row per batch item; beams and
    returned samples are expanded on the first call, and beam reordering is followed.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        beta: float,
        plausibility: float,
    ):
        if beta < 0:
            raise ValueError(f"ContrastiveSettings.beta must be >= 0, got {beta}")
        if not 0 <= plausibility <= 1:
            raise ValueError(f"ContrastiveSettings.plausibility must be in [0, 1], got {plausibility}")
        self.beta = beta
        self.log_plausibility = math.log(plausibility) if plausibility > 0 else float("-inf")
        self.stream = CachedLM(model, need_hidden=False)
        self.logits, _ = self.stream.prefill(inputs_embeds, attention_mask)
        self.consumed = 0  # generated tokens the audio-free stream has been fed

    def __call__(self, step: DecodeStep) -> torch.Tensor:
        self._catch_up(step)
        audio_logits, text_logits = step.logits.float(), self.logits.float()
        # Plausibility is judged on the processed distribution, so a token the processors forbid
        # (e.g. </s> before min_length) cannot be the only plausible one.
        implausible = step.scores < step.scores.max(dim=-1, keepdim=True).values + self.log_plausibility
        if step.num_beams == 1:
            contrast = self.beta * (audio_logits - text_logits)
        else:
            contrastive = (1 + self.beta) * audio_logits - self.beta * text_logits
            contrast = F.log_softmax(contrastive.masked_fill(implausible, float("-inf")), dim=-1)
            contrast = contrast - F.log_softmax(audio_logits, dim=-1)
        return (step.scores + contrast).masked_fill(implausible, float("-inf"))

    def reorder(self, beam_idx: torch.Tensor) -> None:
        self.stream.reorder(beam_idx)

    def _catch_up(self, step: DecodeStep) -> None:
        rows = step.logits.shape[0]
        if self.logits.shape[0] != rows:  # first step of beam search / several samples per item
            times = rows // self.logits.shape[0]
            self.stream.repeat_rows(times)
            self.logits = self.logits.repeat_interleave(times, dim=0)
        generated = step.input_ids.shape[1] - 1  # without the dummy <s>
        if generated > self.consumed:
            self.logits, _ = self.stream.step(step.input_ids[:, -1])
            self.consumed = generated


@torch.no_grad()
def contrastive_generate(
    salmonn: Salmonn,
    prompts: list[str],
    audio_tokens: torch.Tensor | None,
    generation: GenerationSettings,
    settings: ContrastiveSettings,
    padding_side: PaddingSide = "left",
    logits_processors: Sequence[LogitsProcessor] = (),
    negative_audio_tokens: torch.Tensor | None = None,
    negative_prompts: list[str] | None = None,
) -> DecodeOutput:
    """Decode ``prompts`` with audio-contrastive scores (greedy, sampling or beam search).

    The contrast stream is the prompt without audio tokens, or with ``negative_audio_tokens`` in
    their place (e.g. the tokens of silence or of another clip); ``negative_prompts`` replace the
    prompts in it (e.g. without a caption that stands for the audio).
    """
    negative = salmonn.assemble(negative_prompts or prompts, negative_audio_tokens, padding_side=padding_side)

    def hook() -> AudioContrast:
        return AudioContrast(salmonn.llm, negative.inputs_embeds, negative.attention_mask,
                             settings.beta, settings.plausibility)

    return generate(salmonn, prompts, audio_tokens, generation, padding_side, logits_processors, score_hook=hook)


class FamilyContrast(LogitsProcessor):
    """Audio-contrastive scores for a model family of :mod:`salmonn_pl.model.family` inside its own
    ``generate`` (transformers'), as the last logits processor.

    The second stream is the family's next-token logits for each row's audio-free question and the
    answer so far (``next_token_logits``; recomputed each step, without a cache). The contrast is that
    of :class:`AudioContrast` with the processed scores in place of the raw audio logits (equal unless
    a processor rescales logits, e.g. a repetition penalty): greedy and sampling add
    ``beta * (log p_audio - log p_text)``, beam search takes the contrastive log-probabilities
    renormalised over the plausible tokens. It expects ``input_ids`` as a family's processors get them
    (one token before the answer, then the answer: ``AfterPrompt``).
    """

    def __init__(self, model: torch.nn.Module, negatives: Sequence, beta: float, plausibility: float, beams: bool):
        self.model, self.negatives, self.beta, self.beams = model, list(negatives), beta, beams
        self.log_plausibility = math.log(plausibility) if plausibility > 0 else float("-inf")

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, items = scores.shape[0], len(self.negatives)
        negatives = [self.negatives[row * items // rows] for row in range(rows)]
        prefixes = input_ids[:, 1:].tolist()
        text = F.log_softmax(self.model.next_token_logits(negatives, prefixes).float().to(scores.device), dim=-1)
        audio = F.log_softmax(scores.float(), dim=-1)
        implausible = scores < scores.max(dim=-1, keepdim=True).values + self.log_plausibility
        if self.beams:
            contrastive = ((1 + self.beta) * audio - self.beta * text).masked_fill(implausible, float("-inf"))
            return F.log_softmax(contrastive, dim=-1).to(scores.dtype)
        contrast = self.beta * (audio - text)
        return (scores + contrast.to(scores.dtype)).masked_fill(implausible, float("-inf"))
