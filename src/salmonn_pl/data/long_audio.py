"""Long-audio SAKURA variant: a question's clip hidden among distractor clips from other questions.

The target clip is placed, sample-exact and unaltered, at a chosen relative position (early = at the
start, middle, late = at the end, or any fraction in between) of a recording of a chosen total
duration; the rest is filled with clips drawn from other questions (with a different label when the
pool has any), separated by short silences. Draws are seeded by a stable hash of the clip's id, so
the same clip always gets the same recording in any process, and both questions SAKURA asks about a
clip (single- and multi-hop) hear the same recording. The official SALMONN path keeps only the
first 30 s, so the placement records whether the target survives that cut.

In a study this is the ``long_audio_*`` setting of a :class:`~salmonn_pl.data.variants.Variant`
(e.g. ``long60s-middle``), which :class:`~salmonn_pl.data.datamodule.SakuraDataset` builds from a
pool of the benchmark's clips.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from salmonn_pl.audio.load import CHUNK_SAMPLES, SAMPLE_RATE, ChannelPolicy
from salmonn_pl.data.sakura import SakuraQuestion, load_question_audio
from salmonn_pl.data.variants import LONG_AUDIO_POSITIONS, DistractorSource, LongAudioPosition, stable_seed

# The official SALMONN path keeps the first 30 s of any recording.
OFFICIAL_MAX_SECONDS = CHUNK_SAMPLES // SAMPLE_RATE
# The official SALMONN concatenation (dataset.py "expand_wav") puts 0.1 s of silence between clips.
DEFAULT_GAP_SECONDS = 0.1


@dataclass(frozen=True)
class Clip:
    """An audio clip: an id naming the audio itself (e.g. its file), its label, its float64 mono 16 kHz samples.

    ``audio`` is the samples or a function loading them, so that a pool of a whole benchmark
    costs nothing until a clip is drawn. SAKURA asks two questions (single- and multi-hop) about each
    clip; the pool holds each clip once, and a clip is never a distractor for itself. ``track`` is
    the benchmark track the clip comes from (labels are only comparable within a track).
    """

    id: str
    label: str
    audio: np.ndarray | Callable[[], np.ndarray]
    track: str | None = None

    def samples(self) -> np.ndarray:
        audio = self.audio() if callable(self.audio) else self.audio
        return np.asarray(audio, dtype=np.float64)


def sakura_clip_id(question: SakuraQuestion) -> str:
    """The id of a question's clip, shared by its single- and multi-hop questions: ``<Track>/<file>``."""
    return f"{question.track}/{question.file}"


def sakura_clip_pool(questions: Sequence[SakuraQuestion], channel: ChannelPolicy = "first") -> list[Clip]:
    """One lazily loaded :class:`Clip` per distinct clip of the questions (ids ``<Track>/<file>``)."""
    pool: dict[str, Clip] = {}
    for question in questions:
        clip_id = sakura_clip_id(question)
        if clip_id not in pool:
            audio = partial(load_question_audio, question, channel)
            pool[clip_id] = Clip(clip_id, question.label, audio, track=question.track)
    return list(pool.values())


def distractor_candidates(pool: Sequence[Clip], track: str, source: DistractorSource) -> list[Clip]:
    """The clips of ``pool`` that may surround a clip of ``track``.

    ``all_tracks`` keeps the whole pool, ``same_track`` the clips of ``track`` and ``other_tracks``
    the rest. SAKURA's tracks share no labels, so with ``all_tracks`` the draw's preference for
    other labels avoids only the track's own clips of the same label.
    """
    if source == "all_tracks":
        return list(pool)
    if source == "same_track":
        return [clip for clip in pool if clip.track == track]
    if source == "other_tracks":
        return [clip for clip in pool if clip.track != track]
    raise ValueError(f"distractor source must be all_tracks, same_track or other_tracks, got {source!r}")


@dataclass(frozen=True)
class Segment:
    """A distractor's place in the recording: samples ``[start, end)`` hold its samples from ``clip_offset`` on."""

    id: str
    label: str
    start: int
    end: int
    clip_offset: int


@dataclass(frozen=True)
class LongAudioPlacement:
    """Where the target clip sits in the long recording (samples are exact; seconds = samples / 16 kHz)."""

    position: float
    total_samples: int
    target_start_sample: int
    target_end_sample: int
    target_start_s: float
    target_end_s: float
    total_duration_s: float
    distractors: list[Segment]  # in recording order
    distractors_share_label: bool
    longer_than_target: bool
    target_within_first_30s: bool

    def to_meta(self) -> dict[str, Any]:
        """Flat JSON-serialisable fields for an example's ``meta``: where the target is, what surrounds it."""
        return {
            "target_start_s": self.target_start_s,
            "target_end_s": self.target_end_s,
            "distractor_ids": [segment.id for segment in self.distractors],
            "distractors_share_label": self.distractors_share_label,
            "target_within_first_30s": self.target_within_first_30s,
        }


def resolve_position(position: LongAudioPosition) -> float:
    """early/middle/late or a fraction in [0, 1] of the free space before the target."""
    if isinstance(position, str):
        if position not in LONG_AUDIO_POSITIONS:
            names = list(LONG_AUDIO_POSITIONS)
            raise ValueError(f"position must be one of {names} or a fraction in [0, 1], got {position!r}")
        return LONG_AUDIO_POSITIONS[position]
    if not 0.0 <= float(position) <= 1.0:
        raise ValueError(f"position fraction must be in [0, 1], got {position}")
    return float(position)


def _distractor_stream(
    target: Clip, pool: Sequence[Clip], rng: np.random.Generator
) -> tuple[Iterator[tuple[Clip, np.ndarray]], bool]:
    """(clip, samples) of distractors in a seeded random order, repeating the pool if needed; prefers other labels."""
    # Sorted by id so that the draw does not depend on the pool's order.
    others = sorted((clip for clip in pool if clip.id != target.id), key=lambda clip: clip.id)
    different = [clip for clip in others if clip.label != target.label]
    candidates = different or others
    if not candidates:
        raise ValueError(f"no distractor clips for {target.id!r}: the pool holds no other clip")

    def stream() -> Iterator[tuple[Clip, np.ndarray]]:
        while True:
            yielded = False
            for i in rng.permutation(len(candidates)):
                audio = candidates[int(i)].samples()
                if len(audio):
                    yielded = True
                    yield candidates[int(i)], audio
            if not yielded:
                raise ValueError(f"no distractor clips for {target.id!r}: every other clip in the pool is empty")

    return stream(), not different


def _fill(
    length: int, offset: int, clips: Iterator[tuple[Clip, np.ndarray]], gap: int, from_end: bool
) -> tuple[np.ndarray, list[Segment]]:
    """``length`` samples of distractors separated by ``gap`` silences, with a silence next to the target.

    ``from_end`` fills the region before the target (clips laid right to left, the outermost one cut
    at the left edge); otherwise the region after it (left to right, the last one cut at the right
    edge). ``offset`` is where the region starts in the recording, for the returned segments.
    """
    region = np.zeros(length, dtype=np.float64)
    segments = []
    cursor = gap  # distance from the target
    while cursor < length:
        clip, audio = next(clips)
        take = min(len(audio), length - cursor)
        if from_end:
            start, clip_offset = length - cursor - take, len(audio) - take
        else:
            start, clip_offset = cursor, 0
        region[start : start + take] = audio[clip_offset : clip_offset + take]
        segments.append(Segment(clip.id, clip.label, offset + start, offset + start + take, clip_offset))
        cursor += take + gap
    if from_end:
        segments.reverse()
    return region, segments


def build_long_audio(
    target: Clip,
    pool: Sequence[Clip],
    total_seconds: float = 60.0,
    position: LongAudioPosition = "middle",
    gap_seconds: float = DEFAULT_GAP_SECONDS,
    seed: int = 0,
    sample_rate: int = SAMPLE_RATE,
) -> tuple[np.ndarray, LongAudioPlacement]:
    """Place ``target`` among distractors from ``pool`` to make a ``total_seconds`` recording.

    The target starts at ``round(position * (total - len(target)))`` samples and its samples are
    copied unchanged. Distractors come from ``pool`` clips of other questions (``id != target.id``),
    of a different label when there are any. A target longer than ``total_seconds`` is returned
    alone, flagged ``longer_than_target``. Draws are seeded by ``seed`` and the target's id with a
    stable hash, so the result depends only on the arguments: every question about a clip gets the
    same recording.
    """
    fraction = resolve_position(position)
    if total_seconds <= 0 or gap_seconds < 0:
        raise ValueError(f"total_seconds must be > 0 and gap_seconds >= 0, got {total_seconds} and {gap_seconds}")
    total = int(round(total_seconds * sample_rate))
    gap = int(round(gap_seconds * sample_rate))
    target_audio = target.samples()
    n_target = len(target_audio)
    rng = np.random.default_rng(stable_seed(seed, target.id, total, fraction, gap))

    segments: list[Segment] = []
    share_label = False
    if n_target >= total:
        wav, start = target_audio.copy(), 0
    else:
        clips, share_label = _distractor_stream(target, pool, rng)
        start = int(round(fraction * (total - n_target)))
        before, segments_before = _fill(start, 0, clips, gap, from_end=True)
        after, segments_after = _fill(total - start - n_target, start + n_target, clips, gap, from_end=False)
        wav = np.concatenate([before, target_audio, after])
        segments = segments_before + segments_after
    end = start + n_target
    placement = LongAudioPlacement(
        position=fraction,
        total_samples=len(wav),
        target_start_sample=start,
        target_end_sample=end,
        target_start_s=start / sample_rate,
        target_end_s=end / sample_rate,
        total_duration_s=len(wav) / sample_rate,
        distractors=segments,
        distractors_share_label=share_label,
        longer_than_target=n_target >= total,
        target_within_first_30s=end <= OFFICIAL_MAX_SECONDS * sample_rate,
    )
    return wav, placement
