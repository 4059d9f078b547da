"""Audio loading: the official SALMONN path (float64, channel 0, 16 kHz, pad to 1 s, cut at 30 s)."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tests.helpers.golden import Golden

from salmonn_pl.audio.load import CHUNK_SAMPLES, MIN_SAMPLES, AudioError, load_audio, prepare_official


def test_golden_lengths_match_official_path(golden: Golden):
    for i, wav_info in enumerate(golden.wavs):
        path = golden.path / wav_info["file"]
        wav = load_audio(path)
        assert wav.dtype == np.float64
        np.testing.assert_array_equal(wav, golden.file_samples(i)[:, 0])  # channel 0 of a stereo file, as official
        assert len(prepare_official(wav)) == int(golden[f"wav{i}.num_samples"])


def test_prepare_official_pads_with_zeros_and_truncates():
    rng = np.random.default_rng(0)
    short = rng.uniform(-1, 1, 3000)
    padded = prepare_official(short)
    assert len(padded) == MIN_SAMPLES
    np.testing.assert_array_equal(padded[:3000], short)
    assert not padded[3000:].any()

    long = rng.uniform(-1, 1, CHUNK_SAMPLES + 12345)
    np.testing.assert_array_equal(prepare_official(long), long[:CHUNK_SAMPLES])

    middle = rng.uniform(-1, 1, 50_000)
    np.testing.assert_array_equal(prepare_official(middle), middle)


def test_stereo_keeps_channel_zero_or_mean(tmp_path: Path):
    rng = np.random.default_rng(1)
    stereo = rng.uniform(-0.5, 0.5, (16000, 2))
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 16000, subtype="FLOAT")
    first = load_audio(path)
    mean = load_audio(path, channel="mean")
    np.testing.assert_allclose(first, stereo[:, 0].astype(np.float32), atol=0)
    np.testing.assert_allclose(mean, stereo.astype(np.float32).astype(np.float64).mean(axis=1), atol=1e-12)
    assert not np.allclose(first, mean)


@pytest.mark.parametrize("sample_rate", [8000, 22050, 44100, 48000])
def test_other_sample_rates_are_resampled(tmp_path: Path, sample_rate: int):
    seconds, frequency = 1.5, 440.0
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    path = tmp_path / f"tone_{sample_rate}.wav"
    sf.write(path, 0.5 * np.sin(2 * np.pi * frequency * t), sample_rate)

    wav = load_audio(path)
    assert abs(len(wav) - seconds * 16000) <= 1
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    peak_hz = np.argmax(spectrum) * 16000 / len(wav)
    assert abs(peak_hz - frequency) < 2.0
    assert abs(np.sqrt(np.mean(wav[1000:-1000] ** 2)) - 0.5 / np.sqrt(2)) < 0.01


def test_bytes_source_matches_file(tmp_path: Path):
    path = tmp_path / "a.wav"
    sf.write(path, np.linspace(-0.5, 0.5, 4000), 16000)
    np.testing.assert_array_equal(load_audio(path.read_bytes(), name="a.wav"), load_audio(path))


def _write_nan_wav(path: Path) -> None:
    samples = np.zeros(1600, dtype=np.float32)
    samples[100] = np.nan
    sf.write(path, samples, 16000, subtype="FLOAT")


def _write_inf_wav(path: Path) -> None:
    samples = np.zeros(1600, dtype=np.float32)
    samples[7] = np.inf
    sf.write(path, samples, 16000, subtype="FLOAT")


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"RIFF\x00\x00garbage that is not a wav file" * 10), "cannot decode"),
        (lambda p: sf.write(p, np.zeros(0), 16000), "no samples"),
        (_write_nan_wav, "NaN"),
        (_write_inf_wav, "NaN/inf"),
    ],
    ids=["missing", "empty_file", "corrupt", "zero_frames", "nan", "inf"],
)
def test_bad_audio_raises_error_naming_the_file(tmp_path: Path, make, reason: str):
    path = tmp_path / "bad_clip.wav"
    make(path)
    with pytest.raises(AudioError, match=reason) as excinfo:
        load_audio(path)
    assert str(path) in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)


def _wav_bytes(frames: int, channels: int = 1, subtype: str = "PCM_16") -> bytes:
    import io

    buffer = io.BytesIO()
    sf.write(buffer, 0.1 * np.ones((frames, channels)), 16000, format="WAV", subtype=subtype)
    return buffer.getvalue()


@pytest.mark.parametrize("channels, subtype", [(1, "PCM_16"), (2, "FLOAT")])
def test_truncated_wav_is_unreadable_not_a_shorter_clip(tmp_path: Path, channels: int, subtype: str):
    whole = _wav_bytes(16000, channels, subtype)
    frame_bytes = len(whole[44:]) // 16000
    # soundfile itself reads the cut file as a shorter clip without complaint.
    path = tmp_path / "cut_download.wav"
    path.write_bytes(whole[: len(whole) - 500 * frame_bytes])
    assert sf.read(path)[0].shape[0] == 15500

    with pytest.raises(AudioError, match="truncated.*declares 16000 frames but the file holds 15500") as excinfo:
        load_audio(path)
    assert str(path) in str(excinfo.value)
    with pytest.raises(AudioError, match="parquet row 3: truncated"):
        load_audio(path.read_bytes(), name="parquet row 3")
    # A file cut inside its last frame holds one frame less than declared.
    path.write_bytes(whole[:-1])
    with pytest.raises(AudioError, match="declares 16000 frames but the file holds 15999"):
        load_audio(path)


def test_complete_wavs_with_extra_chunks_still_load(tmp_path: Path):
    whole = _wav_bytes(1600)
    # A LIST chunk after the data (as some editors write) is not a truncation.
    extra = b"LIST" + (6).to_bytes(4, "little") + b"INFOab"
    riff_size = int.from_bytes(whole[4:8], "little") + len(extra)
    path = tmp_path / "with_list.wav"
    path.write_bytes(whole[:4] + riff_size.to_bytes(4, "little") + whole[8:] + extra)
    np.testing.assert_array_equal(load_audio(path), load_audio(whole, name="plain"))
    flac = tmp_path / "clip.flac"
    sf.write(flac, 0.1 * np.ones(1600), 16000)
    assert len(load_audio(flac)) == 1600
