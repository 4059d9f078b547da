"""LightningDataModule serving the SAKURA benchmark under every selected study variant.

Example YAML (``data:`` section of a LightningCLI config)::

    data:
      class_path: salmonn_pl.data.datamodule.SakuraDataModule
      init_args:
        root: /data/SAKURA
        tracks: [Animal, Gender]
        hops: [single, multi]
        limit: 50                 # per track and hop
        variants:
          - {}                    # the released benchmark ("original")
          - {strip_options: true}
          - {ablation: zero_audio}
        sweep:                    # 2 fills x 2 durations x 3 positions = 12 more variants
          pad_seconds: [15, 30]
          pad_fill: [zero, noise]
          pad_position: [early, middle, late]
        caption_templates:        # text_caption variants: added to / replacing DEFAULT_CAPTION_TEMPLATES
          Animal: "The sound is made by this animal: {label}."
        batch_size: 8
        on_error: skip

Every (question, variant) pair is one example. Examples of the same clip are adjacent (its single-
and multi-hop questions, each under every variant), so the clip is decoded once and a batch often
holds the same audio several times: ``meta["audio_key"]`` tells the collator and the model which
rows share a waveform, and they compute its features once. Long-audio variants
(``long_audio_seconds``, see ``configs/long_audio.yaml``) surround the clip with clips of other
questions of the benchmark; set ``max_audio_seconds`` to at least their length so that the model
hears all of it (``salmonn-pl`` sets it from ``model.model.max_audio_seconds``, one setting for both).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from salmonn_pl.audio.load import SAMPLE_RATE, ChannelPolicy
from salmonn_pl.data.collate import SPEECH_PLACEHOLDER, Example, SpeechCollator
from salmonn_pl.data.long_audio import (
    Clip,
    build_long_audio,
    distractor_candidates,
    sakura_clip_id,
    sakura_clip_pool,
)
from salmonn_pl.data.sakura import (
    HOPS,
    TRACKS,
    Layout,
    OnError,
    SakuraDataError,
    SakuraQuestion,
    Skipped,
    check_limit,
    find_unreadable_audio,
    hub_tracks,
    load_question_audio,
    read_sakura,
)
from salmonn_pl.settings_check import check_number
from salmonn_pl.data.variants import (
    DEFAULT_PROMPT_TEMPLATE,
    DistractorSource,
    PaddedAudio,
    Variant,
    VariantSweep,
    check_prompt_template,
    resolve_variants,
)

# SAKURA's text-based control: the attribute the audio carries, stated in words (``{label}`` is the
# release's attribute_label, e.g. "female", "English", "dog", "fear"). Worded so that every label of
# the release reads as a sentence (Emotion mixes adjectives, "happy", and nouns, "disgust").
DEFAULT_CAPTION_TEMPLATES: dict[str, str] = {
    "Animal": "The sound is made by this animal: {label}.",
    "Emotion": "The emotion in the speaker's voice is: {label}.",
    "Gender": "The speaker is {label}.",
    "Language": "The speaker is speaking {label}.",
}
CAPTION_SETTING = "data.init_args.caption_templates"


def resolve_caption_templates(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """:data:`DEFAULT_CAPTION_TEMPLATES` with ``overrides`` added or replacing them, each checked."""
    templates = {**DEFAULT_CAPTION_TEMPLATES, **(overrides or {})}
    for track, template in templates.items():
        if not isinstance(template, str) or "{label}" not in template:
            raise ValueError(f"{CAPTION_SETTING}.{track} must be a text holding '{{label}}', got {template!r}")
        if SPEECH_PLACEHOLDER in template:
            raise ValueError(f"{CAPTION_SETTING}.{track} must not hold {SPEECH_PLACEHOLDER}, got {template!r}")
    return templates


def check_caption_tracks(tracks: list[str], templates: dict[str, str], variants: list[Variant]) -> None:
    """A text_caption variant needs a caption template for every selected track."""
    captioned = [variant.name for variant in variants if variant.text_caption]
    missing = [track for track in tracks if track not in templates]
    if captioned and missing:
        raise ValueError(
            f"variant {captioned[0]!r} (text_caption) needs a caption template for track(s) {missing}; set "
            f"{CAPTION_SETTING} (e.g. {{{missing[0]}: \"The sound is {{label}}.\"}}, {{label}} = the release's "
            f"attribute_label); templates are given for {sorted(templates)}"
        )


def make_caption(template: str, label: str) -> str:
    # replace, not format: a template may hold other braces, a label anything.
    return template.replace("{label}", label)


class SakuraDataset(Dataset):
    """Every question under every variant, as :class:`~salmonn_pl.data.collate.Example` dicts.

    Examples come clip by clip (in the order clips first appear in ``questions``), within a clip
    question by question (single-hop first, as listed), within a question variant by variant. Each
    example's ``meta["audio_key"]`` names its waveform (:meth:`~salmonn_pl.data.variants.Variant.audio_key`
    of the clip ``<Track>/<file>``): equal keys mean equal audio across hops, ablations, prompts and
    option stripping.

    ``distractor_questions`` are the questions whose clips long-audio variants may place around a
    question's clip (default: ``questions``); each clip is one candidate however many questions
    share it, and a clip never surrounds itself. A long-audio example's ``meta`` records where the
    clip sits (``clip_start_s`` = ``target_start_s``, ``target_end_s``) and the ``distractor_ids``
    (``<Track>/<file>``) in recording order.

    A ``text_caption`` variant's example carries ``meta["caption"]``, the track's template of
    ``caption_templates`` (default :data:`DEFAULT_CAPTION_TEMPLATES`) filled with the question's
    attribute label, and its prompt holds the caption just before ``<SpeechHere>``, where the audio
    tokens would be (SALMONN reads ``<Speech>The speaker is female.</Speech> ...``); the variant is
    ``no_audio``, so nothing is put at ``<SpeechHere>``. Its ``audio_key`` is the clip's own.
    """

    def __init__(
        self,
        questions: list[SakuraQuestion],
        variants: list[Variant],
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        channel: ChannelPolicy = "first",
        distractor_questions: list[SakuraQuestion] | None = None,
        caption_templates: dict[str, str] | None = None,
    ) -> None:
        check_prompt_template(prompt_template)
        self.questions = clip_by_clip(questions)
        self.variants = variants
        self.caption_templates = resolve_caption_templates(caption_templates)
        check_caption_tracks(sorted({q.track for q in questions}), self.caption_templates, variants)
        self.prompt_template = prompt_template
        self.channel = channel
        self.distractor_pool: list[Clip] = sakura_clip_pool(
            questions if distractor_questions is None else distractor_questions, channel
        )
        self._candidates: dict[tuple[str, DistractorSource], list[Clip]] = {}
        self._cached: tuple[object, np.ndarray] | None = None  # last decoded clip, reused by the next variant

    def __len__(self) -> int:
        return len(self.questions) * len(self.variants)

    def __getitem__(self, index: int) -> Example:
        question = self.questions[index // len(self.variants)]
        variant = self.variants[index % len(self.variants)]
        audio = self._audio(question)
        clip_id = sakura_clip_id(question)
        if variant.long_audio_seconds is None:
            padded, placement = variant.apply_audio(audio, clip_id), {}
        else:
            padded, placement = self._long_audio(question, audio, variant)
        text = variant.apply_question(question.instruction)
        template = variant.prompt_template or self.prompt_template
        caption = None
        if variant.text_caption:
            caption = make_caption(self.caption_templates[question.track], question.label)
            # Where the audio tokens were; the variant is no_audio, so nothing goes at <SpeechHere>.
            template = template.replace(SPEECH_PLACEHOLDER, caption + SPEECH_PLACEHOLDER)
        meta: dict[str, Any] = {
            "track": question.track,
            "hop": question.hop,
            "file": question.file,
            "label": question.label,
            "answer": question.answer,
            # The release's own spelling, for its scripts (sakura_results); only when it differs.
            **({"answer_verbatim": question.answer_verbatim} if question.answer_verbatim not in ("", question.answer) else {}),
            "instruction": question.instruction,
            "question": text,
            # The variant's settings, as one value (the record's meta.variant_params).
            "variant_params": {key: value for key, value in variant.params().items() if key != "name"},
            "variant": variant.name,
            "audio_key": variant.audio_key(clip_id),
            "num_samples": len(audio),
            "clip_start_s": padded.clip_start / SAMPLE_RATE,
            "longer_than_target": padded.longer_than_target,
            **placement,
            **({"caption": caption} if caption is not None else {}),
            **({"extra": question.extra} if question.extra else {}),
        }
        return Example(
            id=question.id,
            audio=padded.wav,
            prompt=template.replace("{question}", text),
            text=question.answer,
            meta=meta,
        )

    def _audio(self, question: SakuraQuestion) -> np.ndarray:
        if self._cached is None or self._cached[0] != question.audio:
            self._cached = (question.audio, load_question_audio(question, self.channel))
        return self._cached[1]

    def _long_audio(
        self, question: SakuraQuestion, audio: np.ndarray, variant: Variant
    ) -> tuple[PaddedAudio, dict[str, Any]]:
        """The question's clip among distractors, and the placement fields for ``meta``."""
        target = Clip(sakura_clip_id(question), question.label, audio, track=question.track)
        key = (question.track, variant.long_audio_distractors)
        if key not in self._candidates:
            self._candidates[key] = distractor_candidates(self.distractor_pool, *key)
        candidates = self._candidates[key]
        if not any(clip.id != target.id for clip in candidates):
            tracks = sorted({str(clip.track) for clip in self.distractor_pool})
            raise ValueError(
                f"variant {variant.name!r}, question {question.id}: no distractor clips "
                f"({variant.long_audio_distractors}) in a pool of {len(self.distractor_pool)} clips "
                f"from tracks {tracks}"
            )
        wav, placement = build_long_audio(
            target,
            candidates,
            total_seconds=variant.long_audio_seconds,
            position=variant.long_audio_position,
        )
        padded = PaddedAudio(
            wav=wav, longer_than_target=placement.longer_than_target, clip_start=placement.target_start_sample
        )
        return padded, placement.to_meta()


def clip_by_clip(questions: list[SakuraQuestion]) -> list[SakuraQuestion]:
    """``questions`` reordered so that the questions about a clip are adjacent.

    Clips keep the order in which they first appear (tracks stay apart), and a clip's questions
    keep theirs (``read_sakura`` lists single-hop before multi-hop). Adjacent questions about a clip
    land in the same batch, where their audio is encoded once.
    """
    first_seen: dict[str, int] = {}
    for question in questions:
        first_seen.setdefault(sakura_clip_id(question), len(first_seen))
    # sorted() is stable: questions about one clip keep their relative order.
    return sorted(questions, key=lambda question: first_seen[sakura_clip_id(question)])


class ContiguousDistributedSampler(DistributedSampler):
    """Each DDP rank evaluates one contiguous block of the examples.

    Lightning's default ``DistributedSampler`` deals examples out in turn (rank 0 gets 0, 2, 4, ...),
    which would send a clip's adjacent questions to different ranks, each encoding the clip again.
    Blocks keep them together. The ranks are padded to equal length by repeating the first
    examples, as ``DistributedSampler`` does; the evaluator counts a repeated question once.
    """

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self):
        indices = list(range(len(self.dataset)))
        missing = self.total_size - len(indices)
        indices += (indices * (missing // max(1, len(indices)) + 1))[:missing]
        start = self.rank * self.num_samples
        return iter(indices[start : start + self.num_samples])


class SakuraDataModule(L.LightningDataModule):
    """The SAKURA benchmark (release layout or local Hugging Face copy) under the selected variants.

    Args:
        root: benchmark root (holding ``data/<Track>/`` or ``<Track>QA/``), or the benchmark's name
            on the Hugging Face Hub: ``SLLM-multi-hop`` (its four ``<Track>QA`` datasets) or one of
            them (``SLLM-multi-hop/AnimalQA``), loaded through ``datasets`` (see :func:`read_sakura`).
        tracks: tracks to evaluate; default: the four SAKURA tracks (the one of a single hub dataset).
        hops: sub-tracks to evaluate (``single``, ``multi``).
        limit: the first ``limit`` questions of each track and hop in release order, whatever
            errors they have (``on_error`` then applies to them, so fewer may remain); ``null``: all.
        variants: study conditions, each one config entry (see :class:`Variant`).
        sweep: the Cartesian product of settings, expanded after ``variants``; with neither given,
            the released benchmark is served as the variant ``original``.
        prompt_template: LLM prompt with ``<SpeechHere>`` where the audio tokens go and
            ``{question}`` where the (possibly option-stripped) instruction goes.
        batch_size: examples per batch.
        num_workers: DataLoader worker processes.
        on_error: ``raise`` stops at the first bad row or audio file with an error naming it;
            ``skip`` decodes every clip once in ``setup`` and leaves bad ones out, listing them in
            :attr:`skipped` (id and reason) for the run's outputs.
        channel: multi-channel audio keeps channel 0 (``first``, as the official code) or the
            channel average (``mean``).
        layout: ``release`` (metadata.csv/json + wav), ``parquet`` (Hugging Face copy), ``hub`` (a hub
            name) or ``auto``.
        feature_dtype: compute precision of the Whisper log-mel.
        caption_templates: per track, the caption that ``text_caption`` variants read instead of the
            audio, with ``{label}`` for the release's attribute label; added to (or replacing)
            :data:`DEFAULT_CAPTION_TEMPLATES` (Animal, Emotion, Gender, Language). A text_caption
            variant over a track without a template is an error at start-up.
        max_audio_seconds: raw audio kept per clip, at least the official 30 s; above 30 s the model
            encodes 30 s chunks, e.g. for long-audio variants. ``salmonn-pl`` links it to
            ``model.model.max_audio_seconds`` (set there; a value given here is replaced).

    Settings are checked when the module is built, and so is a hub name's dataset (loaded or found
    in the cache), so that a bad setting or a missing download fails before the model loads.
    ``setup`` raises :class:`SakuraDataError` when the selection holds no question to evaluate.

    Long-audio variants draw their distractors from every question of every track found under
    ``root`` (not only the selected tracks, and regardless of ``limit``), so a question gets the
    same recording whatever else is evaluated; rows that cannot be read are left out of that pool
    (and, with ``on_error="skip"``, so are unreadable clips).
    """

    def __init__(
        self,
        root: str | Path,
        tracks: list[str] | None = None,
        hops: list[str] = list(HOPS),
        limit: int | None = None,
        variants: list[Variant] | None = None,
        sweep: VariantSweep | None = None,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        batch_size: int = 8,
        num_workers: int = 0,
        on_error: OnError = "raise",
        channel: ChannelPolicy = "first",
        layout: Layout = "auto",
        feature_dtype: Literal["float32", "float64"] = "float32",
        max_audio_seconds: float = 30.0,
        caption_templates: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        check_prompt_template(prompt_template)
        check_limit(limit, "data.limit")
        check_number("data.batch_size", batch_size, minimum=1, integer=True)
        check_number("data.num_workers", num_workers, minimum=0, integer=True)
        check_number("data.max_audio_seconds", max_audio_seconds, minimum=30)
        if tracks is not None and not tracks:
            raise ValueError("data.tracks is empty; name at least one track or leave it null for all")
        if not hops:
            raise ValueError(f"data.hops is empty; choose from {list(HOPS)}")
        hub = hub_tracks(root)
        self.root = Path(root)
        self.tracks = list(tracks) if tracks is not None else list(hub) if hub is not None else list(TRACKS)
        self.hops = list(hops)
        self.limit = limit
        self.variants = resolve_variants(variants, sweep)
        # Resolved (defaults included), so the run fingerprint changes with any caption's wording.
        self.caption_templates = resolve_caption_templates(caption_templates)
        check_caption_tracks(self.tracks, self.caption_templates, self.variants)
        self.prompt_template = prompt_template
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.on_error = on_error
        self.channel = channel
        self.layout = layout
        # Kept for the run fingerprint (salmonn_pl.eval.fingerprint): both change the answers.
        self.feature_dtype = feature_dtype
        self.max_audio_seconds = max_audio_seconds
        self.collator = SpeechCollator(feature_dtype=getattr(torch, feature_dtype), max_seconds=max_audio_seconds)
        self.questions: list[SakuraQuestion] = []
        self.distractor_questions: list[SakuraQuestion] = []
        self.skipped: list[Skipped] = []
        self.dataset: SakuraDataset | None = None
        longest = max((v.long_audio_seconds for v in self.variants if v.long_audio_seconds is not None), default=0.0)
        if longest > max_audio_seconds:
            rank_zero_warn(
                f"SakuraDataModule: long-audio variants last up to {longest:g} s but max_audio_seconds is "
                f"{max_audio_seconds:g}, so the model hears only the first {max_audio_seconds:g} s; set "
                f"max_audio_seconds (model.model.max_audio_seconds under salmonn-pl) to {longest:g} to encode all of it"
            )
        if hub is not None:
            # Load (or find in the cache) now: a missing download fails before any other work.
            read_sakura(self.root, self.tracks, self.hops, limit=1, on_error="skip", layout=layout)

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        selected, skipped = read_sakura(
            self.root, self.tracks, self.hops, limit=self.limit, on_error=self.on_error, layout=self.layout
        )
        questions = selected
        if self.on_error == "skip":
            questions, unreadable = find_unreadable_audio(selected, self.channel)
            skipped += unreadable
        if not questions:
            raise SakuraDataError(self._nothing_selected(skipped))
        if any(variant.long_audio_seconds is not None for variant in self.variants):
            self.distractor_questions = self._distractor_questions(selected, questions)
        self.questions, self.skipped = questions, skipped
        self.dataset = SakuraDataset(
            questions, self.variants, self.prompt_template, self.channel, distractor_questions=self.distractor_questions,
            caption_templates=self.caption_templates,
        )

    def _nothing_selected(self, skipped: list[Skipped]) -> str:
        selection = f"root {self.root}, tracks {self.tracks}, hops {self.hops}, limit {self.limit}"
        if not skipped:
            return f"no question to evaluate: {selection} selected none"
        return (
            f"no question to evaluate: {selection} selected {len(skipped)} and on_error=skip left out "
            f"every one (first: {skipped[0].id}: {skipped[0].reason})"
        )

    def _distractor_questions(
        self, selected: list[SakuraQuestion], usable: list[SakuraQuestion]
    ) -> list[SakuraQuestion]:
        """Every question of every track under ``root`` (no limit), whose clips long-audio variants draw from."""
        found: list[SakuraQuestion] = []
        for track in dict.fromkeys([*self.tracks, *TRACKS]):
            try:
                found += read_sakura(self.root, [track], HOPS, on_error="skip", layout=self.layout)[0]
            except SakuraDataError:
                continue  # a track this copy of the benchmark lacks
        if self.on_error != "skip":
            return found
        # Clips of the selected questions were decoded already; decode only the others.
        readable = {question.audio for question in usable}
        unreadable = {question.audio for question in selected} - readable
        unchecked = [q for q in found if q.audio not in readable and q.audio not in unreadable]
        checked_ok, _ = find_unreadable_audio(unchecked, self.channel)
        return [q for q in found if q.audio in readable] + checked_ok

    def skipped_records(self) -> list[dict[str, str]]:
        """Skipped questions as JSON-serialisable ``{"id", "reason"}`` records."""
        return [{"id": s.id, "reason": s.reason} for s in self.skipped]

    def _loader(self) -> DataLoader:
        if self.dataset is None:
            self.setup()
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        # Lightning keeps a DistributedSampler it is given instead of interleaving the examples.
        sampler = ContiguousDistributedSampler(self.dataset) if distributed else None
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collator,
            persistent_workers=self.num_workers > 0,
        )

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()
