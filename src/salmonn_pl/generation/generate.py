"""Decoding a SALMONN: assemble the prompts around their audio tokens, autocast, and decode.

The one place that turns a :class:`~salmonn_pl.model.salmonn.Salmonn`, its prompts and audio tokens
into :func:`salmonn_pl.generation.decode.generate` calls; contrastive and diverse-beam decoding only
add a score hook.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import LogitsProcessor

from salmonn_pl.generation import decode
from salmonn_pl.generation.decode import DecodeOutput, GenerationSettings, ScoreHook
from salmonn_pl.model.salmonn import AudioTokens, PaddingSide, Salmonn


@torch.no_grad()
def generate(
    model: Salmonn,
    prompts: list[str],
    audio_tokens: AudioTokens,
    settings: GenerationSettings,
    padding_side: PaddingSide = "left",
    logits_processors: Sequence[LogitsProcessor] | None = None,
    score_hook: Callable[[], ScoreHook | None] | None = None,
) -> DecodeOutput:
    """Decode ``prompts`` (each with one ``<SpeechHere>``) given their audio tokens.

    ``score_hook`` builds the hook that rescores each step (see :class:`~salmonn_pl.generation.decode.ScoreHook`);
    it is called under the model's autocast, since a hook may run the LLM itself.
    """
    inputs = model.assemble(prompts, audio_tokens, padding_side=padding_side)
    with model.autocast():
        return decode.generate(
            model.llm,
            inputs.inputs_embeds,
            inputs.attention_mask,
            settings,
            logits_processors=logits_processors or (),
            score_hook=score_hook() if score_hook is not None else None,
        )
