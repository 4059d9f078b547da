"""Diverse beam search: a similarity penalty on each beam's candidate tokens.

At every step, each beam keeps its ``2 * num_beams`` best next tokens (all that beam search could
pick from it) and each candidate's score loses ``alpha * ReLU(cos(query, token_vector))``:

* ``query`` is the beam's last hidden state (``"hidden"``) or the mean input embedding of the tokens
  the beam generated so far (``"generated_mean"``; no penalty before the first token);
* ``token_vector`` is the candidate's input-embedding row (``"input"``) or its output-projection
  (``lm_head``) row (``"output"``).

A beam is thus pushed away from tokens that resemble its own state, so beams of one question spread
out. ``alpha = 0`` leaves beam search unchanged. :func:`distinct_n` measures the spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from salmonn_pl.generation.decode import DecodeOutput, DecodeStep, GenerationSettings, ScoreHook
from salmonn_pl.generation.generate import generate
from salmonn_pl.model.llm import embed_tokens
from salmonn_pl.model.salmonn import PaddingSide, Salmonn
from salmonn_pl.settings_check import at_least, require

Query = Literal["hidden", "generated_mean"]
TokenVectors = Literal["input", "output"]


@dataclass
class DiverseBeamSettings:
    """The similarity penalty; beam count and returned beams come from ``GenerationSettings``.

    The default pairing (mean input embedding of the beam's own tokens vs the candidate's input
    embedding) penalises a beam for repeating itself in meaning; comparing the last hidden state with
    output-projection rows mostly penalises whatever token scores highest, which raised diversity
    less in our measurements (tests/generation/test_diverse_beam.py).
    """

    alpha: float = 0.0
    query: Query = "generated_mean"
    token_vectors: TokenVectors = "input"

    def __post_init__(self) -> None:
        require(at_least(self.alpha, 0), "diverse_beam.alpha", self.alpha, ">= 0")
        require(self.query in get_args(Query), "diverse_beam.query", self.query, f"one of {get_args(Query)}")
        require(self.token_vectors in get_args(TokenVectors), "diverse_beam.token_vectors", self.token_vectors,
                f"one of {get_args(TokenVectors)}")


class SimilarityPenalty(ScoreHook):
    """Restricts each beam to its ``2 * num_beams`` best tokens and subtracts ``alpha * ReLU(cos)`` from them.

    ``token_vectors [V, H]`` are the candidates' vectors; ``input_embeddings [V, H]`` are needed for the
    ``"generated_mean"`` query.
    """

    def __init__(
        self,
        alpha: float,
        token_vectors: torch.Tensor,
        query: Query = "hidden",
        input_embeddings: torch.Tensor | None = None,
    ):
        if alpha < 0:
            raise ValueError(f"DiverseBeamSettings.alpha must be >= 0, got {alpha}")
        if query == "generated_mean" and input_embeddings is None:
            raise ValueError("query='generated_mean' needs the input embedding matrix")
        self.alpha = alpha
        self.token_vectors = F.normalize(token_vectors.float(), dim=-1)
        self.query = query
        self.input_embeddings = input_embeddings

    def __call__(self, step: DecodeStep) -> torch.Tensor:
        count = min(2 * step.num_beams, step.scores.shape[-1])
        top_scores, top_tokens = step.scores.topk(count, dim=-1)
        similarity = torch.einsum("nkh,nh->nk", self.token_vectors[top_tokens], self._query(step))
        penalised = top_scores - self.alpha * F.relu(similarity)
        # Tokens outside a beam's own top 2k could never be chosen from it by beam search; dropping them
        # keeps a penalised candidate from being overtaken by one that was never a candidate.
        return torch.full_like(step.scores, float("-inf")).scatter(-1, top_tokens, penalised)

    def _query(self, step: DecodeStep) -> torch.Tensor:
        if self.query == "hidden":
            if step.hidden is None:
                raise ValueError("the hidden-state query needs the decoder's hidden states")
            return F.normalize(step.hidden.float(), dim=-1)
        generated = step.input_ids[:, 1:]  # without the dummy <s>
        if generated.shape[1] == 0:
            return self.token_vectors.new_zeros(step.scores.shape[0], self.token_vectors.shape[-1])
        mean = self.input_embeddings[generated].float().mean(dim=1)
        return F.normalize(mean, dim=-1)


def similarity_penalty(llm: torch.nn.Module, settings: DiverseBeamSettings) -> SimilarityPenalty:
    """The penalty hook for ``llm`` (a Hugging Face causal LM, peft-wrapped or not)."""
    input_embeddings = embed_tokens(llm).weight.detach()
    if settings.token_vectors == "input":
        vectors = input_embeddings
    else:
        vectors = llm.get_output_embeddings().weight.detach()
    return SimilarityPenalty(settings.alpha, vectors, settings.query, input_embeddings)


class FamilySimilarityPenalty(LogitsProcessor):
    """:class:`SimilarityPenalty` with the ``generated_mean`` query as the last logits processor of a
    model family's beam search (transformers' generate gives processors no hidden states); it expects
    ``input_ids`` as a family's processors get them (one token before the answer, then the answer)."""

    def __init__(self, penalty: SimilarityPenalty, num_beams: int) -> None:
        if penalty.query != "generated_mean":
            raise ValueError(f"diverse_beam.query {penalty.query!r} needs the decoder's hidden states; with a model "
                             "family other than SALMONN use query: generated_mean")
        self.penalty, self.num_beams = penalty, num_beams

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = DecodeStep(input_ids, scores, scores, None, self.num_beams)
        return self.penalty(step).to(scores.dtype)


@torch.no_grad()
def diverse_beam_generate(
    salmonn: Salmonn,
    prompts: list[str],
    audio_tokens: torch.Tensor | None,
    generation: GenerationSettings,
    settings: DiverseBeamSettings,
    padding_side: PaddingSide = "left",
    logits_processors: Sequence[LogitsProcessor] = (),
) -> DecodeOutput:
    """Beam search with the similarity penalty; ``generation.num_return_sequences`` beams per prompt.

    Returned rows are grouped by prompt, best beam first.
    """
    if generation.num_beams < 2:
        raise ValueError(f"diverse beam search needs GenerationSettings.num_beams >= 2, got {generation.num_beams}")
    # Without a penalty, plain beam search (beam sampling included) runs untouched.
    hook = (lambda: similarity_penalty(salmonn.llm, settings)) if settings.alpha > 0 else None
    return generate(salmonn, prompts, audio_tokens, generation, padding_side, logits_processors, score_hook=hook)


def distinct_n(sequences: Sequence[Sequence[int]], n: int = 2) -> float:
    """Distinct n-grams over all n-grams pooled across ``sequences`` (e.g. the beams of one question).

    1.0: no n-gram occurs twice anywhere; sequences shorter than ``n`` contribute nothing.
    """
    grams = [tuple(seq[i : i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
