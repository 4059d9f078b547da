"""Batched Whisper log-mel: parity with the official features and transformers (also on runs of zeros)."""

import numpy as np
import pytest
import torch
from tests.helpers.golden import Golden, assert_close
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank

from salmonn_pl.audio.load import load_audio, prepare_official
from salmonn_pl.audio.features import BandedMatmul, _mel_filters, frames_reading, nonzero_span, whisper_log_mel
from salmonn_pl.data.variants import pad_to_duration


def _stack(wavs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(w) for w in wavs])
    batch = torch.zeros(len(wavs), int(lengths.max()), dtype=torch.float64)
    for row, wav in enumerate(wavs):
        batch[row, : len(wav)] = torch.from_numpy(wav)
    return batch, lengths


def _golden_wavs(golden: Golden) -> list[np.ndarray]:
    return [prepare_official(load_audio(golden.path / w["file"])) for w in golden.wavs]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_golden_input_features_one_by_one_and_batched(golden: Golden, dtype: torch.dtype):
    wavs = _golden_wavs(golden)
    batch, lengths = _stack(wavs)
    batched = whisper_log_mel(batch, lengths, dtype=dtype)
    assert batched.dtype == torch.float32 and batched.shape == (len(wavs), 80, 3000)
    for i, wav in enumerate(wavs):
        expected = golden[f"wav{i}.input_features"]
        single = whisper_log_mel(torch.from_numpy(wav)[None], dtype=dtype)
        assert_close(single, expected, f"wav{i}.input_features ({dtype}, alone)")
        assert_close(batched[i : i + 1], expected, f"wav{i}.input_features ({dtype}, batched)")
        diff = (batched[i] - expected[0]).abs().max().item()
        print(f"{golden.name} wav{i} {dtype}: max abs diff {diff:.2e}")


def test_matches_transformers_extractor_on_edge_lengths(golden: Golden):
    """Lengths around every shortcut: tiny, one hop, 30 s exactly, beyond 30 s, samples past `lengths`."""
    extractor = WhisperFeatureExtractor.from_pretrained(golden.file("whisper_path"))
    rng = np.random.default_rng(0)
    lengths = [1, 150, 161, 400, 16_000, 83_333, 479_799, 479_800, 479_999, 480_000, 500_000]
    wavs = [rng.uniform(-0.3, 0.3, n) * np.hanning(n + 2)[1:-1] for n in lengths]
    batch, lens = _stack(wavs)
    batch[0, 1:] = 5.0  # garbage beyond the valid length must be ignored
    ours = whisper_log_mel(batch, lens, dtype=torch.float64)
    reference = extractor([w[:480_000] for w in wavs], sampling_rate=16_000, return_tensors="pt").input_features
    for i, n in enumerate(lengths):
        assert_close(ours[i : i + 1], reference[i : i + 1], f"length {n}")


def test_float32_stays_close_to_float64_on_real_speech():
    from tests.helpers.golden import SAKURA_MINI

    if not SAKURA_MINI.is_dir():
        pytest.skip(f"no sakura-mini at {SAKURA_MINI}")
    files = sorted(SAKURA_MINI.glob("data/*/audio/*.wav"))[::3]
    batch, lengths = _stack([prepare_official(load_audio(f)) for f in files])
    diff = (whisper_log_mel(batch, lengths) - whisper_log_mel(batch, lengths, dtype=torch.float64)).abs().max().item()
    print(f"float32 vs float64 over {len(files)} sakura-mini clips: max abs diff {diff:.2e}")
    assert diff <= 1e-4


def test_ragged_batch_equals_transformers_clip_by_clip(golden: Golden):
    """One batched call over clips of different lengths gives each clip transformers' features.

    (How much faster that call is than transformers' extractor is measured by bench/features.py, not here.)
    """
    extractor = WhisperFeatureExtractor.from_pretrained(golden.file("whisper_path"))
    rng = np.random.default_rng(0)
    wavs = [rng.uniform(-0.3, 0.3, int(rng.uniform(2, 8) * 16_000)) for _ in range(8)]
    ours = whisper_log_mel(*_stack(wavs))
    for i, wav in enumerate(wavs):
        reference = extractor(wav, sampling_rate=16_000, return_tensors="pt").input_features
        assert_close(ours[i : i + 1], reference, f"clip {i} of {len(wav)} samples")


# -- runs of exact zeros ---------------------------------------------------------------------------
# Frames reading only zeros are filled instead of transformed; these tests hold the shortcut to the
# plain computation below, which transforms every frame of the zero-padded 30 s signal.


def _plain_log_mel(wav: np.ndarray) -> torch.Tensor:
    """[80, 3000] Whisper features computed the straightforward way, in float64."""
    signal = torch.zeros(480_000, dtype=torch.float64)
    clip = torch.from_numpy(wav[:480_000])
    signal[: len(clip)] = clip
    window = torch.hann_window(400, periodic=True, dtype=torch.float64)
    stft = torch.stft(signal, 400, 160, window=window, center=True, pad_mode="reflect", return_complex=True)
    filters = mel_filter_bank(
        num_frequency_bins=201, num_mel_filters=80, min_frequency=0.0, max_frequency=8000.0,
        sampling_rate=16_000, norm="slaney", mel_scale="slaney",
    )
    log_spec = (torch.from_numpy(filters).T @ stft[:, :-1].abs() ** 2).clamp(min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).float()


def _with_zeros(rng: np.random.Generator, total: int, zeros: list[tuple[int, int]]) -> np.ndarray:
    wav = rng.uniform(-0.3, 0.3, total)
    for start, stop in zeros:
        wav[start:stop] = 0.0
    return wav


# Around every boundary of the shortcut: frame 0 reads samples 0..200 (through the reflection),
# frame j >= 1 samples j*160-200 .. j*160+199; the last kept frame reads past the 30 s end.
ZERO_RUN_CASES = {
    "leading 200": (480_000, [(0, 200)]),
    "leading 201": (480_000, [(0, 201)]),
    "leading 360": (480_000, [(0, 360)]),
    "leading 361": (480_000, [(0, 361)]),
    "leading 25 s (late)": (480_000, [(0, 400_000)]),
    "trailing 25 s (early)": (480_000, [(80_000, 480_000)]),
    "trailing, last sample read by one frame": (480_000, [(80_121, 480_000)]),
    "both ends (middle)": (480_000, [(0, 200_000), (280_000, 480_000)]),
    "trailing 39 of 30 s": (480_000, [(479_961, 480_000)]),
    "trailing 361 of 30 s": (480_000, [(479_639, 480_000)]),
    "last 40 samples only": (480_000, [(0, 479_960)]),
    "one sample at 200": (480_000, [(0, 200), (201, 480_000)]),
    "interior run": (160_000, [(50_000, 90_000)]),
    "short clip, both ends": (20_000, [(0, 3_000), (15_000, 20_000)]),
    "silence": (480_000, [(0, 480_000)]),
}


@pytest.mark.parametrize("case", list(ZERO_RUN_CASES))
def test_zero_runs_equal_the_plain_computation(case: str):
    total, zeros = ZERO_RUN_CASES[case]
    wav = _with_zeros(np.random.default_rng(len(case)), total, zeros)
    expected = _plain_log_mel(wav)
    batch, lengths = _stack([wav])
    for dtype, atol in [(torch.float64, 1e-6), (torch.float32, 1e-4)]:
        ours = whisper_log_mel(batch, lengths, dtype=dtype)[0]
        assert_close(ours, expected, f"{case} ({dtype})", atol=atol)


def test_zero_padded_sakura_clips_match_transformers(golden: Golden):
    """A clip padded to 30 s with zeros after, around or before it (the study's pad variants)."""
    extractor = WhisperFeatureExtractor.from_pretrained(golden.file("whisper_path"))
    wav = _golden_wavs(golden)[0]
    padded = [pad_to_duration(wav, 30.0, "zero", position).wav for position in ("early", "middle", "late")]
    ours = whisper_log_mel(*_stack(padded))
    reference = extractor(padded, sampling_rate=16_000, return_tensors="pt").input_features
    for i, position in enumerate(("early", "middle", "late")):
        assert_close(ours[i : i + 1], reference[i : i + 1], f"padded to 30 s, {position}")


SAMPLE_SPANS = [(0, 1), (0, 480_000), (200, 201), (201, 202), (360, 361), (361, 520), (5_000, 5_001),
                (479_639, 479_640), (479_640, 479_641), (479_999, 480_000)]


@pytest.mark.parametrize("first, stop", SAMPLE_SPANS)
def test_frames_reading_are_the_frames_that_see_the_samples(first: int, stop: int):
    """Brute force: mark the samples, pad as the reference does and look at every frame."""
    signal = np.zeros(480_000)
    signal[first:stop] = 1.0
    padded = np.pad(signal, 200, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, 400)[::160][:3000]
    active = np.flatnonzero(frames.any(axis=1))
    assert frames_reading(first, stop) == (int(active[0]), int(active[-1]) + 1)
    assert len(active) == active[-1] + 1 - active[0], "the frames that see a sample run are contiguous"


def test_nonzero_span():
    wav = torch.zeros(1000, dtype=torch.float64)
    assert nonzero_span(wav) == (0, 0) and nonzero_span(wav[:0]) == (0, 0)
    wav[[17, 600]] = torch.tensor([0.5, -1e-300], dtype=torch.float64)
    assert nonzero_span(wav) == (17, 601)
    assert nonzero_span(wav[17:601]) == (0, 584)  # non-zero ends: nothing to scan
    wav[17] = -0.0
    assert nonzero_span(wav) == (600, 601)
    assert nonzero_span(wav.float()) == (0, 0), "1e-300 is 0 in float32"


def test_banded_matmul_equals_the_dense_product():
    filters = _mel_filters(torch.float64, torch.device("cpu"))
    x = torch.rand(300, 201, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(filters(x), x @ filters.matrix.T, rtol=1e-14, atol=0)
    sparse = torch.zeros(40, 50, dtype=torch.float64)
    sparse[3, 7], sparse[35, 45] = 2.0, 3.0  # rows 16..31 are all zero
    banded = BandedMatmul(sparse, rows_per_block=16)
    product = banded(torch.ones(2, 50, dtype=torch.float64))
    assert torch.equal(product, torch.ones(2, 50, dtype=torch.float64) @ sparse.T)
    assert [b[1] for b in banded.blocks] == [slice(7, 8), slice(0, 0), slice(45, 46)]
