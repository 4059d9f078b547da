"""Kaldi-compatible log-mel filterbank in plain torch (the BEATs input features).

This reproduces ``torchaudio.compliance.kaldi.fbank`` with its default options, which is what the
official BEATs calls: povey window, pre-emphasis 0.97, per-frame DC-offset removal,
``snip_edges=True`` (only frames that fit entirely in the signal), FFT size rounded up to a power
of two, no dither, power spectrum, log with a floor of float32 machine epsilon, mel bins between
20 Hz and Nyquist. torchaudio is not needed.

Two details matter for matching the official numbers:

* Everything is computed in the waveform's dtype. The official SALMONN reads audio as float64, so
  its fbank is float64 and only cast to float32 afterwards; a float32 fbank differs by up to a few
  1e-4 after normalisation, more than the error budget of downstream parity checks.
* The triangular mel banks are built in float32 (torchaudio builds them with default-dtype tensors)
  and only then cast to the waveform's dtype, so they are rebuilt the same way here. Their float32
  ``log`` is not bit-stable across torch releases: torch 2.0's vectorised log is within 1 ulp,
  recent releases round correctly, and the 1-ulp differences at a few FFT bins move a few mel
  bins by ~1e-5 (after BEATs normalisation) relative to fbanks made with torch 2.0.

A single implementation serves both a lone clip and a right-padded batch: frames are
independent of each other, so a batch of clips with per-row valid lengths gives each clip exactly
the frames it would get on its own. On an accelerator the whole batch goes through in one pass.
On a CPU each clip goes through in steps of a few hundred frames, which keeps the temporaries in
the caches, and frames lying wholly in a run of exact zeros at either end of a clip are filled
with their known value instead of transformed (the official path pads clips with zeros).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from salmonn_pl.audio.features import BandedMatmul, nonzero_span
from salmonn_pl.audio.load import SAMPLE_RATE

# Kaldi floors log arguments at std::numeric_limits<float>::epsilon() whatever the compute dtype.
FLOAT32_EPSILON = torch.finfo(torch.float32).eps
PREEMPHASIS = 0.97
POVEY_EXPONENT = 0.85
LOW_FREQ_HZ = 20.0


def frame_geometry(sample_frequency: float, frame_length_ms: float, frame_shift_ms: float) -> tuple[int, int, int]:
    """(window_size, window_shift, fft_size) in samples, truncated like Kaldi (400, 160, 512 at 16 kHz)."""
    window_size = int(sample_frequency * frame_length_ms * 0.001)
    window_shift = int(sample_frequency * frame_shift_ms * 0.001)
    if window_size < 2 or window_shift < 1:
        raise ValueError(
            f"frame_length_ms={frame_length_ms} / frame_shift_ms={frame_shift_ms} at {sample_frequency} Hz "
            f"give a window of {window_size} and a shift of {window_shift} samples"
        )
    fft_size = 1 << (window_size - 1).bit_length()
    return window_size, window_shift, fft_size


def num_fbank_frames(
    num_samples: Tensor | int,
    sample_frequency: float = float(SAMPLE_RATE),
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
) -> Tensor | int:
    """Frames Kaldi emits for ``num_samples`` samples with ``snip_edges`` (0 when shorter than a window)."""
    window_size, window_shift, _ = frame_geometry(sample_frequency, frame_length_ms, frame_shift_ms)
    if isinstance(num_samples, Tensor):
        return torch.where(num_samples >= window_size, 1 + (num_samples - window_size) // window_shift, 0)
    return 1 + (num_samples - window_size) // window_shift if num_samples >= window_size else 0


def _mel(freq: Tensor) -> Tensor:
    return 1127.0 * (1.0 + freq / 700.0).log()


def kaldi_mel_banks(
    num_mel_bins: int,
    fft_size: int,
    sample_frequency: float,
    low_freq: float = LOW_FREQ_HZ,
    high_freq: float = 0.0,
) -> Tensor:
    """Triangular mel filters [num_mel_bins, fft_size // 2 + 1] in float32, Nyquist column zero.

    The arithmetic follows torchaudio's ``get_mel_banks`` step by step (same float32 tensors, same
    operation order) so the filters agree bit for bit; ``high_freq <= 0`` is an offset from Nyquist.
    """
    if num_mel_bins <= 3:
        raise ValueError(f"num_mel_bins must be > 3, got {num_mel_bins}")
    nyquist = 0.5 * sample_frequency
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(f"mel range low_freq={low_freq}, high_freq={high_freq} is invalid for Nyquist {nyquist}")

    fft_bin_width = sample_frequency / fft_size
    mel_low = 1127.0 * math.log(1.0 + low_freq / 700.0)
    mel_high = 1127.0 * math.log(1.0 + high_freq / 700.0)
    # num_bins + 1 intervals: the outer triangles reach past the first and last centre.
    mel_delta = (mel_high - mel_low) / (num_mel_bins + 1)

    bin_index = torch.arange(num_mel_bins).unsqueeze(1)
    left = mel_low + bin_index * mel_delta
    center = mel_low + (bin_index + 1.0) * mel_delta
    right = mel_low + (bin_index + 2.0) * mel_delta
    fft_bin_mel = _mel(fft_bin_width * torch.arange(float(fft_size // 2))).unsqueeze(0)

    rising = (fft_bin_mel - left) / (center - left)
    falling = (right - fft_bin_mel) / (right - center)
    banks = torch.max(torch.zeros(1), torch.min(rising, falling))
    return F.pad(banks, (0, 1))


def kaldi_fbank_batch(
    waveforms: Tensor,
    lengths: Tensor | None = None,
    num_mel_bins: int = 128,
    sample_frequency: float = float(SAMPLE_RATE),
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
) -> tuple[Tensor, Tensor]:
    """Log-mel fbank of each row of ``waveforms`` [B, N], computed in the waveforms' dtype.

    ``lengths`` [B] gives each row's valid samples (default: all N). Row ``b`` gets exactly the
    frames a lone clip of ``lengths[b]`` samples would get; later frames (up to the longest row's
    count) are 0. Returns ``(fbank [B, T, num_mel_bins], num_frames [B])``.
    """
    if waveforms.dim() != 2:
        raise ValueError(f"waveforms must be [batch, samples], got shape {tuple(waveforms.shape)}")
    if not waveforms.dtype.is_floating_point:
        raise TypeError(f"waveforms must be floating point, got {waveforms.dtype}")
    window_size, window_shift, fft_size = frame_geometry(sample_frequency, frame_length_ms, frame_shift_ms)
    batch, width = waveforms.shape
    device, dtype = waveforms.device, waveforms.dtype
    if lengths is None:
        lengths = torch.full((batch,), width, device=device, dtype=torch.long)
    lengths = lengths.to(device=device, dtype=torch.long).clamp(max=width)
    num_frames = num_fbank_frames(lengths, sample_frequency, frame_length_ms, frame_shift_ms)
    max_frames = int(num_frames.max()) if batch else 0
    if max_frames == 0:
        return waveforms.new_zeros(batch, 0, num_mel_bins), num_frames

    steps = _FbankSteps(
        window=torch.hann_window(window_size, periodic=False, device=device, dtype=dtype).pow(POVEY_EXPONENT),
        mel_banks=_mel_banks(num_mel_bins, fft_size, sample_frequency, dtype, device),
        fft_size=fft_size,
    )
    # Under autocast the matmul would silently drop to half precision.
    with torch.autocast(device_type=device.type, enabled=False):
        if device.type != "cpu":  # one pass over the whole batch keeps an accelerator busy
            frames = waveforms.unfold(-1, window_size, window_shift)[:, :max_frames]  # [B, T, window]
            frame_is_real = torch.arange(max_frames, device=device) < num_frames.unsqueeze(1)
            return steps(frames).masked_fill(~frame_is_real.unsqueeze(-1), 0.0), num_frames
        # On a CPU the temporaries of a whole batch (tens of MB) thrash the caches: one row at a time.
        fbank = waveforms.new_empty(batch, max_frames, num_mel_bins)
        for row in range(batch):
            row_frames = int(num_frames[row])
            if row_frames:
                clip = waveforms[row, : int(lengths[row])]
                _fbank_of_clip(clip, steps, window_shift, fbank[row, :row_frames])
            fbank[row, row_frames:] = 0.0
    return fbank, num_frames


@dataclass(frozen=True)
class _FbankSteps:
    """Kaldi's per-frame steps: frames [..., T, window] -> log mel energies [..., T, bins]."""

    window: Tensor  # povey window [window_size]
    mel_banks: BandedMatmul  # [bins, fft_size // 2 + 1]
    fft_size: int

    def __call__(self, frames: Tensor) -> Tensor:
        window_size = self.window.shape[0]
        centred = frames - frames.mean(dim=-1, keepdim=True)
        # Pre-emphasis inside each frame (the first sample is its own predecessor), written straight
        # into the zero-padded FFT input: x[i] - 0.97 * x[i - 1], rounded as Kaldi rounds it.
        fft_input = centred.new_zeros(*centred.shape[:-1], self.fft_size)
        emphasised = fft_input[..., :window_size]
        torch.mul(centred[..., :-1], PREEMPHASIS, out=emphasised[..., 1:])
        emphasised[..., 0] = PREEMPHASIS * centred[..., 0]
        torch.sub(centred, emphasised, out=emphasised)
        emphasised.mul_(self.window)
        # |X|^2 as re^2 + im^2 squared in place: twice as fast as abs().pow(2), within 1e-15 of it.
        squares = torch.view_as_real(torch.fft.rfft(fft_input)).square_()
        power = squares[..., 0] + squares[..., 1]  # [..., T, fft_size // 2 + 1]
        return self.mel_banks(power).clamp_(min=FLOAT32_EPSILON).log_()


# Frames per step on a CPU: the float64 temporaries of a step (~1 MB) then stay in the CPU caches.
_FRAMES_PER_STEP = 256


def _fbank_of_clip(wav: Tensor, steps: _FbankSteps, window_shift: int, out: Tensor) -> None:
    """Write the fbank of one clip into ``out`` [frames, bins].

    A frame of exact zeros stays exactly zero through DC removal, pre-emphasis, windowing and the
    FFT, so its log-mel is ``log(FLOAT32_EPSILON)`` in every bin: runs of zeros at either end of the
    clip (e.g. padding with digital silence) are filled with that value instead of transformed.
    """
    window_size = steps.window.shape[0]
    first, stop = nonzero_span(wav)
    frame_start = max(0, -(-(first - window_size + 1) // window_shift))  # frames ending before `first`
    frame_stop = min(out.shape[0], -(-stop // window_shift))  # frames starting before `stop`
    if frame_stop <= frame_start:  # silence
        frame_start = frame_stop = 0
    silent = torch.tensor(FLOAT32_EPSILON, dtype=out.dtype).log()  # bit-equal to the transformed frames' value
    out[:frame_start] = silent
    out[frame_stop:] = silent
    frames = wav.unfold(0, window_size, window_shift)
    for step_start in range(frame_start, frame_stop, _FRAMES_PER_STEP):
        step_stop = min(step_start + _FRAMES_PER_STEP, frame_stop)
        out[step_start:step_stop] = steps(frames[step_start:step_stop])


@lru_cache(maxsize=None)
def _mel_banks(
    num_mel_bins: int, fft_size: int, sample_frequency: float, dtype: torch.dtype, device: torch.device
) -> BandedMatmul:
    """:func:`kaldi_mel_banks` in the compute dtype, built once per configuration."""
    return BandedMatmul(kaldi_mel_banks(num_mel_bins, fft_size, sample_frequency).to(device=device, dtype=dtype))


def kaldi_fbank(
    waveform: Tensor,
    num_mel_bins: int = 128,
    sample_frequency: float = float(SAMPLE_RATE),
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
) -> Tensor:
    """Log-mel fbank [frames, num_mel_bins] of a mono waveform [N], like ``torchaudio.compliance.kaldi.fbank``.

    Samples are taken as they are (Kaldi conventionally expects int16-scaled audio: multiply
    [-1, 1] audio by 2**15 first, as BEATs does).
    """
    if waveform.dim() == 2 and waveform.size(0) == 1:
        waveform = waveform[0]
    if waveform.dim() != 1:
        raise ValueError(f"waveform must be mono [samples] or [1, samples], got shape {tuple(waveform.shape)}")
    window_size, _, _ = frame_geometry(sample_frequency, frame_length_ms, frame_shift_ms)
    if waveform.numel() < window_size:
        raise ValueError(f"waveform has {waveform.numel()} samples, fewer than one {window_size}-sample frame")
    fbank, _ = kaldi_fbank_batch(
        waveform.unsqueeze(0),
        num_mel_bins=num_mel_bins,
        sample_frequency=sample_frequency,
        frame_length_ms=frame_length_ms,
        frame_shift_ms=frame_shift_ms,
    )
    return fbank[0]
