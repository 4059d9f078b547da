"""What the study asks of a model family other than SALMONN, and the questions it asks it.

SALMONN's evaluation path works on its own audio tokens (shared encodings across a batch, the
4.28-faithful decoder, contrastive and diverse-beam hooks). A family that brings its own processor
and ``generate`` (Qwen2-Audio) is asked through this interface instead: whole questions in (the
question as shown, the clip, the SAKURA caption control, the ablation), answers or answer
log-likelihoods out. The decoders of :mod:`salmonn_pl.generation.decoder` and the LightningModule
use nothing else of it, so a third family is one module implementing :class:`AudioLLM` plus a
config dataclass with ``family`` and ``build()`` (see :class:`~salmonn_pl.model.qwen2_audio.Qwen2AudioConfig`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import LogitsProcessor


@dataclass(frozen=True)
class FamilyQuestion:
    """One question as a family sees it.

    ``clip`` is the 16 kHz waveform the question is about (after the study's padding), ``None`` when
    the model must not hear it (``no_audio``, the caption control). ``caption`` is SAKURA's text
    control: a sentence stating the clip's attribute, placed where the audio tokens would be.
    ``zero_audio``: the audio tokens are there, every one of them zero.
    """

    text: str
    clip: torch.Tensor | None
    caption: str | None = None
    zero_audio: bool = False


@dataclass(frozen=True)
class DecodingRequest:
    """The decoding settings a family's ``generate`` takes (the study's ``model.generation``)."""

    num_beams: int = 1
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0


@dataclass
class AnswerAttention:
    """Attention of a teacher-forced batch ``[left pad | prompt | answer | right pad]``, for the probes."""

    attention: torch.Tensor  # [layers, B, L, L] mean over heads
    prompt_length: int  # row k's answer tokens sit at prompt_length ... prompt_length + answer_lengths[k] - 1
    answer_lengths: list[int]
    audio_positions: list[torch.Tensor]  # per row, the sequence index of each audio token
    audio_seconds: list[torch.Tensor]  # per row, [n_audio, 2] start and end second each audio token covers


class AudioLLM(torch.nn.Module, ABC):
    """A model family behind the study: prompts in its own template, batched answers that equal
    the answers each question gets alone, and answer log-likelihoods for option scoring."""

    family: ClassVar[str]  # the name reports use, e.g. "Qwen2-Audio"
    # The encoder ablations that mean something for this family (``none`` and ``no_audio`` always do).
    ablations: ClassVar[tuple[str, ...]] = ("none", "no_audio", "zero_audio")
    max_audio_seconds: ClassVar[float]  # the longest clip the family hears unless its config says more

    @abstractmethod
    def generate_answers(
        self,
        questions: Sequence[FamilyQuestion],
        request: DecodingRequest,
        logits_processors: Sequence[LogitsProcessor] = (),
    ) -> list[str]:
        """One answer text per question (a batch, answered as each question alone would be)."""

    @abstractmethod
    def answer_log_likelihoods(
        self, questions: Sequence[FamilyQuestion], answers: Sequence[str], end_of_answer: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum of log p(answer tokens), number of answer tokens)`` per row, float64 and int64; with
        ``end_of_answer`` the token that ends the model's turn counts as an answer token."""

    def answer_token_ids(self, answer: str) -> list[int]:
        """The tokens of an answer text as the model would write it after its prompt."""
        raise NotImplementedError(f"{self.family} does not tokenise answers for the probes")

    def next_token_logits(self, questions: Sequence[FamilyQuestion], prefixes: Sequence[Sequence[int]]) -> torch.Tensor:
        """``[rows, vocab]`` logits of the token after each question's prompt and answer prefix (one
        forward, no cache): the second stream of audio-contrastive decoding."""
        raise NotImplementedError(f"audio-contrastive decoding is not available for {self.family}")

    def token_vectors(self, kind: str) -> torch.Tensor:
        """``[vocab, hidden]`` input-embedding (``"input"``) or output-projection (``"output"``) rows of
        the LLM (diverse beam search compares candidates by them)."""
        raise NotImplementedError(f"diverse beam search is not available for {self.family}")

    def prompt_token_ids(self, questions: Sequence[FamilyQuestion]) -> list[list[int]]:
        """Each question's prompt tokens without the audio (logits processors that read the prompt)."""
        raise NotImplementedError(f"{self.family} does not give its prompt tokens")

    @property
    def end_of_answer_id(self) -> int:
        """The token that ends an answer."""
        raise NotImplementedError(f"{self.family} does not name its end-of-answer token")

    def answer_attention(self, questions: Sequence[FamilyQuestion], answers: Sequence[Sequence[int]]) -> AnswerAttention:
        """One eager-attention forward of each question with its answer tokens (attention-position probes)."""
        raise NotImplementedError(f"the attention probes are not available for {self.family}")

    @classmethod
    def check_ablation(cls, ablation: str, where: str) -> None:
        """A clear error for an ablation that has no meaning for this family."""
        if ablation not in cls.ablations:
            raise ValueError(
                f"{where}: ablation {ablation!r} has no meaning for {cls.family}, which has one audio encoder; "
                f"choose one of {list(cls.ablations)}"
            )

    @classmethod
    def check_variant(cls, name: str, params: dict[str, Any], max_audio_seconds: float | None = None) -> None:
        """A clear error for a data variant this family cannot hear (before the model loads):
        an ablation it has no meaning for, or audio longer than ``max_audio_seconds`` (the config's)."""
        cls.check_ablation(str(params.get("ablation") or "none"), f"data variant {name!r}")
        longest = cls.max_audio_seconds if max_audio_seconds is None else max_audio_seconds
        for key in ("pad_seconds", "long_audio_seconds"):
            seconds = params.get(key)
            if seconds is not None and float(seconds) > longest:
                raise ValueError(
                    f"data variant {name!r}: {key} {seconds} is longer than model.model.max_audio_seconds "
                    f"({longest:g} s); {cls.family} would not hear the rest"
                )


def shown_questions(batch: Mapping[str, Any]) -> list[str]:
    """The question each row's prompt shows (SAKURA meta ``question``, annotation meta ``instruction``)."""
    metas = batch.get("meta") or [{}] * len(batch["prompt"])
    return [meta.get("question") or meta.get("instruction", "") for meta in metas]


def questions_from_batch(batch: Mapping[str, Any], ablations: Sequence[str]) -> list[FamilyQuestion]:
    """A collated batch's rows as :class:`FamilyQuestion`: the question shown (meta ``question``), the
    clip as the variant made it (``raw_wav`` up to ``clip_lengths``, before SALMONN's pad-to-1 s), the
    caption control's caption (meta ``caption``), and each row's ablation."""
    metas = batch.get("meta") or [{}] * len(batch["prompt"])
    questions = []
    for row, (text, meta, ablation) in enumerate(zip(shown_questions(batch), metas, ablations)):
        caption = meta.get("caption")
        hears = ablation != "no_audio" and caption is None
        clip = batch["raw_wav"][row, : int(batch["clip_lengths"][row])] if hears else None
        questions.append(FamilyQuestion(text=text, clip=clip, caption=caption, zero_audio=ablation == "zero_audio"))
    return questions


def is_family_config(config: Any) -> bool:
    """Whether ``model.model`` names a family of this interface (its config has ``model_class``), not SALMONN."""
    return getattr(config, "model_class", None) is not None


def family_of(config: Any) -> str:
    """The family name reports show for a ``model.model`` config."""
    return config.model_class.family if is_family_config(config) else "SALMONN"
