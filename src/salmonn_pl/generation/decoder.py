"""How answers are produced, chosen by class in the config (``model.decoder``), as the judge is.

Each decoder holds its own typed settings as ``__init__`` arguments (``--model.decoder Contrastive
--model.decoder.beta 2``, or ``decoder: {class_path: OptionScoring, init_args: {calibration: pmi}}``
in YAML) and turns a batch's prompts and audio tokens into one answer record per row. Decoders that
generate free text share the module's :class:`~salmonn_pl.generation.decode.GenerationSettings`,
logits processors and format forcing; :class:`OptionScoring` ranks the options instead.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from transformers import LogitsProcessor

from salmonn_pl.generation.contrastive import ContrastiveSettings, FamilyContrast, contrastive_generate
from salmonn_pl.generation.decode import DecodeOutput, GenerationSettings
from salmonn_pl.generation.diverse_beam import (
    DiverseBeamSettings,
    FamilySimilarityPenalty,
    Query,
    SimilarityPenalty,
    TokenVectors,
    diverse_beam_generate,
)
from salmonn_pl.generation.generate import generate
from salmonn_pl.generation.nonfinite import NonFiniteLogits
from salmonn_pl.generation.option_scoring import OptionScoringSettings, score_family_options, score_options
from salmonn_pl.model.family import AudioLLM, DecodingRequest, FamilyQuestion
from salmonn_pl.model.salmonn import AudioTokens, PaddingSide, Salmonn
from salmonn_pl.settings_check import SettingError

NON_FINITE_ERROR = "non-finite logits (NaN or inf) while decoding: the model's output is not a number"


def _decoder_settings(cls: type, **values: Any) -> Any:
    """``cls(**values)``, a bad value named as the decoder's argument (``decoder.beta must be ...``)."""
    try:
        return cls(**values)
    except SettingError as error:
        _, _, rest = str(error).partition(".")
        raise SettingError(f"decoder.{rest}") from None


@dataclass
class DecodeInputs:
    """One batch to answer: its rows' prompts, the questions they show, and their audio tokens."""

    prompts: list[str]
    questions: list[str]
    audio_tokens: AudioTokens
    ids: list[str]
    padding_side: PaddingSide = "left"
    generation: GenerationSettings = dataclasses.field(default_factory=GenerationSettings)
    # Applied after the non-finite check, in order (built only for decoders that generate text).
    logits_processors: Sequence[LogitsProcessor] = ()
    # Per row, the caption standing for the audio in a text-control prompt (None: none). The decoders'
    # audio-free pass (calibration, the contrast stream) drops it with the audio.
    captions: list[str | None] | None = None

    def audio_free_prompts(self) -> list[str]:
        """The prompts as the audio-free pass asks them: without a caption in the audio's place."""
        captions = self.captions or [None] * len(self.prompts)
        return [p.replace(c, "", 1) if c else p for p, c in zip(self.prompts, captions)]


class Decoder(ABC):
    """Turns prompts and audio tokens into one answer per row: ``{"response": text, ...}``.

    A row whose scores or logits were not finite also gets ``"error"``: its response is no answer.
    """

    # Free-text decoders get the module's logits processors and format forcing.
    generates_text: bool = True

    @abstractmethod
    def answer(self, model: Salmonn, inputs: DecodeInputs) -> list[dict]: ...

    def answer_family(self, model: AudioLLM, questions: list[FamilyQuestion], ids: list[str],
                      generation: GenerationSettings, logits_processors: Sequence[LogitsProcessor] = ()) -> list[dict]:
        """:meth:`answer` for a model family of :mod:`salmonn_pl.model.family` (whole questions, not audio tokens)."""
        raise ValueError(
            f"model.decoder {type(self).__name__} works on SALMONN's audio tokens; with {model.family} use "
            "Generate or OptionScoring"
        )

    def settings(self) -> Any:
        """The typed settings that change this decoder's answers (``None``: none)."""
        return None

    def config(self) -> dict:
        """``{"class_path", "init_args"}``: the decoder as a config would name it (for run fingerprints and
        checkpoint hyperparameters, which must not hold objects)."""
        settings = self.settings()
        init_args = dataclasses.asdict(settings) if settings is not None else {}
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_args": init_args}


class TextDecoder(Decoder):
    """A decoder that generates text; the best of ``num_return_sequences`` answers, the others are kept."""

    @abstractmethod
    def sequences(self, model: Salmonn, inputs: DecodeInputs, processors: Sequence[LogitsProcessor]) -> DecodeOutput: ...

    def answer(self, model: Salmonn, inputs: DecodeInputs) -> list[dict]:
        nonfinite = NonFiniteLogits(len(inputs.prompts))
        result = self.sequences(model, inputs, [nonfinite, *inputs.logits_processors])
        n = inputs.generation.num_return_sequences
        texts = [model.tokenizer.decode(seq, skip_special_tokens=True).strip() for seq in result.sequences]
        # With several returned sequences the best one answers; the others are kept for inspection.
        answers = [
            {"response": texts[i * n], **({"alternatives": texts[i * n + 1 : (i + 1) * n]} if n > 1 else {})}
            for i in range(len(inputs.prompts))
        ]
        for i in nonfinite.items:
            answers[i]["error"] = NON_FINITE_ERROR
        return answers


class Generate(TextDecoder):
    """The official decoding: greedy, beam search or sampling per ``model.generation``."""

    def sequences(self, model: Salmonn, inputs: DecodeInputs, processors: Sequence[LogitsProcessor]) -> DecodeOutput:
        return generate(model, inputs.prompts, inputs.audio_tokens, inputs.generation, inputs.padding_side, processors)

    def answer_family(self, model: AudioLLM, questions: list[FamilyQuestion], ids: list[str],
                      generation: GenerationSettings, logits_processors: Sequence[LogitsProcessor] = ()) -> list[dict]:
        nonfinite = NonFiniteLogits(len(questions))
        texts = model.generate_answers(questions, decoding_request(generation, model.family),
                                       [nonfinite, *logits_processors])
        answers = [{"response": text} for text in texts]
        for i in nonfinite.items:
            answers[i]["error"] = NON_FINITE_ERROR
        return answers


def decoding_request(generation: GenerationSettings, family: str) -> DecodingRequest:
    """``model.generation`` as a family's generate takes it; settings only SALMONN's decoder has are errors."""
    if generation.num_return_sequences != 1:
        raise SettingError(f"generation.num_return_sequences must be 1 with {family}, got {generation.num_return_sequences}")
    if generation.stop_on_first_row_eos:
        raise SettingError(f"generation.stop_on_first_row_eos (SALMONN's transformers 4.28 batch quirk) has no "
                           f"meaning for {family}; set it to false")
    return DecodingRequest(
        num_beams=generation.num_beams,
        max_new_tokens=generation.max_new_tokens,
        min_new_tokens=generation.min_length,
        do_sample=generation.do_sample,
        temperature=generation.temperature,
        top_p=generation.top_p,
        top_k=generation.top_k,
        repetition_penalty=generation.repetition_penalty,
        length_penalty=generation.length_penalty,
    )


class DiverseBeam(TextDecoder):
    """Beam search with a similarity penalty between beams (``model.generation.num_beams`` >= 2)."""

    def __init__(self, alpha: float = 0.0, query: Query = "generated_mean", token_vectors: TokenVectors = "input"):
        """
        Args:
            alpha: penalty strength; 0 = plain beam search.
            query: what a beam is compared by: its last hidden state, or the mean input embedding of its tokens.
            token_vectors: the candidate token's vectors: input embeddings or output-projection rows.
        """
        self.diverse_beam = _decoder_settings(DiverseBeamSettings, alpha=alpha, query=query, token_vectors=token_vectors)

    def settings(self) -> DiverseBeamSettings:
        return self.diverse_beam

    def sequences(self, model: Salmonn, inputs: DecodeInputs, processors: Sequence[LogitsProcessor]) -> DecodeOutput:
        return diverse_beam_generate(model, inputs.prompts, inputs.audio_tokens, inputs.generation, self.diverse_beam,
                                     inputs.padding_side, processors)

    def answer_family(self, model: AudioLLM, questions: list[FamilyQuestion], ids: list[str],
                      generation: GenerationSettings, logits_processors: Sequence[LogitsProcessor] = ()) -> list[dict]:
        if generation.num_beams < 2:
            raise SettingError(f"generation.num_beams must be >= 2 for diverse beam search, got {generation.num_beams}")
        settings = self.diverse_beam
        penalty = []
        if settings.alpha > 0:  # without a penalty, plain beam search runs untouched
            vectors = model.token_vectors(settings.token_vectors)
            hook = SimilarityPenalty(settings.alpha, vectors, settings.query, model.token_vectors("input"))
            penalty = [FamilySimilarityPenalty(hook, generation.num_beams)]
        return Generate().answer_family(model, questions, ids, generation, [*logits_processors, *penalty])


class Contrastive(TextDecoder):
    """Audio-contrastive decoding: ``(1+beta)·logits(audio) − beta·logits(no audio)`` with a plausibility cut-off."""

    def __init__(self, beta: float = 1.0, plausibility: float = 0.1):
        """
        Args:
            beta: contrast strength; 0 = plain decoding.
            plausibility: keep tokens with p_audio >= plausibility * max p_audio; 0 keeps all.
        """
        self.contrastive = _decoder_settings(ContrastiveSettings, beta=beta, plausibility=plausibility)

    def settings(self) -> ContrastiveSettings:
        return self.contrastive

    def sequences(self, model: Salmonn, inputs: DecodeInputs, processors: Sequence[LogitsProcessor]) -> DecodeOutput:
        return contrastive_generate(model, inputs.prompts, inputs.audio_tokens, inputs.generation, self.contrastive,
                                    inputs.padding_side, processors, negative_prompts=inputs.audio_free_prompts())

    def answer_family(self, model: AudioLLM, questions: list[FamilyQuestion], ids: list[str],
                      generation: GenerationSettings, logits_processors: Sequence[LogitsProcessor] = ()) -> list[dict]:
        # The contrast stream: the same question without the audio (and without a caption in its place).
        negatives = [dataclasses.replace(q, clip=None, caption=None, zero_audio=False) for q in questions]
        contrast = FamilyContrast(model, negatives, self.contrastive.beta, self.contrastive.plausibility,
                                  beams=generation.num_beams > 1)
        return Generate().answer_family(model, questions, ids, generation, [*logits_processors, contrast])


class OptionScoring(Decoder):
    """Rank the question's options by likelihood (no free generation); the answer is the best option."""

    generates_text = False

    def __init__(
        self,
        answer_format: Literal["label_text", "text"] = "label_text",
        length_normalization: Literal["none", "mean"] = "mean",
        score_end_of_answer: bool = True,
        calibration: Literal["none", "pmi", "divide"] = "none",
        permutations: Literal["none", "cyclic"] = "none",
        max_rows_per_forward: int = 64,
    ):
        """
        Args:
            answer_format: what is scored: ``"(c) dog"`` (label_text) or ``"dog"`` (text).
            length_normalization: ``"mean"``: log-likelihood per token; ``"none"``: summed.
            score_end_of_answer: include the ``</s>`` that ends the answer in its likelihood.
            calibration: by the text-only likelihoods (the prompt without audio): ``pmi`` subtracts the
                log-likelihoods, ``divide`` divides the option probabilities (contextual calibration).
            permutations: ``cyclic``: average over the cyclic shifts of the options (position debiasing).
            max_rows_per_forward: option rows per LLM forward (memory bound).
        """
        self.option_scoring = _decoder_settings(
            OptionScoringSettings,
            answer_format=answer_format,
            length_normalization=length_normalization,
            score_end_of_answer=score_end_of_answer,
            calibration=calibration,
            permutations=permutations,
            max_rows_per_forward=max_rows_per_forward,
        )

    def settings(self) -> OptionScoringSettings:
        return self.option_scoring

    def answer(self, model: Salmonn, inputs: DecodeInputs) -> list[dict]:
        scores = score_options(model, inputs.prompts, inputs.questions, inputs.audio_tokens, self.option_scoring,
                               inputs.padding_side, ids=inputs.ids, captions=inputs.captions)
        return [{"response": s.choice, "option_scores": s.to_record(), **({"error": s.error} if s.error else {})}
                for s in scores]

    def answer_family(self, model: AudioLLM, questions: list[FamilyQuestion], ids: list[str],
                      generation: GenerationSettings, logits_processors: Sequence[LogitsProcessor] = ()) -> list[dict]:
        scores = score_family_options(model, questions, self.option_scoring, ids=ids)
        return [{"response": s.choice, "option_scores": s.to_record(), **({"error": s.error} if s.error else {})}
                for s in scores]
