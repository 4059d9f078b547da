"""Study variants: padding length/position/fill checked on sample values, option stripping, naming."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from tests.helpers.golden import SAKURA_MINI

from salmonn_pl.data.variants import (
    Variant,
    VariantSweep,
    pad_to_duration,
    resolve_variants,
    stable_seed,
    strip_options,
)

SR = 16_000


def _clip(n: int = 8000) -> np.ndarray:
    # Nonzero, distinct values so the clip can be located exactly inside the padded wav.
    return 0.5 + 0.4 * np.sin(np.arange(n) * 0.01)


@pytest.mark.parametrize("seconds", [1.5, 15, 30])
@pytest.mark.parametrize("position", ["early", "middle", "late"])
def test_zero_padding_puts_the_clip_in_place(seconds: float, position: str):
    clip = _clip()
    out = pad_to_duration(clip, seconds, fill="zero", position=position)
    target = int(round(seconds * SR))
    missing = target - len(clip)
    expected_start = {"early": 0, "middle": missing // 2, "late": missing}[position]

    assert len(out.wav) == target and out.wav.dtype == np.float64
    assert not out.longer_than_target and out.clip_start == expected_start
    np.testing.assert_array_equal(out.wav[expected_start : expected_start + len(clip)], clip)
    padding = np.concatenate([out.wav[:expected_start], out.wav[expected_start + len(clip) :]])
    assert len(padding) == missing and not padding.any()
    if position == "middle":  # split evenly: the two sides differ by at most one sample
        assert abs(expected_start - (missing - expected_start)) <= 1


@pytest.mark.parametrize("position", ["early", "middle", "late"])
@pytest.mark.parametrize("dbfs", [-20.0, -40.0])
def test_noise_padding_has_the_requested_level_and_is_seeded(position: str, dbfs: float):
    clip = _clip()
    out = pad_to_duration(clip, 15, fill="noise", position=position, noise_dbfs=dbfs, seed=123)
    start = out.clip_start
    np.testing.assert_array_equal(out.wav[start : start + len(clip)], clip)
    noise = np.concatenate([out.wav[:start], out.wav[start + len(clip) :]])
    assert len(noise) == 15 * SR - len(clip)

    rms = np.sqrt(np.mean(noise**2))
    assert abs(20 * np.log10(rms) - dbfs) < 0.1
    assert abs(noise.mean()) < 0.01 * rms * 10  # zero-mean
    spectrum = np.abs(np.fft.rfft(noise)) ** 2  # white: flat spectrum, low and high halves alike
    low, high = spectrum[1 : len(spectrum) // 2].mean(), spectrum[len(spectrum) // 2 :].mean()
    assert 0.9 < low / high < 1.1

    again = pad_to_duration(clip, 15, fill="noise", position=position, noise_dbfs=dbfs, seed=123)
    np.testing.assert_array_equal(again.wav, out.wav)
    other = pad_to_duration(clip, 15, fill="noise", position=position, noise_dbfs=dbfs, seed=124)
    assert not np.array_equal(other.wav, out.wav)


def test_clip_longer_than_target_is_left_as_is_and_flagged():
    clip = _clip(20 * SR)
    out = pad_to_duration(clip, 15, fill="noise", position="late")
    assert out.longer_than_target and out.wav is clip
    exact = pad_to_duration(_clip(15 * SR), 15, fill="noise")
    assert not exact.longer_than_target and len(exact.wav) == 15 * SR


def test_bad_padding_arguments_are_rejected():
    with pytest.raises(ValueError, match="fill"):
        pad_to_duration(_clip(), 2, fill="pink")
    with pytest.raises(ValueError, match="position"):
        pad_to_duration(_clip(), 2, position="end")
    with pytest.raises(ValueError, match="positive"):
        Variant(pad_seconds=0)


def test_variant_noise_is_seeded_by_the_clip():
    """Every question about a clip hears the same noise; another clip gets other noise."""
    variant = Variant(pad_seconds=3, pad_fill="noise", pad_position="late")
    a1 = variant.apply_audio(_clip(), "Animal/cat2.wav").wav
    a2 = variant.apply_audio(_clip(), "Animal/cat2.wav").wav
    b = variant.apply_audio(_clip(), "Animal/cow25.wav").wav
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(a1, b)


@pytest.mark.slow
def test_stable_seed_does_not_depend_on_the_process():
    code = "from salmonn_pl.data.variants import stable_seed; print(stable_seed('Gender/multi/x.wav'))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {str(stable_seed("Gender/multi/x.wav"))}


def _sakura_mini_questions() -> list[str]:
    if not SAKURA_MINI.is_dir():
        pytest.skip(f"no sakura-mini at {SAKURA_MINI}")
    questions = []
    for path in sorted(SAKURA_MINI.glob("data/*/metadata.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                questions += [row["single_instruction"], row["multi_instruction"]]
    return questions


def test_strip_options_handles_every_sakura_mini_question():
    questions = _sakura_mini_questions()
    assert len(questions) == 192
    for question in questions:
        stripped = strip_options(question)
        removed = question[len(stripped) :]
        assert question.startswith(stripped) and len(stripped) > 20, question
        assert "(a)" not in stripped and "(b)" not in stripped, question
        # Everything removed is the option list: it starts at (a) and holds every option marker.
        assert removed.lstrip().startswith("(a)"), question
        n_options = question.count("(") - stripped.count("(")
        assert n_options >= 2 and all(f"({chr(97 + k)})" in removed for k in range(n_options)), question


def test_strip_options_on_other_layouts():
    assert strip_options("Which one?\n(a) cat\n(b) dog\n(c) cow") == "Which one?"
    assert strip_options("Pick (a) or (b) below: (a) yes (b) no") == "Pick (a) or (b) below:"
    with pytest.raises(ValueError, match="no '\\(a\\) ... \\(b\\) ...' option list"):
        strip_options("What animal is this?")


def test_sweep_expands_to_named_variants():
    sweep = VariantSweep(pad_seconds=[15, 30], pad_fill=["zero", "noise"], pad_position=["early", "middle", "late"])
    variants = sweep.expand()
    names = [v.name for v in variants]
    assert len(names) == 12 == len(set(names))
    assert "pad30s-noise-late" in names and "pad15s-zero-middle" in names
    late30 = variants[names.index("pad30s-noise-late")]
    assert (late30.pad_seconds, late30.pad_fill, late30.pad_position) == (30, "noise", "late")

    # Settings that do not apply are not multiplied.
    no_pad = VariantSweep(pad_seconds=[None, 30], pad_fill=["zero", "noise"], strip_options=[False, True]).expand()
    assert [v.name for v in no_pad] == [
        "original",
        "no_options",
        "pad30s-zero-early",
        "pad30s-zero-early-no_options",
        "pad30s-noise-early",
        "pad30s-noise-early-no_options",
    ]
    levels = VariantSweep(pad_seconds=[30], pad_fill=["noise"], noise_dbfs=[-40, -60]).expand()
    assert [v.name for v in levels] == ["pad30s-noise-early", "pad30s-noise-60dB-early"]


def test_variant_names_and_resolution():
    assert Variant().name == "original"
    assert Variant(ablation="zero_beats").name == "zero_beats"
    assert Variant(pad_seconds=2.5, pad_fill="noise", pad_position="middle").name == "pad2.5s-noise-middle"
    assert Variant(name="custom", pad_seconds=30).name == "custom"
    assert [v.name for v in resolve_variants()] == ["original"]
    resolved = resolve_variants([Variant()], VariantSweep(pad_seconds=[30]))
    assert [v.name for v in resolved] == ["original", "pad30s-zero-early"]
    with pytest.raises(ValueError, match="used twice"):
        resolve_variants([Variant(), Variant(strip_options=False)])


def test_long_audio_variant_names_hold_duration_and_position():
    assert Variant(long_audio_seconds=60, long_audio_position="middle").name == "long60s-middle"
    assert Variant(long_audio_seconds=120, long_audio_position="late").name == "long120s-late"
    assert Variant(long_audio_seconds=45.5, long_audio_position=0.25).name == "long45.5s-at0.25"
    # A fraction that is early/middle/late is named (and stored) as such, so equal variants share a name.
    half = Variant(long_audio_seconds=60, long_audio_position=0.5)
    assert half.name == "long60s-middle" and half == Variant(long_audio_seconds=60)
    assert Variant(long_audio_seconds=60, long_audio_position=1).long_audio_position == "late"
    assert Variant(long_audio_seconds=60, long_audio_distractors="other_tracks").name == "long60s-middle-other_tracks"
    both = Variant(long_audio_seconds=120, long_audio_position="early", strip_options=True, ablation="zero_audio")
    assert both.name == "long120s-early-no_options-zero_audio"
    assert Variant(name="hidden", long_audio_seconds=60).name == "hidden"
    params = Variant(long_audio_seconds=60).params()
    long_params = (params["long_audio_seconds"], params["long_audio_position"], params["long_audio_distractors"])
    assert long_params == (60, "middle", "all_tracks")
    # Variants without long audio keep their names.
    assert Variant(long_audio_position="late").name == "original"


def test_long_audio_settings_are_checked():
    with pytest.raises(ValueError, match="pad_seconds .* and long_audio_seconds .* exclude each other"):
        Variant(pad_seconds=30, long_audio_seconds=60)
    with pytest.raises(ValueError, match="'mine': pad_seconds"):
        Variant(name="mine", pad_seconds=30, long_audio_seconds=60)
    with pytest.raises(ValueError, match="long_audio_seconds must be positive"):
        Variant(long_audio_seconds=-1)
    with pytest.raises(ValueError, match="long_audio_position must be early, middle, late"):
        Variant(long_audio_seconds=60, long_audio_position="end")
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        Variant(long_audio_seconds=60, long_audio_position=1.5)
    with pytest.raises(ValueError, match="long_audio_distractors"):
        Variant(long_audio_seconds=60, long_audio_distractors="anywhere")
    # The recording needs the benchmark's other clips, which a lone variant does not have.
    with pytest.raises(ValueError, match="long60s-middle.*distractor clips"):
        Variant(long_audio_seconds=60).apply_audio(_clip(), "Animal/single/cat2.wav")


def test_sweep_expands_long_audio_and_leaves_out_padded_long_audio():
    long = VariantSweep(long_audio_seconds=[60, 120], long_audio_position=["early", "middle", "late"]).expand()
    assert [v.name for v in long] == [f"long{s}s-{p}" for s in (60, 120) for p in ("early", "middle", "late")]
    assert all(v.pad_seconds is None for v in long)

    mixed = VariantSweep(
        pad_seconds=[None, 30], long_audio_seconds=[None, 60], long_audio_position=["early", "late"]
    ).expand()
    assert [v.name for v in mixed] == ["original", "long60s-early", "long60s-late", "pad30s-zero-early"]
    with pytest.raises(ValueError, match="every combination sets both pad_seconds .* add null"):
        VariantSweep(pad_seconds=[30], long_audio_seconds=[60]).expand()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"pad_seconds": float("nan")}, "pad_seconds must be positive (seconds) or null, got nan"),
        ({"pad_seconds": float("inf")}, "pad_seconds must be positive (seconds) or null, got inf"),
        ({"pad_seconds": 0}, "pad_seconds must be positive (seconds) or null, got 0"),
        ({"pad_seconds": 10, "pad_fill": "noise", "noise_dbfs": float("nan")}, "noise_dbfs must be a finite number"),
        ({"noise_dbfs": float("-inf")}, "noise_dbfs must be a finite number of decibels, got -inf"),
        ({"long_audio_seconds": float("nan")}, "long_audio_seconds must be positive (seconds) or null, got nan"),
        ({"long_audio_seconds": 60, "long_audio_position": float("nan")}, "fraction must be in [0, 1], got nan"),
    ],
)
def test_variant_numbers_must_be_finite(settings: dict, message: str):
    with pytest.raises(ValueError) as excinfo:
        Variant(**settings)
    assert message in str(excinfo.value)


def test_sweep_with_an_empty_list_names_the_setting():
    # An empty list empties the whole product: the sweep would silently serve no variant of any setting.
    with pytest.raises(ValueError, match=r"VariantSweep: pad_fill must list at least one value"):
        VariantSweep(pad_seconds=[15, 30], pad_fill=[])
