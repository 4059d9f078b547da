"""Decoding from ``inputs_embeds`` with the semantics of transformers 4.28 ``generate()``, as SALMONN used it.

SALMONN calls ``llama_model.generate(inputs_embeds=..., attention_mask=...)`` under transformers 4.28.
What that call did, and what this module reproduces:

- a dummy ``<s>`` is the only entry of ``input_ids`` at the start; logits processors see it (so
  ``min_length`` counts it, and repetition penalty penalises ``<s>``), beam hypotheses count it in their
  length, and it is stripped from what we return;
- position ids are ``cumsum(attention_mask) - 1`` with masked positions set to 1, so left padding gives
  the same answer as batch size 1, and the official batch (prompt right-padded in the middle) is
  reproduced as well;
- greedy: finished rows continue with the generation pad id (0 for LLaMA) until every row emitted
  ``</s>``; ``stop_on_first_row_eos`` reproduces SALMONN's StoppingCriteriaSub, which only looks at row 0;
- beam search: ``BeamSearchScorer``/``BeamHypotheses`` with ``early_stopping=False`` (modern transformers
  stops differently, so hypotheses can differ);
- sampling: temperature, top-k (50, 4.28's default) and top-p warpers after the processors.

A :class:`ScoreHook` can rewrite the next-token scores at every step from the logits and the last
hidden state of every row/beam (diverse-beam similarity penalties, audio-contrastive decoding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import (
    MinLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from salmonn_pl.generation.prefix_kv_cache import LlamaParts, PrefixKVCache, llama_decode_step
from salmonn_pl.settings_check import above, at_least, finite, require


@dataclass
class GenerationSettings:
    """SALMONN's ``generate_cfg`` (defaults are the official ones) plus what 4.28 took from its own defaults."""

    max_new_tokens: int = 200
    num_beams: int = 4
    do_sample: bool = False
    min_length: int = 1
    temperature: float = 1.0
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    # Beam search: the n best hypotheses per item; sampling: n samples per item. Returned rows are
    # grouped by item (item 0's n answers, then item 1's, ...).
    num_return_sequences: int = 1
    stop_on_first_row_eos: bool = False
    # None: taken from the model's generation_config (LLaMA: bos 1, eos 2, pad 0).
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        check_generation_settings(self)


def check_generation_settings(s: GenerationSettings) -> None:
    """Raise a :class:`~salmonn_pl.settings_check.SettingError` naming the first setting out of range."""
    require(at_least(s.max_new_tokens, 1), "generation.max_new_tokens", s.max_new_tokens, ">= 1")
    require(at_least(s.num_beams, 1), "generation.num_beams", s.num_beams, ">= 1")
    require(at_least(s.min_length, 0), "generation.min_length", s.min_length, ">= 0")
    require(above(s.temperature, 0), "generation.temperature", s.temperature, "> 0")
    require(above(s.top_p, 0) and s.top_p <= 1, "generation.top_p", s.top_p, "in (0, 1]")
    require(at_least(s.top_k, 0), "generation.top_k", s.top_k, ">= 0 (0: no top-k)")
    require(above(s.repetition_penalty, 0), "generation.repetition_penalty", s.repetition_penalty, "> 0")
    require(finite(s.length_penalty), "generation.length_penalty", s.length_penalty, "a finite number")
    n = s.num_return_sequences
    require(at_least(n, 1), "generation.num_return_sequences", n, ">= 1")
    if s.num_beams > 1:
        require(n <= s.num_beams, "generation.num_return_sequences", n,
                f"<= generation.num_beams ({s.num_beams}): it cannot exceed num_beams")
    else:
        require(n == 1 or s.do_sample, "generation.num_return_sequences", n,
                "1 with greedy decoding; more needs beam search (num_beams >= n) or sampling (do_sample)")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(s, name)
        require(value is None or at_least(value, 0), f"generation.{name}", value, ">= 0 or null")


@dataclass
class DecodeStep:
    """What a :class:`ScoreHook` sees at one step; ``N`` rows = batch size x beams (beams of a batch
    item are consecutive rows)."""

    input_ids: torch.Tensor  # [N, t]: dummy <s> then the tokens chosen so far
    logits: torch.Tensor  # [N, V]: raw next-token logits
    scores: torch.Tensor  # [N, V]: after processors; log-probs in beam search, logits otherwise
    hidden: torch.Tensor | None  # [N, H]: last-layer hidden state that produced ``logits``
    num_beams: int


class ScoreHook:
    """Rewrites next-token scores at every step. The default changes nothing.

    ``reorder`` is called after each beam-search step with the rows the surviving beams come from, so
    that a hook keeping per-beam state (e.g. a second model's KV cache) can follow the beams.
    """

    def __call__(self, step: DecodeStep) -> torch.Tensor:
        return step.scores

    def reorder(self, beam_idx: torch.Tensor) -> None:
        pass


@dataclass
class DecodeOutput:
    # Generated ids per returned row (batch item x num_return_sequences, grouped by item), without the
    # dummy <s> and without padding.
    sequences: list[list[int]]
    sequence_scores: list[float] | None = None  # beam search: sum log-prob / len(hyp incl. dummy <s>)**lp
    hidden_states: list[torch.Tensor] | None = None  # per row [len(sequence), H], when collected


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    settings: GenerationSettings | None = None,
    logits_processors: Sequence[LogitsProcessor] = (),
    score_hook: ScoreHook | None = None,
    collect_hidden_states: bool = False,
    generator: torch.Generator | None = None,
) -> DecodeOutput:
    """Generate from ``inputs_embeds [B, L, H]`` with ``attention_mask [B, L]`` (left or right padded).

    ``model`` is a Hugging Face causal LM (peft-wrapped or not), in eval mode for deterministic output.
    ``logits_processors`` run after the built-in repetition-penalty/min-length processors, on logits
    in greedy/sampling and on log-softmax scores in beam search, as 4.28 did.
    """
    settings = settings or GenerationSettings()
    if inputs_embeds.dim() != 3 or attention_mask.shape != inputs_embeds.shape[:2]:
        raise ValueError(f"inputs_embeds must be [B, L, H] and attention_mask [B, L]; got {tuple(inputs_embeds.shape)} "
                         f"and {tuple(attention_mask.shape)}")
    check_generation_settings(settings)  # again: fields may have been changed since construction
    ids = _special_ids(model, settings)
    processors = _processors(settings, ids.eos, logits_processors, inputs_embeds.device)
    warpers = _warpers(settings) if settings.do_sample else None

    lm = CachedLM(model, need_hidden=collect_hidden_states or score_hook is not None)
    logits, hidden = lm.prefill(inputs_embeds, attention_mask)
    loop = _greedy_or_sample if settings.num_beams == 1 else _beam_search
    return loop(lm, logits, hidden, settings, ids, processors, warpers, score_hook, collect_hidden_states, generator)


# ----------------------------------------------------------------------------------------------- setup


@dataclass
class _SpecialIds:
    bos: int
    eos: int
    pad: int


def _special_ids(model: torch.nn.Module, settings: GenerationSettings) -> _SpecialIds:
    config = getattr(model, "generation_config", None)

    def pick(name: str) -> int:
        value = getattr(settings, name)
        if value is None and config is not None:
            value = getattr(config, name, None)
        if isinstance(value, list):  # generation configs may list several eos ids; SALMONN stops on </s>
            value = value[0]
        if value is None:
            raise ValueError(f"GenerationSettings.{name} is unset and the model's generation_config has none")
        return int(value)

    return _SpecialIds(bos=pick("bos_token_id"), eos=pick("eos_token_id"), pad=pick("pad_token_id"))


def _processors(
    settings: GenerationSettings, eos: int, extra: Sequence[LogitsProcessor], device: torch.device
) -> LogitsProcessorList:
    # Same order as 4.28's _get_logits_processor; user processors are appended after the built-in ones.
    processors = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=float(settings.repetition_penalty)))
    if settings.min_length > 0:
        processors.append(MinLengthLogitsProcessor(settings.min_length, eos, device=str(device)))
    processors.extend(extra)
    return processors


def _warpers(settings: GenerationSettings) -> LogitsProcessorList:
    # 4.28's _get_logits_warper: beam sampling keeps at least 2 tokens.
    keep = 2 if settings.num_beams > 1 else 1
    warpers = LogitsProcessorList()
    if settings.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(float(settings.temperature)))
    if settings.top_k:
        warpers.append(TopKLogitsWarper(top_k=settings.top_k, min_tokens_to_keep=keep))
    if settings.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=settings.top_p, min_tokens_to_keep=keep))
    return warpers


class CachedLM:
    """One causal LM with its KV cache and the prompt mask / positions that go with it.

    :func:`generate` drives one; a :class:`ScoreHook` may drive a second one in lockstep (e.g. the
    same LLM on a prompt without audio tokens), calling :meth:`repeat_rows`, :meth:`reorder` and
    :meth:`step` as the main loop does.

    The prompt runs through the Hugging Face forward; decode steps run the model's LLaMA modules
    against a :class:`PrefixKVCache`, which holds each prompt's keys/values once however many beams
    or samples continue it. The model must be LLaMA-shaped (``ValueError`` otherwise).
    """

    def __init__(self, model: torch.nn.Module, need_hidden: bool):
        self.model = model
        self.need_hidden = need_hidden
        self.parts = LlamaParts.of(model)
        self.cache: PrefixKVCache | None = None

    def prefill(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = attention_mask.long()
        position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        prompt_cache = DynamicCache()
        out = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            position_ids=position_ids,
            cache=prompt_cache,
            use_cache=True,
            output_hidden_states=self.need_hidden,
            logits_to_keep=1,
        )
        self.cache = PrefixKVCache(
            [layer.keys for layer in prompt_cache.layers], [layer.values for layer in prompt_cache.layers], mask
        )
        hidden = out.hidden_states[-1][:, -1] if self.need_hidden else None
        return out.logits[:, -1].float(), hidden

    def step(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits, hidden = llama_decode_step(self.parts, self._prefilled(), tokens)
        return logits, hidden if self.need_hidden else None

    def repeat_rows(self, times: int) -> None:
        self._prefilled().repeat_rows(times)

    def reorder(self, rows: torch.Tensor) -> None:
        self._prefilled().reorder(rows)

    def _prefilled(self) -> PrefixKVCache:
        if self.cache is None:
            raise RuntimeError("CachedLM.prefill must run before step, repeat_rows or reorder")
        return self.cache


# ------------------------------------------------------------------------------------ greedy / sampling


def _greedy_or_sample(
    lm: CachedLM,
    logits: torch.Tensor,
    hidden: torch.Tensor | None,
    settings: GenerationSettings,
    ids: _SpecialIds,
    processors: LogitsProcessorList,
    warpers: LogitsProcessorList | None,
    hook: ScoreHook | None,
    collect_hidden: bool,
    generator: torch.Generator | None,
) -> DecodeOutput:
    if settings.num_return_sequences > 1:  # several samples per item, as 4.28 expanded the inputs
        lm.repeat_rows(settings.num_return_sequences)
        logits = logits.repeat_interleave(settings.num_return_sequences, dim=0)
        hidden = hidden.repeat_interleave(settings.num_return_sequences, dim=0) if hidden is not None else None
    batch = logits.shape[0]
    device = logits.device
    input_ids = torch.full((batch, 1), ids.bos, dtype=torch.long, device=device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    hidden_steps: list[torch.Tensor] = []

    for step in range(settings.max_new_tokens):
        scores = processors(input_ids, logits)
        if hook is not None:
            scores = hook(DecodeStep(input_ids, logits, scores, hidden, num_beams=1))
        if warpers is not None:
            probs = F.softmax(warpers(input_ids, scores), dim=-1)
            next_tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
        else:
            next_tokens = torch.argmax(scores, dim=-1)
        next_tokens = torch.where(unfinished, next_tokens, ids.pad)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        lengths += unfinished.long()
        if collect_hidden:
            hidden_steps.append(hidden)
        unfinished &= next_tokens != ids.eos

        first_row_stopped = settings.stop_on_first_row_eos and input_ids[0, -1].item() == ids.eos
        if not unfinished.any() or first_row_stopped or step + 1 == settings.max_new_tokens:
            break
        logits, hidden = lm.step(next_tokens)

    sequences = [input_ids[b, 1 : 1 + lengths[b]].tolist() for b in range(batch)]
    hidden_states = None
    if collect_hidden:
        stacked = torch.stack(hidden_steps, dim=1)
        hidden_states = [stacked[b, : lengths[b]] for b in range(batch)]
    return DecodeOutput(sequences=sequences, hidden_states=hidden_states)


# ------------------------------------------------------------------------------------------ beam search


@dataclass
class _Hypothesis:
    score: float
    tokens: torch.Tensor  # dummy <s> + generated tokens, without a final </s>
    ends_with_eos: bool
    hidden: torch.Tensor | None


@dataclass
class _Hypotheses:
    """transformers 4.28 ``BeamHypotheses`` with ``early_stopping=False``: the ``num_beams`` best finished
    hypotheses of one batch item, scored ``sum_logprobs / len(tokens) ** length_penalty``."""

    num_beams: int
    length_penalty: float
    beams: list[_Hypothesis] = field(default_factory=list)
    worst_score: float = 1e9

    def add(self, tokens: torch.Tensor, sum_logprobs: float, ends_with_eos: bool, hidden: torch.Tensor | None) -> None:
        score = sum_logprobs / (tokens.shape[-1] ** self.length_penalty)
        if len(self.beams) < self.num_beams or score > self.worst_score:
            self.beams.append(_Hypothesis(score, tokens, ends_with_eos, hidden))
            if len(self.beams) > self.num_beams:
                ranked = sorted((h.score, i) for i, h in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float, cur_len: int) -> bool:
        if len(self.beams) < self.num_beams:
            return False
        return self.worst_score >= best_sum_logprobs / cur_len**self.length_penalty

    def best(self, n: int) -> list[_Hypothesis]:
        """The ``n`` best, best first. sorted() is stable and 4.28's finalize pops from the end, so among
        equal scores the last added comes first."""
        return sorted(self.beams, key=lambda h: h.score)[::-1][:n]


def _beam_search(
    lm: CachedLM,
    logits: torch.Tensor,
    hidden: torch.Tensor | None,
    settings: GenerationSettings,
    ids: _SpecialIds,
    processors: LogitsProcessorList,
    warpers: LogitsProcessorList | None,
    hook: ScoreHook | None,
    collect_hidden: bool,
    generator: torch.Generator | None,
) -> DecodeOutput:
    num_beams = settings.num_beams
    batch = logits.shape[0]
    rows = batch * num_beams
    device = logits.device

    # The prompt was run once per batch item; every beam starts from that state.
    lm.repeat_rows(num_beams)
    logits = logits.repeat_interleave(num_beams, dim=0)
    hidden = hidden.repeat_interleave(num_beams, dim=0) if hidden is not None else None

    input_ids = torch.full((rows, 1), ids.bos, dtype=torch.long, device=device)
    beam_scores = torch.zeros((batch, num_beams), dtype=torch.float, device=device)
    beam_scores[:, 1:] = -1e9  # only beam 0 may expand at the first step; the others are copies
    beam_scores = beam_scores.view(-1)
    beam_hidden = logits.new_zeros((rows, 0, hidden.shape[-1])) if collect_hidden else None
    hypotheses = [_Hypotheses(num_beams, settings.length_penalty) for _ in range(batch)]
    done = [False] * batch

    for step in range(settings.max_new_tokens):
        log_probs = F.log_softmax(logits, dim=-1)
        scores = processors(input_ids, log_probs)
        if hook is not None:
            scores = hook(DecodeStep(input_ids, logits, scores, hidden, num_beams=num_beams))
        scores = scores + beam_scores[:, None]
        if warpers is not None:
            scores = warpers(input_ids, scores)
        vocab = scores.shape[-1]
        flat_scores = scores.view(batch, num_beams * vocab)
        candidate_scores, candidates = _beam_candidates(flat_scores, 2 * num_beams, warpers is not None, generator)
        candidate_rows = torch.div(candidates, vocab, rounding_mode="floor")
        candidate_tokens = candidates % vocab
        if collect_hidden:
            beam_hidden = torch.cat([beam_hidden, hidden[:, None]], dim=1)

        cur_len = input_ids.shape[-1]
        # One device-to-host copy per step: per-candidate .item() calls would each synchronise a GPU.
        tokens_h, rows_h, scores_h = candidate_tokens.tolist(), candidate_rows.tolist(), candidate_scores.tolist()
        next_scores_h = [[0.0] * num_beams for _ in range(batch)]
        next_tokens_h = [[ids.pad] * num_beams for _ in range(batch)]
        next_rows_h = [[0] * num_beams for _ in range(batch)]
        for b in range(batch):
            if done[b]:
                # A finished item's beams only carry padding; they keep pointing at its own first row.
                next_rows_h[b] = [b * num_beams] * num_beams
                continue
            kept = 0
            for rank in range(2 * num_beams):
                token = tokens_h[b][rank]
                row = b * num_beams + rows_h[b][rank]
                if token == ids.eos:
                    if rank >= num_beams:  # an eos outside the top num_beams candidates is ignored
                        continue
                    hypotheses[b].add(
                        input_ids[row].clone(),
                        scores_h[b][rank],
                        ends_with_eos=True,
                        hidden=beam_hidden[row].clone() if collect_hidden else None,
                    )
                else:
                    next_scores_h[b][kept] = scores_h[b][rank]
                    next_tokens_h[b][kept] = token
                    next_rows_h[b][kept] = row
                    kept += 1
                if kept == num_beams:
                    break
            done[b] = hypotheses[b].is_done(max(scores_h[b]), cur_len + 1)
        next_scores = torch.tensor(next_scores_h, dtype=candidate_scores.dtype, device=device)
        next_tokens = torch.tensor(next_tokens_h, dtype=torch.long, device=device)
        next_rows = torch.tensor(next_rows_h, dtype=torch.long, device=device)

        beam_scores = next_scores.view(-1)
        beam_idx = next_rows.view(-1)
        next_tokens = next_tokens.view(-1)
        input_ids = torch.cat([input_ids[beam_idx], next_tokens[:, None]], dim=-1)
        if collect_hidden:
            beam_hidden = beam_hidden[beam_idx]

        first_row_stopped = settings.stop_on_first_row_eos and input_ids[0, -1].item() == ids.eos
        if all(done) or first_row_stopped or step + 1 == settings.max_new_tokens:
            break
        lm.reorder(beam_idx)
        if hook is not None:
            hook.reorder(beam_idx)
        logits, hidden = lm.step(next_tokens)

    # Items still running: their live beams compete with the finished hypotheses.
    for b in range(batch):
        if done[b]:
            continue
        for k in range(num_beams):
            row = b * num_beams + k
            hypotheses[b].add(input_ids[row], beam_scores[row].item(), ends_with_eos=False,
                              hidden=beam_hidden[row] if collect_hidden else None)

    best = [hyp for h in hypotheses for hyp in h.best(settings.num_return_sequences)]
    sequences = [h.tokens[1:].tolist() + ([ids.eos] if h.ends_with_eos else []) for h in best]
    hidden_states = [h.hidden for h in best] if collect_hidden else None
    return DecodeOutput(sequences=sequences, sequence_scores=[h.score for h in best], hidden_states=hidden_states)


def _beam_candidates(
    scores: torch.Tensor, count: int, sample: bool, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` (score, flat index) candidates per batch item over beams x vocab, best first."""
    if not sample:
        return torch.topk(scores, count, dim=1, largest=True, sorted=True)
    probs = F.softmax(scores, dim=-1)
    candidates = torch.multinomial(probs, num_samples=count, generator=generator)
    candidate_scores = torch.gather(scores, -1, candidates)
    candidate_scores, order = torch.sort(candidate_scores, descending=True, dim=1)
    return candidate_scores, torch.gather(candidates, -1, order)
