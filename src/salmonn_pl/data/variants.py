"""The study's benchmark variants: padded audio, long audio, option-free questions and encoder ablations.

A :class:`Variant` is one named condition of the study; a :class:`VariantSweep` is the Cartesian
product of several settings, written as one config entry and expanded into named variants::

    sweep:
      pad_seconds: [15, 30]
      pad_fill: [zero, noise]
      pad_position: [early, middle, late]   # -> 12 variants, pad15s-zero-early ... pad30s-noise-late

    sweep:
      long_audio_seconds: [60, 120]
      long_audio_position: [early, middle, late]   # -> 6 variants, long60s-early ... long120s-late

Audio transforms (:func:`pad_to_duration`) run on the full 16 kHz clip before the official
pad-to-1 s / truncate-to-30 s step, so a 30 s target fills Whisper's whole window. Long-audio
variants place the clip among other clips of the benchmark; the dataset, which holds the
benchmark's clips, builds them with :func:`salmonn_pl.data.long_audio.build_long_audio`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from salmonn_pl.audio.load import SAMPLE_RATE
from salmonn_pl.data.multiple_choice import parse_question
from salmonn_pl.data.collate import SPEECH_PLACEHOLDER

DEFAULT_PROMPT_TEMPLATE = "USER: <Speech><SpeechHere></Speech> {question}\nASSISTANT:"

PadFill = Literal["zero", "noise"]
PadPosition = Literal["early", "middle", "late"]
# Encoder ablations are applied by the model (see Salmonn.encode_audio); the data only carries the
# name. zero_audio zeroes every audio token the LLM sees; no_audio removes them (text-only prompt).
Ablation = Literal["none", "zero_beats", "zero_whisper", "zero_audio", "no_audio"]
# Where the question's clip sits in a long recording: a name or a fraction in [0, 1] of the space
# before it (0 = at the start, 1 = at the end).
LongAudioPosition = Literal["early", "middle", "late"] | float
LONG_AUDIO_POSITIONS: dict[str, float] = {"early": 0.0, "middle": 0.5, "late": 1.0}
# Which benchmark clips may be distractors: any clip of any track, clips of the question's own track
# (other labels preferred), or only clips of the other tracks (e.g. no second animal sound around an
# Animal question).
DistractorSource = Literal["all_tracks", "same_track", "other_tracks"]


@dataclass(frozen=True)
class PaddedAudio:
    wav: np.ndarray
    longer_than_target: bool  # the clip already exceeded the target and was left unchanged
    clip_start: int  # first sample of the original clip inside ``wav``


def stable_seed(*parts: str | int) -> int:
    """A 63-bit seed from strings/ints that is the same in every process and Python version."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def pad_to_duration(
    wav: np.ndarray,
    seconds: float,
    fill: PadFill = "zero",
    position: PadPosition = "early",
    noise_dbfs: float = -40.0,
    seed: int = 0,
    sample_rate: int = SAMPLE_RATE,
) -> PaddedAudio:
    """Pad a clip to ``seconds`` of audio.

    ``position`` is where the clip sits: ``early`` (clip, then padding), ``middle`` (padding split
    evenly, the extra sample after the clip) or ``late`` (padding, then clip). ``fill`` is ``zero``
    or ``noise``: white Gaussian noise whose RMS is ``noise_dbfs`` decibels relative to full scale
    (an RMS of 1.0 is 0 dBFS, so -40 dBFS is an RMS of 0.01), drawn from a torch generator seeded
    with ``seed``. A clip already longer than the target is returned unchanged with
    ``longer_than_target=True``.
    """
    if seconds <= 0:
        raise ValueError(f"pad_to_duration: seconds must be positive, got {seconds}")
    target = int(round(seconds * sample_rate))
    missing = target - len(wav)
    if missing <= 0:
        return PaddedAudio(wav=wav, longer_than_target=missing < 0, clip_start=0)

    before = {"early": 0, "middle": missing // 2, "late": missing}.get(position)
    if before is None:
        raise ValueError(f"pad_to_duration: unknown position {position!r} (expected early, middle or late)")
    padded = np.empty(target, dtype=np.float64)
    padded[before : before + len(wav)] = wav
    if fill == "zero":
        padding = np.zeros(missing, dtype=np.float64)
    elif fill == "noise":
        # torch's float32 normal sampler is ~3x faster than numpy's, which matters for 4000 x 30 s clips.
        generator = torch.Generator().manual_seed(seed)
        padding = torch.randn(missing, generator=generator).numpy()
        padding = np.multiply(padding, 10.0 ** (noise_dbfs / 20.0), dtype=np.float64)
    else:
        raise ValueError(f"pad_to_duration: unknown fill {fill!r} (expected 'zero' or 'noise')")
    padded[:before] = padding[:before]
    padded[before + len(wav) :] = padding[before:]
    return PaddedAudio(wav=padded, longer_than_target=False, clip_start=before)


# The option list starts at the last "(a)" that is followed by a "(b)"; everything from there on goes.


def strip_options(question: str) -> str:
    """Remove the trailing ``(a) ... (b) ...`` option list from a multiple-choice question.

    The study's "no options" probe: the model must answer from the audio without a list to pick
    from. Raises ``ValueError`` when the question has no such list, so a silent no-op cannot pass
    for a probe.
    """
    parsed = parse_question(question)
    if parsed is None:
        raise ValueError(f"strip_options: no '(a) ... (b) ...' option list in question {question!r}")
    return parsed.stem


def check_prompt_template(template: str) -> None:
    """A prompt template needs one ``<SpeechHere>`` (audio tokens) and one ``{question}``."""
    if template.count(SPEECH_PLACEHOLDER) != 1 or template.count("{question}") != 1:
        raise ValueError(
            f"prompt_template must contain '{SPEECH_PLACEHOLDER}' and '{{question}}' exactly once each, got {template!r}"
        )


@dataclass(frozen=True)
class Variant:
    """One study condition. ``name`` defaults to a readable description such as ``pad30s-noise-late``.

    ``pad_seconds=None`` keeps the clip as released; ``pad_fill``, ``pad_position`` and ``noise_dbfs``
    then have no effect. ``long_audio_seconds`` instead makes a recording of that length in which the
    clip sits, unaltered, at ``long_audio_position`` among other clips of the benchmark drawn from
    ``long_audio_distractors`` (named e.g. ``long60s-middle``); padding and long audio exclude each
    other. Padding noise and distractors are seeded by the clip, so the single- and multi-hop
    questions of a clip hear the same recording. ``ablation`` names the encoder output the model
    zeroes for this variant (``zero_beats``, ``zero_whisper``, ``zero_audio`` for every audio token,
    or ``no_audio`` for a text-only prompt without audio tokens).
    ``prompt_template`` replaces the data module's template for this variant (``None`` keeps it).
    ``text_caption`` is SAKURA's text-based control: the model hears nothing (``ablation`` becomes
    ``no_audio``; another ablation is an error) and reads instead a caption stating the clip's
    attribute, written where the audio tokens were (the data module's ``caption_templates``), so
    the gap to the audio variant separates hearing from reasoning. Named ``text_caption``.
    """

    name: str | None = None
    pad_seconds: float | None = None
    pad_fill: PadFill = "zero"
    pad_position: PadPosition = "early"
    noise_dbfs: float = -40.0
    strip_options: bool = False
    ablation: Ablation = "none"
    prompt_template: str | None = None
    long_audio_seconds: float | None = None
    long_audio_position: LongAudioPosition = "middle"
    long_audio_distractors: DistractorSource = "all_tracks"
    text_caption: bool = False

    def __post_init__(self) -> None:
        who = f"Variant {self.name!r}" if self.name else "Variant"
        if self.text_caption:
            self._check_text_caption(who)
        if self.pad_seconds is not None and not _positive_number(self.pad_seconds):
            raise ValueError(f"{who}: pad_seconds must be positive (seconds) or null, got {self.pad_seconds!r}")
        if not _finite_number(self.noise_dbfs):
            raise ValueError(f"{who}: noise_dbfs must be a finite number of decibels, got {self.noise_dbfs!r}")
        if self.long_audio_seconds is not None:
            if self.pad_seconds is not None:
                raise ValueError(
                    f"{who}: pad_seconds ({self.pad_seconds}) and long_audio_seconds ({self.long_audio_seconds}) "
                    "exclude each other; set only one of them"
                )
            if not _positive_number(self.long_audio_seconds):
                raise ValueError(
                    f"{who}: long_audio_seconds must be positive (seconds) or null, got {self.long_audio_seconds!r}"
                )
        object.__setattr__(self, "long_audio_position", _canonical_position(self.long_audio_position, who))
        if self.long_audio_distractors not in ("all_tracks", "same_track", "other_tracks"):
            raise ValueError(
                f"{who}: long_audio_distractors must be all_tracks, same_track or other_tracks, "
                f"got {self.long_audio_distractors!r}"
            )
        if self.prompt_template is not None:
            check_prompt_template(self.prompt_template)
        if self.name is None:
            object.__setattr__(self, "name", self.default_name())

    def _check_text_caption(self, who: str) -> None:
        """A caption replaces the audio: no audio tokens, and no audio settings that would mean nothing."""
        if self.ablation not in ("none", "no_audio"):
            raise ValueError(
                f"{who}: text_caption replaces the audio by a caption, so the model must hear nothing "
                f"(ablation no_audio); got ablation {self.ablation!r}"
            )
        if self.pad_seconds is not None or self.long_audio_seconds is not None:
            raise ValueError(
                f"{who}: text_caption replaces the audio by a caption; pad_seconds ({self.pad_seconds}) and "
                f"long_audio_seconds ({self.long_audio_seconds}) would change audio nobody hears; leave them null"
            )
        # The default ablation "none" means "not set": a caption variant is text-only.
        object.__setattr__(self, "ablation", "no_audio")

    def default_name(self) -> str:
        parts = []
        if self.pad_seconds is not None:
            noise = f"{_number(self.noise_dbfs)}dB" if self.pad_fill == "noise" and self.noise_dbfs != -40.0 else ""
            parts.append(f"pad{_number(self.pad_seconds)}s-{self.pad_fill}{noise}-{self.pad_position}")
        if self.long_audio_seconds is not None:
            position = self.long_audio_position
            where = position if isinstance(position, str) else f"at{_number(position)}"
            parts.append(f"long{_number(self.long_audio_seconds)}s-{where}")
            if self.long_audio_distractors != "all_tracks":
                parts.append(self.long_audio_distractors)
        if self.strip_options:
            parts.append("no_options")
        if self.ablation != "none" and not self.text_caption:  # a caption's no_audio goes without saying
            parts.append(self.ablation)
        if self.text_caption:
            parts.append("text_caption")
        if self.prompt_template is not None:
            parts.append(f"prompt{stable_seed(self.prompt_template) % 16**6:06x}")
        return "-".join(parts) or "original"

    def params(self) -> dict[str, Any]:
        """The variant's settings as JSON-serialisable fields (name included)."""
        return asdict(self)

    def audio_key(self, clip_id: str) -> str:
        """A name for the waveform this variant makes of the clip ``clip_id``: equal keys, equal samples.

        The key holds the clip and, exactly, the settings that change its samples (padding, long
        audio), not the variant's name, question, prompt or ablation: every question and variant
        that hears the same audio gets the same key (``meta["audio_key"]``), so its features can be
        computed once.
        """
        if self.pad_seconds is not None:
            noise = f",{float(self.noise_dbfs)!r}dBFS" if self.pad_fill == "noise" else ""
            return f"{clip_id}|pad{float(self.pad_seconds)!r}s,{self.pad_fill}{noise},{self.pad_position}"
        if self.long_audio_seconds is not None:
            where = f"{self.long_audio_position!r},{self.long_audio_distractors}"
            return f"{clip_id}|long{float(self.long_audio_seconds)!r}s,{where}"
        return clip_id

    def apply_audio(self, wav: np.ndarray, clip_id: str) -> PaddedAudio:
        """The padded clip; noise is seeded by ``clip_id`` (e.g. ``Animal/cat2.wav``), so every
        question about the clip hears the same noise."""
        if self.long_audio_seconds is not None:
            raise ValueError(
                f"Variant {self.name!r}: long audio needs distractor clips from other questions; "
                "build it with salmonn_pl.data.long_audio.build_long_audio (SakuraDataset does)"
            )
        if self.pad_seconds is None:
            return PaddedAudio(wav=wav, longer_than_target=False, clip_start=0)
        return pad_to_duration(
            wav,
            self.pad_seconds,
            fill=self.pad_fill,
            position=self.pad_position,
            noise_dbfs=self.noise_dbfs,
            seed=stable_seed(clip_id),
        )

    def apply_question(self, question: str) -> str:
        return strip_options(question) if self.strip_options else question


def _finite_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _positive_number(value: Any) -> bool:
    return _finite_number(value) and value > 0


def _number(value: float) -> str:
    return f"{value:g}"


def _canonical_position(position: LongAudioPosition, who: str) -> LongAudioPosition:
    """A fraction equal to early/middle/late becomes that name, so equal variants get equal names."""
    if isinstance(position, str):
        if position not in LONG_AUDIO_POSITIONS:
            raise ValueError(
                f"{who}: long_audio_position must be early, middle, late or a fraction in [0, 1], got {position!r}"
            )
        return position
    fraction = float(position)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{who}: long_audio_position fraction must be in [0, 1], got {position}")
    return next((name for name, value in LONG_AUDIO_POSITIONS.items() if value == fraction), fraction)


@dataclass
class VariantSweep:
    """Every combination of the listed settings, as one config entry.

    Settings that do not apply are collapsed: without padding, fill/position/noise level are not
    swept, ``noise_dbfs`` only multiplies ``noise`` fills, and without long audio its position and
    distractor source are not swept. Padding and long audio exclude each other, so combinations
    setting both are left out (list ``null`` in one of them to get both kinds of variant).
    ``text_caption: [false, true]`` adds each audio variant's text control; a caption variant hears
    nothing, so padding, long audio and ablations collapse for it (one ``text_caption`` variant per
    question form and prompt, however many audio variants there are).
    """

    pad_seconds: list[float | None] = field(default_factory=lambda: [None])
    pad_fill: list[PadFill] = field(default_factory=lambda: ["zero"])
    pad_position: list[PadPosition] = field(default_factory=lambda: ["early"])
    noise_dbfs: list[float] = field(default_factory=lambda: [-40.0])
    strip_options: list[bool] = field(default_factory=lambda: [False])
    ablation: list[Ablation] = field(default_factory=lambda: ["none"])
    prompt_template: list[str | None] = field(default_factory=lambda: [None])
    long_audio_seconds: list[float | None] = field(default_factory=lambda: [None])
    long_audio_position: list[LongAudioPosition] = field(default_factory=lambda: ["middle"])
    long_audio_distractors: list[DistractorSource] = field(default_factory=lambda: ["all_tracks"])
    text_caption: list[bool] = field(default_factory=lambda: [False])

    def __post_init__(self) -> None:
        empty = [name for name, values in asdict(self).items() if not values]
        if empty:
            # An empty list would make the product empty and drop every other setting's variants.
            raise ValueError(f"VariantSweep: {', '.join(empty)} must list at least one value (null for none), got []")

    def expand(self) -> list[Variant]:
        variants: dict[str, Variant] = {}
        for seconds, fill, position, dbfs, long_seconds, long_position, distractors, strip, ablation, template, caption in (
            itertools.product(
                self.pad_seconds,
                self.pad_fill,
                self.pad_position,
                self.noise_dbfs,
                self.long_audio_seconds,
                self.long_audio_position,
                self.long_audio_distractors,
                self.strip_options,
                self.ablation,
                self.prompt_template,
                self.text_caption,
            )
        ):
            if caption:
                seconds, long_seconds, ablation = None, None, "no_audio"
            if seconds is not None and long_seconds is not None:
                continue
            if seconds is None:
                fill, position, dbfs = "zero", "early", -40.0
            elif fill != "noise":
                dbfs = -40.0
            if long_seconds is None:
                long_position, distractors = "middle", "all_tracks"
            variant = Variant(
                pad_seconds=seconds,
                pad_fill=fill,
                pad_position=position,
                noise_dbfs=dbfs,
                strip_options=strip,
                ablation=ablation,
                prompt_template=template,
                long_audio_seconds=long_seconds,
                long_audio_position=long_position,
                long_audio_distractors=distractors,
                text_caption=caption,
            )
            variants.setdefault(variant.name, variant)
        if not variants:
            raise ValueError(
                f"VariantSweep: every combination sets both pad_seconds {self.pad_seconds} and long_audio_seconds "
                f"{self.long_audio_seconds}, which exclude each other; add null to one of the lists"
            )
        return list(variants.values())


def resolve_variants(variants: list[Variant] | None = None, sweep: VariantSweep | None = None) -> list[Variant]:
    """Listed variants followed by the sweep's; the unmodified benchmark when neither is given.

    Names must be unique because they key the results.
    """
    resolved = list(variants or []) + (sweep.expand() if sweep is not None else [])
    if not resolved:
        resolved = [Variant()]
    seen: set[str] = set()
    for variant in resolved:
        if variant.name in seen:
            raise ValueError(f"variant name {variant.name!r} is used twice; give one of them another name")
        seen.add(variant.name)
    return resolved
