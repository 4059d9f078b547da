"""SALMONN behind the model-family interface of :mod:`salmonn_pl.model.family`.

``salmonn-pl`` evaluates SALMONN on its own path (encodings shared across a batch, the decoders that
work on its audio tokens). This adapter asks the same model the family way, whole questions in, so
that what is written against :class:`~salmonn_pl.model.family.AudioLLM` also runs on SALMONN, with
the numbers of the native path: the questions are collated as the data module collates them (the
official audio preparation, the Whisper log-mel), each clip is encoded, and the answers come from
:func:`~salmonn_pl.generation.generate.generate` (the transformers-4.28-faithful decoder) or from
the answer log-likelihoods option scoring uses. Tested against the native path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

from salmonn_pl.audio.load import SAMPLE_RATE
from salmonn_pl.data.collate import SPEECH_PLACEHOLDER, AudioBatch, Example, SpeechCollator
from salmonn_pl.data.variants import DEFAULT_PROMPT_TEMPLATE
from salmonn_pl.generation.decode import GenerationSettings
from salmonn_pl.generation.generate import generate
from salmonn_pl.generation.option_scoring import _without_last_target
from salmonn_pl.model.audio_encoding import encode_audio_per_ablation
from salmonn_pl.model.family import AudioLLM, DecodingRequest, FamilyQuestion
from salmonn_pl.model.salmonn import AudioTokens, Salmonn


class SalmonnFamily(AudioLLM):
    """A :class:`~salmonn_pl.model.salmonn.Salmonn` asked question by question; its prompts follow
    ``prompt_template`` (SALMONN's by default), a caption stands inside the speech tags."""

    family = "SALMONN"

    def __init__(self, salmonn: Salmonn, prompt_template: str = DEFAULT_PROMPT_TEMPLATE) -> None:
        super().__init__()
        self.salmonn = salmonn
        self.prompt_template = prompt_template
        self.max_audio_seconds = salmonn.config.max_audio_seconds

    def prompt(self, question: FamilyQuestion) -> str:
        prompt = self.prompt_template.replace("{question}", question.text)
        if question.caption is not None:
            prompt = prompt.replace(SPEECH_PLACEHOLDER, question.caption + SPEECH_PLACEHOLDER)
        return prompt

    def audio_tokens(self, questions: Sequence[FamilyQuestion]) -> AudioTokens:
        """The questions' audio tokens, each clip encoded under its ablation (none for a question
        without a clip), after the data module's collation."""
        ablations = ["no_audio" if q.clip is None else "zero_audio" if q.zero_audio else "none" for q in questions]
        silence = np.zeros(SAMPLE_RATE)  # stands in for a missing clip: no_audio rows are not encoded
        examples = [
            Example(id=str(i), audio=silence if q.clip is None else q.clip.detach().cpu().double().numpy(),
                    prompt=self.prompt(q), text="", meta={})
            for i, q in enumerate(questions)
        ]
        batch = SpeechCollator(max_seconds=self.max_audio_seconds)(examples)
        device = next(self.salmonn.parameters()).device
        audio = AudioBatch(*(t.to(device) if t is not None else None for t in AudioBatch.of(batch).tensors()))
        return encode_audio_per_ablation(self.salmonn, audio, ablations)

    @torch.no_grad()
    def generate_answers(
        self,
        questions: Sequence[FamilyQuestion],
        request: DecodingRequest,
        logits_processors: Sequence[LogitsProcessor] = (),
    ) -> list[str]:
        settings = GenerationSettings(
            max_new_tokens=request.max_new_tokens, num_beams=request.num_beams, do_sample=request.do_sample,
            min_length=request.min_new_tokens, temperature=request.temperature, top_p=request.top_p,
            top_k=request.top_k, repetition_penalty=request.repetition_penalty, length_penalty=request.length_penalty,
        )
        prompts = [self.prompt(q) for q in questions]
        output = generate(self.salmonn, prompts, self.audio_tokens(questions), settings, "left", logits_processors)
        return [self.salmonn.tokenizer.decode(seq, skip_special_tokens=True).strip() for seq in output.sequences]

    def answer_log_likelihoods(
        self, questions: Sequence[FamilyQuestion], answers: Sequence[str], end_of_answer: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.salmonn.assemble([self.prompt(q) for q in questions], self.audio_tokens(questions),
                                       list(answers), "left")
        labels = inputs.labels if end_of_answer else _without_last_target(inputs.labels)
        return self.salmonn.answer_logprobs(inputs, labels)

    def answer_token_ids(self, answer: str) -> list[int]:
        return self.salmonn.tokenizer.encode(answer)

    def prompt_token_ids(self, questions: Sequence[FamilyQuestion]) -> list[list[int]]:
        return [self.salmonn.tokenizer.encode(self.prompt(q).replace(SPEECH_PLACEHOLDER, " ")) for q in questions]

    @property
    def end_of_answer_id(self) -> int:
        return self.salmonn.tokenizer.eos_token_id
