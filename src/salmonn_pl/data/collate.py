"""Collation of speech examples into model batches, with batched Whisper features.

Every dataset yields :class:`Example` dicts; :class:`SpeechCollator` turns a list of them into the
batch the model consumes. Audio goes through the official SALMONN path here (zero-pad to 1 s,
truncate to 30 s), after any study variant has been applied to the full clip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import torch
from torch.utils.data import get_worker_info

from salmonn_pl.audio.features import N_FRAMES, N_MELS, whisper_log_mel
from salmonn_pl.audio.load import CHUNK_SAMPLES, SAMPLE_RATE, prepare_official


class Example(TypedDict):
    """One dataset item before collation."""

    id: str  # stable question id, e.g. "Animal/single/cat2.wav"
    audio: np.ndarray  # float64 [N] mono 16 kHz, after variant transforms, not yet padded/truncated
    prompt: str  # full LLM prompt containing exactly one "<SpeechHere>"
    text: str  # training target or golden answer
    # JSON-serialisable: track, hop, label, variant name and params, flags. An optional "audio_key"
    # string promises that examples with the same key hold the same waveform (see SakuraDataset).
    meta: dict[str, Any]


class Batch(TypedDict):
    spectrogram: torch.Tensor  # float32 [B, 80, 3000] Whisper log-mel of the first 30 s
    raw_wav: torch.Tensor  # float64 [B, Nmax] right-padded with 0, each padded to >= 1 s, cut at 30 s
    padding_mask: torch.Tensor  # bool [B, Nmax], True on padding
    wav_lengths: torch.Tensor  # int64 [B]
    # int64 [B]: samples of each clip as the variant made it, cut at max_seconds, before the official
    # pad-to-1 s (raw_wav[i, :clip_lengths[i]] is the clip a family with its own processor hears).
    clip_lengths: torch.Tensor
    prompt: list[str]
    text: list[str]
    id: list[str]
    meta: list[dict[str, Any]]


@dataclass(frozen=True)
class AudioBatch:
    """A batch's audio as the model's encoders take it (the collated batch keeps these four keys)."""

    spectrogram: torch.Tensor  # [B, 80, 3000] Whisper log-mel of each clip's first 30 s
    raw_wav: torch.Tensor | None = None  # [B, Nmax] right-padded waveforms (BEATs, long audio)
    padding_mask: torch.Tensor | None = None  # [B, Nmax], True on padding
    wav_lengths: torch.Tensor | None = None  # [B] samples of each clip

    @classmethod
    def of(cls, batch: Mapping[str, Any]) -> AudioBatch:
        """The audio of a collated :class:`Batch` (``raw_wav`` and the rest may be absent)."""
        return cls(batch["spectrogram"], batch.get("raw_wav"), batch.get("padding_mask"), batch.get("wav_lengths"))

    def rows(self, index: torch.Tensor) -> AudioBatch:
        """The rows ``index`` (a LongTensor) of every tensor."""
        return AudioBatch(*(t if t is None else t.index_select(0, index.to(t.device)) for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor | None, ...]:
        """``(spectrogram, raw_wav, padding_mask, wav_lengths)`` (``dataclasses.astuple`` would copy them)."""
        return self.spectrogram, self.raw_wav, self.padding_mask, self.wav_lengths


SPEECH_PLACEHOLDER = "<SpeechHere>"  # where a prompt's audio tokens go
_REQUIRED_KEYS = ("id", "audio", "prompt", "text", "meta")


class SpeechCollator:
    """Collate :class:`Example` dicts into a :class:`Batch`.

    ``feature_dtype`` is the compute precision of the Whisper log-mel (see
    :func:`salmonn_pl.audio.features.whisper_log_mel`); the spectrogram is float32 either way.
    Examples sharing a ``meta["audio_key"]`` get their log-mel computed once (the batch still has
    one spectrogram row per example); a key shared by different waveforms is an error.
    """

    def __init__(self, feature_dtype: torch.dtype = torch.float32, max_seconds: float = 30.0) -> None:
        self.feature_dtype = feature_dtype
        # 30 s is the official cut. Longer keeps more raw audio for the model's chunked long-audio
        # path; the spectrogram always covers the first 30 s.
        self.max_samples = int(round(max_seconds * SAMPLE_RATE))

    def __call__(self, examples: list[Example]) -> Batch:
        if not examples:
            raise ValueError("SpeechCollator got an empty list of examples")
        for example in examples:
            _check_example(example)

        wavs = [self._prepare(np.asarray(example["audio"], dtype=np.float64)) for example in examples]
        clip_lengths = torch.tensor([min(len(example["audio"]), self.max_samples) for example in examples])
        same_audio = first_row_with_same_audio([example["meta"].get("audio_key") for example in examples])
        _check_same_audio(examples, wavs, same_audio)
        wav_lengths = torch.tensor([len(wav) for wav in wavs], dtype=torch.long)
        batch, width = len(wavs), int(wav_lengths.max())
        raw_wav = _batch_tensor((batch, width), torch.float64)
        for row, wav in enumerate(wavs):
            raw_wav[row, : len(wav)] = torch.from_numpy(wav)
            raw_wav[row, len(wav) :] = 0.0
        padding_mask = _batch_tensor((batch, width), torch.bool)
        torch.ge(torch.arange(width)[None, :], wav_lengths[:, None], out=padding_mask)
        spectrogram = _batch_tensor((batch, N_MELS, N_FRAMES), torch.float32)
        for row, first in enumerate(same_audio):
            if first == row:
                rows = slice(row, row + 1)
                whisper_log_mel(raw_wav[rows], wav_lengths[rows], dtype=self.feature_dtype, out=spectrogram[rows])
            else:
                spectrogram[row] = spectrogram[first]

        return Batch(
            spectrogram=spectrogram,
            raw_wav=raw_wav,
            padding_mask=padding_mask,
            wav_lengths=wav_lengths,
            clip_lengths=clip_lengths,
            prompt=[example["prompt"] for example in examples],
            text=[example["text"] for example in examples],
            id=[example["id"] for example in examples],
            meta=[example["meta"] for example in examples],
        )

    def _prepare(self, wav: np.ndarray) -> np.ndarray:
        if self.max_samples <= CHUNK_SAMPLES:
            return prepare_official(wav)[: self.max_samples]
        return prepare_official(wav[: self.max_samples]) if len(wav) <= CHUNK_SAMPLES else wav[: self.max_samples]


def first_row_with_same_audio(audio_keys: Sequence[str | None]) -> list[int]:
    """For each row, the first row whose ``audio_key`` equals its own (itself when the key is new).

    A ``None`` key (an example without ``meta["audio_key"]``) shares audio with no other row.
    """
    first: dict[str, int] = {}
    return [row if key is None else first.setdefault(key, row) for row, key in enumerate(audio_keys)]


def _check_same_audio(examples: list[Example], wavs: list[np.ndarray], same_audio: list[int]) -> None:
    for row, first in enumerate(same_audio):
        if first != row and not np.array_equal(wavs[row], wavs[first]):
            raise ValueError(
                f"examples {examples[first]['id']!r} and {examples[row]['id']!r} share "
                f"meta audio_key {examples[row]['meta']['audio_key']!r} but their audio differs"
            )


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor for a batch. Inside a DataLoader worker it is allocated in shared
    memory, as torch's ``default_collate`` allocates its batches: handing it to the main process
    then copies nothing (a 30 s clip brings ~5 MB of tensors)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


def _check_example(example: Example) -> None:
    missing = [key for key in _REQUIRED_KEYS if key not in example]
    if missing:
        raise KeyError(f"example {example.get('id', '<no id>')!r} lacks {missing}")
    audio = example["audio"]
    if not isinstance(audio, np.ndarray) or audio.ndim != 1:
        shape = getattr(audio, "shape", type(audio).__name__)
        raise ValueError(f"example {example['id']!r}: audio must be a 1-D numpy array, got {shape}")
    if example["prompt"].count(SPEECH_PLACEHOLDER) != 1:
        raise ValueError(f"example {example['id']!r}: prompt must contain exactly one {SPEECH_PLACEHOLDER}")
