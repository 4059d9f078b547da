"""LightningDataModule for training and validating on official SALMONN annotation files."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from salmonn_pl.data.annotations import (
    PROMPT_TEMPLATE,
    AnnotationDataset,
    EpochSampler,
    load_prompts,
)
from salmonn_pl.audio.load import ChannelPolicy
from salmonn_pl.data.collate import SpeechCollator
from salmonn_pl.settings_check import check_number
from salmonn_pl.data.resumable import ResumableDataLoader


class AnnotationDataModule(LightningDataModule):
    """Batches (the project's batch contract) from official ``{"annotation": [...]}`` files.

    Args:
        train_annotation: annotation file for ``fit``.
        val_annotation: annotation file for validation (optional).
        prompt_path: official prompt file (task -> templates with ``<SpeechHere>``); ``None`` uses the
            official QA prompt ``"<Speech><SpeechHere></Speech> {}"``.
        prompt_template: wraps every template, as the official ``prompt_template`` setting.
        audio_root: folder that relative audio paths start from; default: each annotation file's folder.
        batch_size: examples per batch.
        num_workers: DataLoader worker processes.
        shuffle_options: re-order the options of multiple-choice training items every epoch (and
            relabel the answer), so that a model cannot learn answer positions. Never applied to validation.
        seed: seeds the training order, prompt-template choice and option order (per epoch and item).
        channel: how multi-channel audio becomes mono ("first" is the official behaviour).
    """

    def __init__(
        self,
        train_annotation: str | None = None,
        val_annotation: str | None = None,
        prompt_path: str | None = None,
        prompt_template: str = PROMPT_TEMPLATE,
        audio_root: str | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
        shuffle_options: bool = False,
        seed: int = 42,
        channel: ChannelPolicy = "first",
    ) -> None:
        super().__init__()
        check_number("data.batch_size", batch_size, minimum=1, integer=True)
        check_number("data.num_workers", num_workers, minimum=0, integer=True)
        self.save_hyperparameters()
        self.train_annotation = train_annotation
        self.val_annotation = val_annotation
        self.prompt_path = prompt_path
        self.prompt_template = prompt_template
        self.audio_root = audio_root
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_options = shuffle_options
        self.seed = seed
        self.channel = channel
        self.collator = SpeechCollator()
        self.train_dataset: AnnotationDataset | None = None
        self.val_dataset: AnnotationDataset | None = None

    def _dataset(self, annotation: str, shuffle_options: bool) -> AnnotationDataset:
        return AnnotationDataset(
            Path(annotation),
            prompts=load_prompts(self.prompt_path, self.prompt_template),
            audio_root=self.audio_root,
            seed=self.seed,
            shuffle_options=shuffle_options,
            channel=self.channel,
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None):
            if self.train_annotation is None:
                raise ValueError("AnnotationDataModule: 'train_annotation' is required to fit")
            self.train_dataset = self._dataset(self.train_annotation, self.shuffle_options)
        if stage in ("fit", "validate", None) and self.val_annotation is not None:
            self.val_dataset = self._dataset(self.val_annotation, shuffle_options=False)

    def _loader(self, dataset: AnnotationDataset, sampler: EpochSampler | None) -> DataLoader:
        # Non-persistent workers: they are re-forked each epoch and so see the epoch that the sampler
        # passed to the dataset.
        # Resumable: `fit --ckpt_path` continues mid-epoch at the next batch, not at the epoch's start.
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collator,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        return self._loader(self.train_dataset, EpochSampler(self.train_dataset, shuffle=True, seed=self.seed))

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None:
            if self.val_annotation is None:
                return []
            self.setup("validate")
        # A plain sequential sampler: validation keeps the epoch-0 prompt choices, so that its loss
        # is comparable across epochs.
        return self._loader(self.val_dataset, sampler=None)
