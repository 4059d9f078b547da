"""Batched Whisper log-mel: parity with the official features and with transformers, and speed."""

import time

import numpy as np
import pytest
import torch
from golden import Golden, assert_close
from transformers import WhisperFeatureExtractor

from salmonn_pl.data.audio import load_audio, prepare_official
from salmonn_pl.data.features import whisper_log_mel


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
    torch.set_num_threads(1)
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
    torch.set_num_threads(1)
    extractor = WhisperFeatureExtractor.from_pretrained(golden.path / "whisper")
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
    from golden import SAKURA_MINI

    if not SAKURA_MINI.is_dir():
        pytest.skip(f"no sakura-mini at {SAKURA_MINI}")
    torch.set_num_threads(1)
    files = sorted(SAKURA_MINI.glob("data/*/audio/*.wav"))[::3]
    batch, lengths = _stack([prepare_official(load_audio(f)) for f in files])
    diff = (whisper_log_mel(batch, lengths) - whisper_log_mel(batch, lengths, dtype=torch.float64)).abs().max().item()
    print(f"float32 vs float64 over {len(files)} sakura-mini clips: max abs diff {diff:.2e}")
    assert diff <= 1e-4


def test_faster_than_transformers_extractor(golden: Golden):
    torch.set_num_threads(1)
    extractor = WhisperFeatureExtractor.from_pretrained(golden.path / "whisper")
    rng = np.random.default_rng(0)
    wavs = [rng.uniform(-0.3, 0.3, int(rng.uniform(2, 8) * 16_000)) for _ in range(8)]
    batch, lengths = _stack(wavs)

    def best_of(fn, repeats: int = 3) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    ours = best_of(lambda: whisper_log_mel(batch, lengths))
    theirs = best_of(lambda: [extractor(w, sampling_rate=16_000, return_tensors="pt") for w in wavs])
    print(f"8 clips of 2-8 s: ours {ours * 1e3:.1f} ms, transformers {theirs * 1e3:.1f} ms, x{theirs / ours:.1f}")
    assert ours < theirs
