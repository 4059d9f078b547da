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
        batch_size: 8
        on_error: skip

Every (question, variant) pair is one example; examples of the same question are adjacent so its
clip is decoded once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from salmonn_pl.data.audio import SAMPLE_RATE, ChannelPolicy
from salmonn_pl.data.collate import Example, SpeechCollator
from salmonn_pl.data.sakura import (
    HOPS,
    TRACKS,
    Layout,
    OnError,
    SakuraQuestion,
    Skipped,
    find_unreadable_audio,
    load_question_audio,
    read_sakura,
)
from salmonn_pl.data.variants import (
    DEFAULT_PROMPT_TEMPLATE,
    Variant,
    VariantSweep,
    check_prompt_template,
    resolve_variants,
)


class SakuraDataset(Dataset):
    """Every question under every variant, as :class:`~salmonn_pl.data.collate.Example` dicts."""

    def __init__(
        self,
        questions: list[SakuraQuestion],
        variants: list[Variant],
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        channel: ChannelPolicy = "first",
    ) -> None:
        check_prompt_template(prompt_template)
        self.questions = questions
        self.variants = variants
        self.prompt_template = prompt_template
        self.channel = channel
        self._cached: tuple[object, np.ndarray] | None = None  # last decoded clip, reused by the next variant

    def __len__(self) -> int:
        return len(self.questions) * len(self.variants)

    def __getitem__(self, index: int) -> Example:
        question = self.questions[index // len(self.variants)]
        variant = self.variants[index % len(self.variants)]
        audio = self._audio(question)
        padded = variant.apply_audio(audio, question.id)
        text = variant.apply_question(question.instruction)
        template = variant.prompt_template or self.prompt_template
        meta: dict[str, Any] = {
            "track": question.track,
            "hop": question.hop,
            "file": question.file,
            "label": question.label,
            "answer": question.answer,
            "instruction": question.instruction,
            "question": text,
            **{key: value for key, value in variant.params().items() if key != "name"},
            "variant": variant.name,
            "num_samples": len(audio),
            "clip_start_s": padded.clip_start / SAMPLE_RATE,
            "longer_than_target": padded.longer_than_target,
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


class SakuraDataModule(L.LightningDataModule):
    """The SAKURA benchmark (release layout or local Hugging Face copy) under the selected variants.

    Args:
        root: benchmark root (holding ``data/<Track>/`` or ``<Track>QA/``).
        tracks: tracks to evaluate.
        hops: sub-tracks to evaluate (``single``, ``multi``).
        limit: at most this many questions per track and hop (the first in metadata order).
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
        layout: ``release`` (metadata.csv/json + wav), ``parquet`` (Hugging Face copy) or ``auto``.
        feature_dtype: compute precision of the Whisper log-mel.
        max_audio_seconds: raw audio kept per clip; above 30 s the model encodes 30 s chunks
            (set the model's ``max_audio_seconds`` to the same value), e.g. for long-audio variants.
    """

    def __init__(
        self,
        root: str | Path,
        tracks: list[str] = list(TRACKS),
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
    ) -> None:
        super().__init__()
        check_prompt_template(prompt_template)
        self.root = Path(root)
        self.tracks = list(tracks)
        self.hops = list(hops)
        self.limit = limit
        self.variants = resolve_variants(variants, sweep)
        self.prompt_template = prompt_template
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.on_error = on_error
        self.channel = channel
        self.layout = layout
        self.collator = SpeechCollator(feature_dtype=getattr(torch, feature_dtype), max_seconds=max_audio_seconds)
        self.questions: list[SakuraQuestion] = []
        self.skipped: list[Skipped] = []
        self.dataset: SakuraDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        questions, skipped = read_sakura(
            self.root, self.tracks, self.hops, limit=self.limit, on_error=self.on_error, layout=self.layout
        )
        if self.on_error == "skip":
            questions, unreadable = find_unreadable_audio(questions, self.channel)
            skipped += unreadable
        self.questions, self.skipped = questions, skipped
        self.dataset = SakuraDataset(questions, self.variants, self.prompt_template, self.channel)

    def skipped_records(self) -> list[dict[str, str]]:
        """Skipped questions as JSON-serialisable ``{"id", "reason"}`` records."""
        return [{"id": s.id, "reason": s.reason} for s in self.skipped]

    def _loader(self) -> DataLoader:
        if self.dataset is None:
            self.setup()
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=False,
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
