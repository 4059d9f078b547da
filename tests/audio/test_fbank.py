"""Kaldi fbank parity with the official BEATs preprocessing (golden ``wav{i}.beats_fbank``) and the plain recipe."""


import pytest
import torch
from tests.helpers.golden import Golden, assert_close, load_official_wav

from salmonn_pl.model.beats import FBANK_MEAN, FBANK_STD
from salmonn_pl.audio.fbank import (
    _FbankSteps,
    _mel_banks,
    kaldi_fbank,
    kaldi_fbank_batch,
    kaldi_mel_banks,
    num_fbank_frames,
)

SAMPLE_RATE = 16000


def beats_normalised_fbank(waveform: torch.Tensor) -> torch.Tensor:
    fbank = kaldi_fbank(waveform * 2**15)
    return ((fbank - FBANK_MEAN) / (2 * FBANK_STD)).to(torch.float32)


def test_fbank_matches_golden(golden: Golden):
    golden.require_beats()  # the fbank is BEATs' input; a Whisper-only set has no beats_fbank
    for i, wav in enumerate(golden.wavs):
        waveform = load_official_wav(golden.path / wav["file"])
        assert waveform.numel() == golden[f"wav{i}.num_samples"].item(), wav["file"]
        assert_close(beats_normalised_fbank(waveform), golden[f"wav{i}.beats_fbank"][0], f"wav{i}.beats_fbank")


def test_float32_fbank_is_measurably_worse(golden: Golden):
    """Why the fbank must run in float64: a float32 fbank is several times further from the official one.

    The manifest records the official float32-vs-float64 error per clip; ours is of the same order.
    """
    golden.require_beats()
    float64_errors, float32_errors = [], []
    for i, wav in enumerate(golden.wavs):
        waveform = load_official_wav(golden.path / wav["file"])
        expected = golden[f"wav{i}.beats_fbank"][0]
        float64_errors.append((beats_normalised_fbank(waveform) - expected).abs().max().item())
        float32_errors.append((beats_normalised_fbank(waveform.float()) - expected).abs().max().item())
        official = golden.variant["wavs"][wav["name"]]["fbank_if_computed_in_float32_max_abs_diff"]
        assert official / 4 < float32_errors[-1] < official * 4, (wav["name"], float32_errors[-1], official)
        assert float32_errors[-1] > 2 * float64_errors[-1], (wav["name"], float32_errors[-1], float64_errors[-1])
    print(f"fbank max abs diff vs golden: float64 {float64_errors}, float32 {float32_errors}")
    assert max(float32_errors) > 5 * max(float64_errors)


def test_batch_rows_equal_lone_clips():
    """Each row of a padded batch gets exactly the frames of the clip alone; junk past its length is ignored."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([16000, 400, 7919, 399, 12345])
    waveforms = torch.randn(len(lengths), int(lengths.max()), generator=generator, dtype=torch.float64) * 3000
    fbank, num_frames = kaldi_fbank_batch(waveforms, lengths)

    assert num_frames.tolist() == [num_fbank_frames(int(n)) for n in lengths]
    assert num_frames[1] == 1 and num_frames[3] == 0, "one frame needs exactly 400 samples"
    assert fbank.shape == (5, int(num_frames.max()), 128) and fbank.dtype == torch.float64
    for row, length in enumerate(lengths.tolist()):
        frames = int(num_frames[row])
        if frames:
            # Not always bit-equal: BLAS may pick another kernel for a different number of frames.
            assert_close(fbank[row, :frames], kaldi_fbank(waveforms[row, :length]), f"row {row}", atol=1e-9)
        assert not fbank[row, frames:].any()


def test_fbank_keeps_its_dtype_under_autocast():
    waveform = torch.randn(4000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3000
    reference = kaldi_fbank(waveform)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = kaldi_fbank(waveform)
    assert under_autocast.dtype == torch.float64
    assert torch.equal(under_autocast, reference)


def test_mel_banks_are_kaldi_triangles():
    banks = kaldi_mel_banks(128, 512, 16000.0)
    assert banks.shape == (128, 257) and banks.dtype == torch.float32
    assert not banks[:, -1].any(), "Nyquist column must be zero"
    assert not banks[:, 0].any(), "DC bin lies below the 20 Hz lower edge"
    assert banks.min() >= 0 and banks.max() <= 1
    # With 128 bins on a 512-point FFT a few of the narrow low bins catch no FFT bin at all (as in Kaldi).
    peaks = banks[banks.any(dim=1)].argmax(dim=1)
    assert torch.all(peaks[1:] >= peaks[:-1]), "bin centres must increase with frequency"


def test_too_short_waveform_is_rejected():
    with pytest.raises(ValueError, match="fewer than one 400-sample frame"):
        kaldi_fbank(torch.zeros(399, dtype=torch.float64))


def _plain_fbank(waveform: torch.Tensor) -> torch.Tensor:
    """torchaudio's ``kaldi.fbank`` recipe step by step on every frame, as the official BEATs runs it."""
    frames = waveform.unfold(0, 400, 160)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    frames = frames - 0.97 * torch.cat([frames[:, :1], frames[:, :-1]], dim=-1)
    window = torch.hann_window(400, periodic=False, dtype=waveform.dtype).pow(0.85)
    power = torch.fft.rfft(torch.nn.functional.pad(frames * window, (0, 112))).abs().pow(2.0)
    mel = power @ kaldi_mel_banks(128, 512, 16000.0).to(waveform.dtype).T
    return torch.max(mel, torch.tensor(torch.finfo(torch.float32).eps, dtype=waveform.dtype)).log()


# Frame j reads samples [160 j, 160 j + 400): around each edge of the frames that see only zeros.
ZERO_RUNS = {
    "leading 399": (32_000, [(0, 399)]),
    "leading 400": (32_000, [(0, 400)]),
    "leading 560": (32_000, [(0, 560)]),
    "leading 561": (32_000, [(0, 561)]),
    "trailing 160": (32_000, [(31_840, 32_000)]),
    "trailing 161": (32_000, [(31_839, 32_000)]),
    "trailing 20000 (padded after)": (32_000, [(12_000, 32_000)]),
    "both ends": (32_000, [(0, 9_000), (20_000, 32_000)]),
    "interior run": (32_000, [(9_000, 20_000)]),
    "one sample": (32_000, [(0, 16_000), (16_001, 32_000)]),
    "silence": (32_000, [(0, 32_000)]),
}


def test_zero_runs_equal_the_plain_computation():
    """The CPU path fills the frames that read only zeros; each row equals the plain recipe on all frames."""
    generator = torch.Generator().manual_seed(0)
    names = list(ZERO_RUNS)
    lengths = torch.tensor([ZERO_RUNS[name][0] - 7 * i for i, name in enumerate(names)])
    waveforms = torch.randn(len(names), int(lengths.max()), generator=generator, dtype=torch.float64) * 3000
    for row, name in enumerate(names):
        for start, stop in ZERO_RUNS[name][1]:
            waveforms[row, start:stop] = 0.0
    fbank, num_frames = kaldi_fbank_batch(waveforms, lengths)
    for row, name in enumerate(names):
        expected = _plain_fbank(waveforms[row, : int(lengths[row])])
        assert_close(fbank[row, : int(num_frames[row])], expected, name, atol=1e-9)
        assert not fbank[row, int(num_frames[row]) :].any(), name


def test_batched_steps_equal_the_plain_computation():
    """The per-frame steps on a [B, T, window] batch, as an accelerator runs them (dense mel product)."""
    waveforms = torch.randn(3, 16_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3000
    steps = _FbankSteps(
        window=torch.hann_window(400, periodic=False, dtype=torch.float64).pow(0.85),
        mel_banks=_mel_banks(128, 512, 16000.0, torch.float64, torch.device("cpu")),
        fft_size=512,
    )
    batched = steps(waveforms.unfold(-1, 400, 160))
    for row in range(3):
        assert_close(batched[row], _plain_fbank(waveforms[row]), f"row {row}", atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_equals_cpu_rows():
    generator = torch.Generator().manual_seed(2)
    lengths = torch.tensor([48_000, 16_000, 30_001])
    waveforms = torch.randn(3, 48_000, generator=generator, dtype=torch.float64) * 3000
    waveforms[1, 8_000:] = 0.0
    cpu, cpu_frames = kaldi_fbank_batch(waveforms, lengths)
    gpu, gpu_frames = kaldi_fbank_batch(waveforms.cuda(), lengths.cuda())
    assert torch.equal(gpu_frames.cpu(), cpu_frames)
    assert_close(gpu.cpu(), cpu, "CUDA batch vs CPU rows", atol=1e-9)
