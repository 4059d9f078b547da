"""Attention-position probe: where in the audio does the model look when it answers?

For every question the answer is teacher-forced in one extra forward pass of the LLM with eager
attention (SDPA returns no weights). From that pass we read, per layer and averaged over heads, the
attention that the answer tokens (and, separately, the last prompt token, which predicts the first
answer token) pay to each audio token:

* ``mass``: the attention probability itself; summed over audio tokens it is the share of the
  query's attention that goes to the audio at all;
* ``share``: the same normalised to sum 1 over the audio tokens, i.e. *where* in the audio it looks.

Audio token ``j`` of a window-level model comes from window ``j // num_query_tokens`` and is placed
at the centre of that window in seconds (long audio continues chunk after chunk, 30 s each).
Regions of the audio (the original clip, the padding a study variant added around it, and
Whisper's own zero padding up to the end of the 30 s window) come from the example's ``meta``.

The Q-Former side: inside each window, the cross-attention of the queries over the window's
``kernel`` encoder frames (mean over layers, heads and queries), which shows whether a window's
token is dominated by some of its frames (e.g. the first ones).

Everything is computed per row of a left-padded batch and equals what a batch of one gives.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

from salmonn_pl.audio.load import SAMPLE_RATE
from salmonn_pl.data.collate import AudioBatch
from salmonn_pl.data.variants import Ablation
from salmonn_pl.generation.decode import GenerationSettings
from salmonn_pl.generation.decoder import decoding_request
from salmonn_pl.model.family import AudioLLM, questions_from_batch
from salmonn_pl.model.llm import embed_tokens
from salmonn_pl.model.salmonn import Salmonn
from salmonn_pl.model.window_qformer import WHISPER_FRAMES_PER_30S, WindowQFormer
from salmonn_pl.generation.generate import generate

AnswerSource = Literal["generated", "reference"]

CHUNK_SECONDS = 30.0  # Whisper's window; long audio is encoded chunk by chunk
SECONDS_PER_FRAME = CHUNK_SECONDS / WHISPER_FRAMES_PER_30S  # 20 ms per Whisper encoder frame
TEXT_ONLY = "no_audio"  # the ablation that leaves no audio token to attend to


# ------------------------------------------------------------------------------------------ time axis


def window_bounds(connector: WindowQFormer, n_windows: int) -> torch.Tensor:
    """``[n_windows, 2]`` first and last second of audio each Q-Former window covers.

    Windows past one 30 s chunk belong to the next chunk (the model's long-audio path).
    """
    if not connector.window_level:
        raise ValueError("the attention-position probe needs a window-level Q-Former (window_level_qformer=True): "
                         "one set of query tokens for the whole clip has no position in time")
    per_chunk = connector.tokens_for_frames() // connector.num_query_tokens
    window = torch.arange(n_windows)
    start = (window // per_chunk) * CHUNK_SECONDS + (window % per_chunk) * connector.stride * SECONDS_PER_FRAME
    bounds = torch.stack([start, start + connector.kernel * SECONDS_PER_FRAME], dim=-1).double()
    return bounds.round(decimals=9)  # 0.34 s, not 0.34000000000000002 s, in reports


def token_seconds(connector: WindowQFormer, n_tokens: int) -> torch.Tensor:
    """``[n_tokens]`` centre of each audio token's window, in seconds of audio."""
    n_windows = math.ceil(n_tokens / connector.num_query_tokens)
    window = torch.arange(n_tokens) // connector.num_query_tokens
    return window_bounds(connector, n_windows).mean(-1)[window]


# ------------------------------------------------------------------------------- model under the probe


@contextlib.contextmanager
def eager_attention(model: Salmonn) -> Iterator[None]:
    """Switch the LLM and the Q-Former to eager attention (which returns its weights), then back."""
    llm = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    modules = [llm, model.connector.qformer]
    previous = [module.config._attn_implementation for module in modules]
    try:
        for module in modules:
            module.set_attn_implementation("eager")
        yield
    finally:
        for module, implementation in zip(modules, previous):
            module.set_attn_implementation(implementation)


@dataclass
class TeacherForcedInputs:
    """``[<s>, prompt with audio, answer]`` per row, left-padded, as the LLM receives it."""

    inputs_embeds: torch.Tensor  # [B, L, H]
    attention_mask: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L], counted from each row's first real token
    audio_positions: list[torch.Tensor]  # per row, the sequence index of every audio token
    answer_lengths: list[int]  # answer tokens at the end of each row


def teacher_forced_inputs(
    model: Salmonn,
    prompts: Sequence[str],
    audio_tokens: torch.Tensor | Sequence[torch.Tensor],
    answers: Sequence[Sequence[int]],
) -> TeacherForcedInputs:
    """The prompt around the audio tokens followed by each row's answer token ids, left-padded.

    ``audio_tokens`` is ``[B, n, H]`` or one ``[n_i, H]`` tensor per row (long audio).
    """
    tokens = audio_tokens if isinstance(audio_tokens, torch.Tensor) else list(audio_tokens)
    prompt = model.assemble(list(prompts), tokens, padding_side="left")
    embed = embed_tokens(model.llm)
    device = prompt.inputs_embeds.device
    rows, audio_rows = [], []
    for i, answer in enumerate(answers):
        real = prompt.attention_mask[i].bool()
        answer_embeds = embed(torch.tensor(list(answer), dtype=torch.long, device=device))
        rows.append(torch.cat([prompt.inputs_embeds[i, real], answer_embeds.to(prompt.inputs_embeds.dtype)]))
        audio_rows.append(torch.cat([prompt.audio_mask[i, real], real.new_zeros(len(answer))]))

    width = max(len(row) for row in rows)
    embeds = prompt.inputs_embeds.new_zeros(len(rows), width, prompt.inputs_embeds.size(-1))
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    audio_positions = []
    for i, (row, audio) in enumerate(zip(rows, audio_rows)):
        pad = width - len(row)
        embeds[i, pad:] = row
        mask[i, pad:] = 1
        audio_positions.append(audio.nonzero()[:, 0] + pad)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return TeacherForcedInputs(embeds, mask, position_ids, audio_positions, [len(a) for a in answers])


def strip_eos(ids: Sequence[int], eos_id: int) -> list[int]:
    """Answer ids without a final ``</s>``: the end marker is not part of the answer."""
    ids = list(ids)
    return ids[:-1] if ids and ids[-1] == eos_id else ids


def normalise(mass: torch.Tensor) -> torch.Tensor:
    """Attention mass over audio tokens (last axis) rescaled to sum 1."""
    return mass / mass.sum(-1, keepdim=True).clamp_min(torch.finfo(mass.dtype).tiny)


# --------------------------------------------------------------------------------- one question


@dataclass
class QuestionProfile:
    """Where one question's answer looked, per LLM layer, and the Q-Former's view inside each window."""

    id: str
    variant: str
    answer_ids: list[int]  # teacher-forced answer tokens (a final </s> removed)
    answer_text: str
    seconds: torch.Tensor  # [n_audio] centre of each audio token's window
    answer_mass: torch.Tensor | None  # [layers, n_audio] mean over answer tokens and heads; None: empty answer
    prompt_mass: torch.Tensor  # [layers, n_audio] from the last prompt token, mean over heads
    qformer_frames: torch.Tensor | None  # [n_windows, kernel]; None when the encoder path gave no weights
    window_ends: torch.Tensor | None  # [n_windows] last second each window covers
    audio_seconds: float  # audio the encoders got (after the official pad-to-1 s and cut)
    clip_span: tuple[float, float] | None  # where the original clip sits, when the meta says so

    def regions(self, mass: torch.Tensor) -> dict[str, dict[str, float]]:
        """Attention ``mass [n_audio]`` summed over the tokens of each region of the audio.

        A token belongs to the region holding its window's centre. ``audio`` is the audio the encoders
        got and ``beyond_audio`` Whisper's zero padding after it; ``clip`` and ``padding`` split
        ``audio`` into the original clip and what a study variant (or the pad-to-1 s step) added.
        """
        inside = self.seconds < self.audio_seconds
        masks = {"audio": inside, "beyond_audio": ~inside}
        if self.clip_span is not None:
            start, end = self.clip_span
            clip = (self.seconds >= start) & (self.seconds < end) & inside
            masks.update(clip=clip, padding=inside & ~clip)
        total = float(mass.sum())
        return {
            name: {
                "mass": float(mass[region].sum()),
                "share": float(mass[region].sum()) / total if total > 0 else 0.0,
                "tokens": int(region.sum()),
            }
            for name, region in masks.items()
        }

    def frame_profile_in_audio(self) -> torch.Tensor | None:
        """``[kernel]`` mean frame distribution over the windows that lie entirely inside the audio."""
        if self.qformer_frames is None:
            return None
        inside = self.window_ends <= self.audio_seconds + 1e-9
        return self.qformer_frames[inside].mean(0) if inside.any() else None

    def record(self) -> dict[str, Any]:
        """JSON-ready summary: layer-mean profiles, total audio attention, peak time and regions."""
        record: dict[str, Any] = {
            "id": self.id,
            "variant": self.variant,
            "answer_text": self.answer_text,
            "answer_ids": self.answer_ids,
            "audio_seconds": self.audio_seconds,
            "clip_span_s": list(self.clip_span) if self.clip_span is not None else None,
        }
        for name, mass in (("answer", self.answer_mass), ("last_prompt", self.prompt_mass)):
            if mass is None:
                record[name] = None
                continue
            profile = mass.mean(0)
            record[name] = {
                "audio_mass": float(profile.sum()),
                "peak_s": float(self.seconds[profile.argmax()]),
                "mass": profile.tolist(),
                "regions": self.regions(profile),
            }
        return record


@torch.no_grad()
def profile_batch(
    model: Salmonn,
    batch: Mapping[str, Any],
    answers: AnswerSource = "generated",
    generation: GenerationSettings | None = None,
) -> list[QuestionProfile]:
    """Attention-position profiles of the questions in a collated batch.

    ``answers="generated"`` lets the model answer first (``generation`` settings, official defaults
    when ``None``) and teacher-forces its own answer; ``"reference"`` teacher-forces ``batch["text"]``
    (the golden answer). Each row's encoder ablation is its variant's (``meta["variant_params"]["ablation"]``); rows of
    a text-only variant (``no_audio``) have no audio to attend to and are left out.
    """
    ids, metas, ablations = _batch_rows(model, batch, answers)
    rows = [i for i, ablation in enumerate(ablations) if ablation != TEXT_ONLY]
    if not rows:
        return []

    with eager_attention(model):
        audio_tokens, frames = _encode_rows(model, batch, rows, ablations)
    prompts = [batch["prompt"][i] for i in rows]

    eos = model.tokenizer.eos_token_id
    if answers == "generated":
        decoded = generate(model, prompts, audio_tokens, generation or GenerationSettings(), "left")
        answer_ids = [strip_eos(seq, eos) for seq in decoded.sequences]
    else:
        answer_ids = [strip_eos(model.target_ids(batch["text"][i]), eos) for i in rows]

    inputs = teacher_forced_inputs(model, prompts, audio_tokens, answer_ids)
    with eager_attention(model), model.autocast():
        out = model.llm(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            output_attentions=True,
            use_cache=False,
            logits_to_keep=1,  # the attention is all we need; skip the vocabulary projection
        )
    # Mean over heads layer by layer keeps memory at one [B, L, L] map per layer.
    attention = torch.stack([layer.float().mean(1) for layer in out.attentions])  # [layers, B, L, L]
    width = attention.size(-1)
    wav_lengths = batch.get("wav_lengths")

    profiles = []
    for k, i in enumerate(rows):
        positions = inputs.audio_positions[k]
        to_audio = attention[:, k][:, :, positions]  # [layers, L, n_audio]
        n_answer = inputs.answer_lengths[k]
        last_prompt = width - n_answer - 1
        audio_seconds = float(wav_lengths[i]) / SAMPLE_RATE if wav_lengths is not None else CHUNK_SECONDS
        profiles.append(
            QuestionProfile(
                id=ids[i],
                variant=str(metas[i].get("variant", "original")),
                answer_ids=answer_ids[k],
                answer_text=model.tokenizer.decode(answer_ids[k], skip_special_tokens=True).strip(),
                seconds=token_seconds(model.connector, len(positions)),
                answer_mass=to_audio[:, last_prompt + 1 :].mean(1).cpu() if n_answer else None,
                prompt_mass=to_audio[:, last_prompt].cpu(),
                qformer_frames=frames[k].cpu() if frames[k] is not None else None,
                window_ends=window_bounds(model.connector, len(frames[k]))[:, 1] if frames[k] is not None else None,
                audio_seconds=audio_seconds,
                clip_span=_clip_span(metas[i], audio_seconds),
            )
        )
    return profiles


@torch.no_grad()
def profile_family_batch(
    model: AudioLLM,
    batch: Mapping[str, Any],
    answers: AnswerSource = "generated",
    generation: GenerationSettings | None = None,
) -> list[QuestionProfile]:
    """:func:`profile_batch` for a model family of :mod:`salmonn_pl.model.family` (Qwen2-Audio): the
    family places the audio tokens and says which seconds each covers (40 ms each for Qwen2-Audio);
    there is no Q-Former, and the encoder hears the clip only (no window padding beyond it).
    ``generated`` answers are the family's answer texts, tokenised as it tokenises answers."""
    ids, metas, ablations = _batch_rows(model, batch, answers)
    questions = questions_from_batch(batch, ablations)
    rows = [i for i, q in enumerate(questions) if q.clip is not None]
    if not rows:
        return []
    asked = [questions[i] for i in rows]
    if answers == "generated":
        texts = model.generate_answers(asked, decoding_request(generation or GenerationSettings(), model.family))
    else:
        texts = [batch["text"][i] for i in rows]
    answer_ids = [model.answer_token_ids(text) if text else [] for text in texts]
    maps = model.answer_attention(asked, answer_ids)
    start = maps.prompt_length
    profiles = []
    for k, i in enumerate(rows):
        positions = maps.audio_positions[k]
        to_audio = maps.attention[:, k][:, :, positions]  # [layers, L, n_audio]
        n_answer = len(answer_ids[k])
        audio_seconds = float(batch["clip_lengths"][i]) / SAMPLE_RATE
        profiles.append(
            QuestionProfile(
                id=ids[i],
                variant=str(metas[i].get("variant", "original")),
                answer_ids=answer_ids[k],
                answer_text=texts[k],
                seconds=maps.audio_seconds[k].mean(-1).float(),
                answer_mass=to_audio[:, start : start + n_answer].mean(1).cpu() if n_answer else None,
                prompt_mass=to_audio[:, start - 1].cpu(),
                qformer_frames=None,
                window_ends=None,
                audio_seconds=audio_seconds,
                clip_span=_clip_span(metas[i], audio_seconds),
            )
        )
    return profiles


def _batch_rows(model: torch.nn.Module, batch: Mapping[str, Any], answers: AnswerSource):
    """The batch's ids, metas and per-row ablations, after checking that the probe can run."""
    if model.training:
        raise ValueError("the attention probe needs the model in eval mode: dropout would make the attention random")
    if answers not in get_args(AnswerSource):
        raise ValueError(f"answers must be one of {get_args(AnswerSource)}, got {answers!r}")
    metas = list(batch.get("meta") or [{} for _ in batch["prompt"]])
    ids = [str(i) for i in batch.get("id") or range(len(metas))]
    return ids, metas, _row_ablations(ids, metas)


def _row_ablations(ids: list[str], metas: list[Mapping[str, Any]]) -> list[str]:
    known = get_args(Ablation)
    ablations = [str((meta.get("variant_params") or {}).get("ablation", "none")) for meta in metas]
    for row_id, ablation in zip(ids, ablations):
        if ablation not in known:
            raise ValueError(f"example {row_id!r}: meta ablation {ablation!r} is not one of {list(known)}")
    return ablations


def _encode_rows(
    model: Salmonn, batch: Mapping[str, Any], rows: list[int], ablations: list[str]
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Audio tokens ``[n_i, H]`` and Q-Former frame maps ``[n_windows_i, kernel]`` of ``rows``, each
    under its own ablation (rows sharing an ablation are encoded together)."""
    groups: dict[str, list[int]] = {}
    for k, i in enumerate(rows):
        groups.setdefault(ablations[i], []).append(k)
    device = model.connector.proj.weight.device
    tokens: list[torch.Tensor | None] = [None] * len(rows)
    frames: list[torch.Tensor | None] = [None] * len(rows)
    for ablation, members in groups.items():
        index = torch.tensor([rows[k] for k in members], dtype=torch.long)
        audio = AudioBatch(*(t.index_select(0, index).to(device) if isinstance(t, torch.Tensor) else None
                             for t in AudioBatch.of(batch).tensors()))
        out = model.encode_audio(audio, ablation=ablation, output_attentions=True)
        # The long-audio path returns one token tensor per clip and no Q-Former weights.
        maps = _window_frame_maps(out["cross_attentions"], len(members)) if out.get("cross_attentions") else None
        for j, k in enumerate(members):
            tokens[k] = out["audio_tokens"][j]
            frames[k] = maps[j] if maps is not None else None
    return tokens, frames


def _window_frame_maps(cross_attentions: Sequence[torch.Tensor], batch_size: int) -> torch.Tensor:
    """Q-Former cross-attention ``[B * n_windows, heads, queries, kernel]`` per layer -> ``[B, n_windows, kernel]``."""
    mean = torch.stack([layer.float().mean(dim=(1, 2)) for layer in cross_attentions]).mean(0)
    return mean.view(batch_size, -1, mean.size(-1))


def _clip_span(meta: Mapping[str, Any], audio_seconds: float) -> tuple[float, float] | None:
    # SakuraDataset records where pad_to_duration put the clip and the clip's own length.
    if "clip_start_s" not in meta or "num_samples" not in meta:
        return None
    start = float(meta["clip_start_s"])
    end = min(start + float(meta["num_samples"]) / SAMPLE_RATE, audio_seconds)
    return (start, end)


# ------------------------------------------------------------------------------- per-variant summary


@dataclass
class VariantProfile:
    """Mean profile of a variant's questions, each question weighing the same.

    Questions with more audio tokens (long audio) extend the time axis; each time step is averaged
    over the questions that reach it.
    """

    name: str
    seconds: torch.Tensor  # [n_audio] of the variant's longest question
    questions: int
    answered: int  # questions with at least one answer token (the answer means are over these)
    answer_mass: torch.Tensor  # [layers, n_audio]; NaN when no question had an answer token
    answer_share: torch.Tensor  # [layers, n_audio] mean of the per-question normalised profiles
    prompt_mass: torch.Tensor
    prompt_share: torch.Tensor
    qformer_frames: torch.Tensor | None  # [n_windows, kernel]
    frame_profile_in_audio: torch.Tensor | None  # [kernel] over windows inside the audio
    regions: dict[str, dict[str, dict[str, float]]]  # "answer"/"last_prompt" -> region -> mean mass/share/tokens

    @property
    def frame_profile(self) -> torch.Tensor | None:
        """``[kernel]`` the window frame map averaged over every window."""
        return self.qformer_frames.mean(0) if self.qformer_frames is not None else None

    def to_json(self) -> dict[str, Any]:
        def side(mass: torch.Tensor, share: torch.Tensor, count: int) -> dict[str, Any] | None:
            if count == 0:
                return None
            return {
                "audio_mass": float(mass.mean(0).sum()),
                "audio_mass_by_layer": mass.sum(-1).tolist(),
                "mass": mass.mean(0).tolist(),
                "share": share.mean(0).tolist(),
                "mass_by_layer": mass.tolist(),
                "share_by_layer": share.tolist(),
            }

        def listed(tensor: torch.Tensor | None) -> list | None:
            return tensor.tolist() if tensor is not None else None

        return {
            "questions": self.questions,
            "answered": self.answered,
            "seconds": self.seconds.tolist(),
            "answer": side(self.answer_mass, self.answer_share, self.answered),
            "last_prompt": side(self.prompt_mass, self.prompt_share, self.questions),
            "regions": self.regions,
            "qformer": {
                "window_frame_map": listed(self.qformer_frames),
                "frame_profile": listed(self.frame_profile),
                "frame_profile_in_audio": listed(self.frame_profile_in_audio),
            },
        }


class _RunningMean:
    """Running means of tensors that may grow along a time axis, and of region statistics."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.region_sums: dict[tuple[str, str], dict[str, float]] = {}
        self.region_counts: dict[tuple[str, str], int] = {}

    def add(self, key: str, value: torch.Tensor, time_dim: int | None = None) -> None:
        value = value.double()
        # The count has the value's shape with every axis but time collapsed, so it broadcasts.
        count_shape = [1] * value.dim()
        if time_dim is not None:
            count_shape[time_dim] = value.size(time_dim)
        count = torch.ones(count_shape, dtype=torch.float64)
        if key not in self.sums:
            self.sums[key], self.counts[key] = value.clone(), count
            return
        total, counts = self.sums[key], self.counts[key]
        time = time_dim % value.dim() if time_dim is not None else None
        if value.dim() != total.dim() or any(value.size(d) != total.size(d) for d in range(value.dim()) if d != time):
            raise ValueError(f"{key}: profiles of shape {tuple(value.shape)} and {tuple(total.shape)} "
                             "cannot be averaged (different models in one run?)")
        if time_dim is not None:
            length = max(value.size(time_dim), total.size(time_dim))
            total, counts, value, count = (_pad_to(t, length, time_dim) for t in (total, counts, value, count))
        self.sums[key], self.counts[key] = total + value, counts + count

    def mean(self, key: str) -> torch.Tensor | None:
        return (self.sums[key] / self.counts[key]).float() if key in self.sums else None

    def add_regions(self, side: str, regions: dict[str, dict[str, float]]) -> None:
        for region, stats in regions.items():
            sums = self.region_sums.setdefault((side, region), {})
            for stat, value in stats.items():
                sums[stat] = sums.get(stat, 0.0) + value
            self.region_counts[(side, region)] = self.region_counts.get((side, region), 0) + 1

    def region_means(self) -> dict[str, dict[str, dict[str, float]]]:
        out: dict[str, dict[str, dict[str, float]]] = {}
        for (side, region), sums in self.region_sums.items():
            count = self.region_counts[(side, region)]
            out.setdefault(side, {})[region] = {stat: total / count for stat, total in sums.items()}
        return out


def _pad_to(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    dim = dim % tensor.dim()
    missing = length - tensor.size(dim)
    if missing == 0:
        return tensor
    # F.pad lists (before, after) pairs from the last axis backwards.
    return F.pad(tensor, [0, 0] * (tensor.dim() - 1 - dim) + [0, missing])


class AttentionAggregator:
    """Collects :class:`QuestionProfile` s and averages them per variant name."""

    def __init__(self) -> None:
        self._running: dict[str, _RunningMean] = {}
        self._seconds: dict[str, torch.Tensor] = {}
        self._questions: dict[str, int] = {}
        self._answered: dict[str, int] = {}
        self.records: list[dict[str, Any]] = []

    def add(self, profiles: Sequence[QuestionProfile]) -> None:
        for profile in profiles:
            name = profile.variant
            running = self._running.setdefault(name, _RunningMean())
            if name not in self._seconds or len(profile.seconds) > len(self._seconds[name]):
                self._seconds[name] = profile.seconds
            self._questions[name] = self._questions.get(name, 0) + 1
            running.add("prompt_mass", profile.prompt_mass, time_dim=-1)
            running.add("prompt_share", normalise(profile.prompt_mass), time_dim=-1)
            running.add_regions("last_prompt", profile.regions(profile.prompt_mass.mean(0)))
            if profile.answer_mass is not None:
                self._answered[name] = self._answered.get(name, 0) + 1
                running.add("answer_mass", profile.answer_mass, time_dim=-1)
                running.add("answer_share", normalise(profile.answer_mass), time_dim=-1)
                running.add_regions("answer", profile.regions(profile.answer_mass.mean(0)))
            if profile.qformer_frames is not None:
                running.add("qformer_frames", profile.qformer_frames, time_dim=0)
            in_audio = profile.frame_profile_in_audio()
            if in_audio is not None:
                running.add("frame_profile_in_audio", in_audio)
            self.records.append(profile.record())

    def variants(self) -> dict[str, VariantProfile]:
        """Per-variant means, in the order the variants were first seen."""
        summaries = {}
        for name, running in self._running.items():
            prompt_mass = running.mean("prompt_mass")
            no_answer = torch.full_like(prompt_mass, math.nan)
            answered = self._answered.get(name, 0)
            summaries[name] = VariantProfile(
                name=name,
                seconds=self._seconds[name],
                questions=self._questions[name],
                answered=answered,
                answer_mass=running.mean("answer_mass") if answered else no_answer,
                answer_share=running.mean("answer_share") if answered else no_answer,
                prompt_mass=prompt_mass,
                prompt_share=running.mean("prompt_share"),
                qformer_frames=running.mean("qformer_frames"),
                frame_profile_in_audio=running.mean("frame_profile_in_audio"),
                regions=running.region_means(),
            )
        return summaries

    def report(self, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The whole probe as one JSON-serialisable dict (``attention_profile.json``)."""
        return {
            "settings": dict(settings or {}),
            "variants": {name: summary.to_json() for name, summary in self.variants().items()},
            "questions": self.records,
        }
