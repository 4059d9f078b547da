"""SAKURA examples name their waveform (``meta["audio_key"]``), come clip by clip, and the collator
computes one log-mel per distinct waveform of a batch."""

from collections import defaultdict
from itertools import groupby

import numpy as np
import pytest
import torch
from tests.helpers.golden import SAKURA_MINI

from salmonn_pl.data import collate
from salmonn_pl.data.collate import SpeechCollator
from salmonn_pl.data.datamodule import SakuraDataModule
from salmonn_pl.data.variants import Variant

needs_mini = pytest.mark.skipif(not SAKURA_MINI.is_dir(), reason=f"no sakura-mini at {SAKURA_MINI}")

NOISE_LATE = Variant(pad_seconds=10, pad_fill="noise", pad_position="late")
# Variants that leave the audio as released, then ones that change it (each in its own way).
SAME_AUDIO = [
    Variant(),
    Variant(ablation="zero_beats"),
    Variant(ablation="no_audio"),
    Variant(strip_options=True),
    Variant(prompt_template="USER: <SpeechHere> Answer this: {question}\nASSISTANT:"),
]
OTHER_AUDIO = [
    NOISE_LATE,
    Variant(pad_seconds=10, pad_fill="noise", pad_position="late", ablation="zero_audio"),  # same audio as NOISE_LATE
    Variant(pad_seconds=10, pad_fill="noise", pad_position="late", noise_dbfs=-30),
    Variant(pad_seconds=10, pad_fill="zero", pad_position="middle"),
    Variant(pad_seconds=12, pad_fill="zero", pad_position="middle"),
]


def _examples(variants: list[Variant], **kwargs) -> tuple[SakuraDataModule, list[dict]]:
    dm = SakuraDataModule(SAKURA_MINI, variants=variants, **{"tracks": ["Animal", "Gender"], "limit": 3, **kwargs})
    dm.setup()
    return dm, [dm.dataset[i] for i in range(len(dm.dataset))]


def _clip(example: dict) -> str:
    return f"{example['meta']['track']}/{example['meta']['file']}"


@needs_mini
def test_equal_audio_keys_are_equal_waveforms_across_hops_and_variants():
    _, examples = _examples(SAME_AUDIO + OTHER_AUDIO)
    by_key: dict[str, list[dict]] = defaultdict(list)
    for example in examples:
        by_key[example["meta"]["audio_key"]].append(example)
    for key, group in by_key.items():
        for example in group[1:]:
            np.testing.assert_array_equal(example["audio"], group[0]["audio"], err_msg=key)
    # One key per clip and audio setting, shared by both hops and by every variant that keeps the audio.
    names = {v.name: v for v in SAME_AUDIO + OTHER_AUDIO}
    for clip, group in groupby(examples, key=_clip):
        group = list(group)
        assert {e["meta"]["hop"] for e in group} == {"single", "multi"}
        same = {e["meta"]["audio_key"] for e in group if names[e["meta"]["variant"]] in SAME_AUDIO}
        assert same == {clip}
        changed = {e["meta"]["audio_key"] for e in group if names[e["meta"]["variant"]] in OTHER_AUDIO}
        assert len(changed) == len(OTHER_AUDIO) - 1 and clip not in changed  # the ablation shares NOISE_LATE's


@needs_mini
def test_both_hops_of_a_clip_hear_the_same_noise_and_other_clips_other_noise():
    _, examples = _examples([NOISE_LATE])
    noise = {}
    for example in examples:
        start = round(example["meta"]["clip_start_s"] * 16_000)
        padding = example["audio"][:start]
        assert len(padding) > 0
        clip = _clip(example)
        if clip in noise:
            np.testing.assert_array_equal(padding, noise[clip][: len(padding)])
        else:
            noise[clip] = padding
    assert len(noise) == 6
    firsts = [n[:1000] for n in noise.values()]
    assert all(not np.array_equal(a, b) for i, a in enumerate(firsts) for b in firsts[i + 1 :])


@needs_mini
def test_both_hops_of_a_clip_get_the_same_long_recording():
    long = Variant(long_audio_seconds=40, long_audio_position=0.3)
    _, examples = _examples([long], tracks=["Gender"], limit=2, max_audio_seconds=40)
    for clip, group in groupby(examples, key=_clip):
        single, multi = group
        assert (single["meta"]["hop"], multi["meta"]["hop"]) == ("single", "multi")
        np.testing.assert_array_equal(single["audio"], multi["audio"])
        assert single["meta"]["distractor_ids"] == multi["meta"]["distractor_ids"]
        assert single["meta"]["audio_key"] == multi["meta"]["audio_key"] == long.audio_key(clip) != clip


@needs_mini
def test_examples_come_clip_by_clip():
    variants = [Variant(), Variant(ablation="zero_audio")]
    dm, examples = _examples(variants)
    order = [(e["id"], e["meta"]["variant"]) for e in examples]
    assert sorted(order) == sorted((q.id, v.name) for q in dm.questions for v in variants)
    clips = [clip for clip, _ in groupby(examples, key=_clip)]
    assert len(clips) == len(set(clips)) == 6  # each clip's examples are adjacent
    assert [c.split("/")[0] for c in clips] == ["Animal"] * 3 + ["Gender"] * 3
    # Within a clip: the single-hop question under every variant, then the multi-hop one.
    first_clip = [(e["meta"]["hop"], e["meta"]["variant"]) for e in examples[:4]]
    assert first_clip == [(hop, variant) for hop in ("single", "multi") for variant in ("original", "zero_audio")]
    # The clip order is the metadata's.
    assert clips[:3] == [f"Animal/{q.file}" for q in dm.questions if q.track == "Animal" and q.hop == "single"]


@needs_mini
def test_collator_computes_one_log_mel_per_distinct_audio(monkeypatch):
    _, examples = _examples([Variant(), NOISE_LATE, Variant(ablation="zero_whisper")], tracks=["Emotion"], limit=2)
    computed = []
    real = collate.whisper_log_mel

    def counting(wavs, *args, **kwargs):
        computed.append(wavs.size(0))
        return real(wavs, *args, **kwargs)

    unkeyed = [{**e, "meta": {k: v for k, v in e["meta"].items() if k != "audio_key"}} for e in examples]
    expected = SpeechCollator()(unkeyed)["spectrogram"]
    monkeypatch.setattr(collate, "whisper_log_mel", counting)
    batch = SpeechCollator()(examples)
    assert len(examples) == 12 and sum(computed) == len({e["meta"]["audio_key"] for e in examples}) == 4
    assert torch.equal(batch["spectrogram"], expected)


def test_a_key_shared_by_different_audio_names_both_examples():
    examples = [
        {"id": f"q{i}", "audio": np.full(16_000, 0.1 * (i + 1)), "prompt": "<SpeechHere> q", "text": "", "meta": {}}
        for i in range(2)
    ]
    for example in examples:
        example["meta"]["audio_key"] = "k"
    with pytest.raises(ValueError, match="examples 'q0' and 'q1' share meta audio_key 'k' but their audio differs"):
        SpeechCollator()(examples)


def test_examples_without_a_key_share_nothing():
    assert collate.first_row_with_same_audio(["a", None, "b", "a", None, "b", "a"]) == [0, 1, 2, 0, 4, 2, 0]


def test_audio_keys_are_equal_exactly_when_the_padded_waveforms_are():
    clip = 0.5 + 0.4 * np.sin(np.arange(8000) * 0.01)
    variants = [
        Variant(),
        Variant(name="renamed", ablation="zero_whisper", strip_options=True),
        Variant(pad_seconds=2),
        Variant(pad_seconds=2.0, noise_dbfs=-30, ablation="zero_audio"),  # no noise: its level changes nothing
        Variant(pad_seconds=2, pad_position="late"),
        Variant(pad_seconds=2.5),
        Variant(pad_seconds=2, pad_fill="noise"),
        Variant(pad_seconds=2, pad_fill="noise", prompt_template="<SpeechHere> {question}"),
        Variant(pad_seconds=2, pad_fill="noise", noise_dbfs=-30),
    ]
    keys = [v.audio_key("Animal/cat2.wav") for v in variants]
    wavs = [v.apply_audio(clip, "Animal/cat2.wav").wav for v in variants]
    for i, a in enumerate(variants):
        for j, b in enumerate(variants):
            assert (keys[i] == keys[j]) == np.array_equal(wavs[i], wavs[j]), (a.name, b.name)
    assert Variant().audio_key("Animal/cat2.wav") != Variant().audio_key("Animal/cow25.wav")
