"""Audio loading the way the official SALMONN data path does it.

Official path (bytedance/SALMONN ``utils.prepare_one_sample`` / ``dataset.py``): read with
``soundfile`` as float64, keep channel 0 of a multi-channel file, resample to 16 kHz, zero-pad to at
least 1 s and truncate to 30 s. :func:`load_audio` does the reading (and the conversions the official
code leaves to the user: resampling and channel selection); :func:`prepare_official` does the
pad/truncate step, which runs at collation time so that study variants can work on the full clip.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import BinaryIO, Literal, Union

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000
MIN_SAMPLES = SAMPLE_RATE  # the official code zero-pads shorter clips to 1 s
CHUNK_SAMPLES = 30 * SAMPLE_RATE  # Whisper's window: it sees 30 s; the official code drops the rest

ChannelPolicy = Literal["first", "mean"]
AudioSource = Union[str, Path, bytes]


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the reason."""


def load_audio(
    source: AudioSource,
    target_sr: int = SAMPLE_RATE,
    channel: ChannelPolicy = "first",
    name: str | None = None,
) -> np.ndarray:
    """Read an audio file as a mono float64 waveform at ``target_sr``.

    ``source`` is a path or the encoded file's bytes (e.g. from a parquet release); ``name`` is what
    error messages call the file (defaults to the path). Multi-channel audio keeps channel 0 like the
    official code (``channel="first"``) or averages the channels (``channel="mean"``); other sample
    rates are resampled with soxr. Raises :class:`AudioError` for a missing, unreadable, empty,
    truncated (a WAV holding fewer frames than its header declares) or non-finite file.
    """
    label = name if name is not None else str(source) if not isinstance(source, bytes) else "<bytes>"
    if isinstance(source, bytes):
        if not source:
            raise AudioError(f"{label}: audio is empty (0 bytes)")
        handle: str | io.BytesIO = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise AudioError(f"{label}: audio file not found")
        if path.stat().st_size == 0:
            raise AudioError(f"{label}: audio file is empty (0 bytes)")
        handle = str(path)
    try:
        wav, sr = sf.read(handle, dtype="float64", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(f"{label}: cannot decode audio ({err})") from err
    # libsndfile shortens a truncated WAV's frame count to the bytes present and reads those
    # without error, so a cut-off download would pass for a shorter clip.
    declared = _wav_declared_frames(io.BytesIO(source) if isinstance(source, bytes) else open(handle, "rb"))
    if declared is not None and declared > wav.shape[0]:
        raise AudioError(
            f"{label}: truncated audio: its WAV header declares {declared} frames but the file holds "
            f"{wav.shape[0]}"
        )

    if wav.shape[0] == 0:
        raise AudioError(f"{label}: audio has no samples")
    wav = _to_mono(wav, channel, label)
    if not np.isfinite(wav).all():
        bad = int((~np.isfinite(wav)).sum())
        raise AudioError(f"{label}: audio has {bad} NaN/inf samples")
    if sr != target_sr:
        wav = soxr.resample(wav, sr, target_sr)
    return np.ascontiguousarray(wav, dtype=np.float64)


def _wav_declared_frames(stream: BinaryIO) -> int | None:
    """Frames the ``data`` chunk of a RIFF/WAVE stream declares (``None`` for other formats).

    A size of 0xFFFFFFFF is the placeholder of a stream written without seeking back, not a
    length; it declares nothing.
    """
    with stream:
        header = stream.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return None
        block_align = None
        while True:
            chunk = stream.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"fmt ":
                fmt = stream.read(size + (size & 1))
                block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
            elif chunk_id == b"data":
                if not block_align or size == 0xFFFFFFFF:
                    return None
                return size // block_align
            else:
                stream.seek(size + (size & 1), io.SEEK_CUR)


def _to_mono(wav: np.ndarray, channel: ChannelPolicy, label: str) -> np.ndarray:
    if channel == "first":
        return wav[:, 0]
    if channel == "mean":
        return wav.mean(axis=1)
    raise AudioError(f"{label}: unknown channel policy {channel!r} (expected 'first' or 'mean')")


def prepare_official(wav: np.ndarray) -> np.ndarray:
    """Zero-pad to at least 1 s and truncate to 30 s, as the official SALMONN data path does."""
    if len(wav) < MIN_SAMPLES:
        wav = np.concatenate([wav, np.zeros(MIN_SAMPLES - len(wav), dtype=wav.dtype)])
    return wav[:CHUNK_SAMPLES]
