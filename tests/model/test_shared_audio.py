"""Evaluation encodes each distinct audio of a batch once, and only with the encoders its ablations keep.

The reference is :func:`encode_audio_per_ablation` (every row through :meth:`Salmonn.encode_audio`
with its own ablation, the path of training and of the code before sharing). Every row must get
the reference's tokens; sharing may only change float rounding where an encoder's batch differs.
"""

import copy
import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch
from tests.helpers.encoder_counts import count_encoder_rows

from salmonn_pl.data.collate import AudioBatch, SpeechCollator
from salmonn_pl.lit_module import SalmonnModule
from salmonn_pl.model.audio_encoding import USES_BEATS, USES_QFORMER, USES_WHISPER, encode_audio_per_ablation, encode_audio_shared
from salmonn_pl.model.salmonn import Salmonn, SalmonnConfig
from salmonn_pl.model.tiny import tiny_qformer_settings, write_tiny_salmonn

PROMPT = "USER: <Speech><SpeechHere></Speech> Which sound is it? (a) tone (b) noise\nASSISTANT:"
ABLATIONS = ("none", "zero_beats", "zero_whisper", "zero_audio", "no_audio")
# Differently composed encoder batches may round differently (fp32); observed: below 1e-8.
SHARING_ATOL = 1e-6


def _clips(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    clip = 0.1 * rng.standard_normal(int(1.5 * 16000))
    return {
        "clip": clip,
        # The clip padded with noise: a variant that changes the audio, hence another key.
        "clip|padded": np.concatenate([clip, 0.01 * rng.standard_normal(2 * 16000)]),
        "other": 0.1 * rng.standard_normal(3 * 16000),
        "short": 0.1 * rng.standard_normal(8000),  # padded to 1 s by the collator
    }


def _mixed_examples() -> list[dict]:
    """Two hops of one clip under all five ablations, a padded variant, a repeated row, a clip
    without a key (three rows: keyless rows never share), and another clip."""
    clips = _clips()
    rows = [(hop, "clip", ablation) for hop in ("single", "multi") for ablation in ABLATIONS]
    rows += [("single", "clip", "none")]  # the same question again
    rows += [("single", "clip|padded", ablation) for ablation in ("none", "zero_beats", "zero_audio")]
    rows += [("single", None, "none"), ("single", None, "zero_whisper"), ("multi", None, "none")]
    rows += [("multi", "other", "zero_whisper"), ("single", "other", "none")]
    return [
        {
            "id": f"{key or 'keyless'}/{hop}/{i}",
            "audio": clips[key or "short"],
            "prompt": PROMPT,
            "text": "(a) tone",
            "meta": {"variant_params": {"ablation": ablation}, **({"audio_key": key} if key else {})},
        }
        for i, (hop, key, ablation) in enumerate(rows)
    ]


def _audio(batch: dict) -> AudioBatch:
    return AudioBatch.of(batch)


def _ablations_and_keys(batch: dict) -> tuple[list[str], list[str | None]]:
    return [m["variant_params"]["ablation"] for m in batch["meta"]], [m.get("audio_key") for m in batch["meta"]]


def _rows(tokens) -> list[torch.Tensor]:
    return list(tokens) if tokens is not None else []


def _assert_rows_match(shared, reference, ablations: list[str], atol: float) -> None:
    shared, reference = _rows(shared), _rows(reference)
    assert len(shared) == len(reference) == len(ablations)
    for row, (got, want) in enumerate(zip(shared, reference)):
        assert got.shape == want.shape and got.dtype == want.dtype, (row, ablations[row], got.shape, want.shape)
        if ablations[row] in ("zero_audio", "no_audio"):
            assert torch.equal(got, want), (row, ablations[row])
        else:
            diff = (got - want).abs().max().item()
            assert diff <= atol, f"row {row} ({ablations[row]}): max |shared - reference| {diff:.2e} > {atol}"


def test_every_row_gets_the_tokens_of_the_unshared_path(tiny_salmonn):
    batch = SpeechCollator()(_mixed_examples())
    ablations, keys = _ablations_and_keys(batch)
    with torch.no_grad():
        reference = encode_audio_per_ablation(tiny_salmonn, _audio(batch), ablations)
        shared = encode_audio_shared(tiny_salmonn, _audio(batch), ablations, keys)
        alone = [
            encode_audio_per_ablation(tiny_salmonn, _audio(batch).rows(torch.tensor([i])), [ablation])
            for i, ablation in enumerate(ablations)
        ]
    _assert_rows_match(shared, reference, ablations, SHARING_ATOL)
    # ... and the tokens each row gets alone (text-only rows have none).
    for row, (got, one) in enumerate(zip(_rows(shared), alone)):
        want = one[0] if one is not None else got.new_zeros(0, got.size(-1))
        torch.testing.assert_close(got, want, atol=SHARING_ATOL, rtol=0, msg=f"row {row}")
    diffs = [(g - r).abs().max().item() for g, r in zip(_rows(shared), _rows(reference)) if g.numel()]
    print(f"max |shared - unshared| over {len(ablations)} rows: {max(diffs):.1e}")


def test_under_bfloat16_autocast_tokens_keep_their_dtype_and_values(tiny_salmonn):
    """Zeros stand in for skipped encoders and Q-Former passes in the dtype autocast gives them."""
    model = copy.copy(tiny_salmonn)
    model.config = dataclasses.replace(tiny_salmonn.config, autocast_dtype="bfloat16")
    batch = SpeechCollator()(_mixed_examples())
    ablations, keys = _ablations_and_keys(batch)
    with torch.no_grad():
        reference = encode_audio_per_ablation(model, _audio(batch), ablations)
        shared = encode_audio_shared(model, _audio(batch), ablations, keys)
        zero_audio = encode_audio_shared(model, _audio(batch), ["zero_audio"] * len(ablations), keys)
    assert zero_audio.dtype == reference[0].dtype == torch.bfloat16
    _assert_rows_match(shared, reference, ablations, atol=2e-2)  # bf16 rounding if the batches round differently


@pytest.mark.parametrize("ablation", ["none", "zero_beats", "zero_whisper", "zero_audio"])
def test_zeroed_encoders_give_exactly_todays_tokens(tiny_salmonn, ablation):
    """With the same rows in the encoders' batches, skipping a zeroed encoder changes no bit."""
    clips = _clips(seed=1)
    examples = [
        {"id": key, "audio": clips[key], "prompt": PROMPT, "text": "", "meta": {"audio_key": key}}
        for key in ("other", "clip", "short", "clip|padded")
    ]
    batch = SpeechCollator()(examples)
    with torch.no_grad():
        today = tiny_salmonn.encode_audio(_audio(batch), ablation=ablation)["audio_tokens"]
        shared = encode_audio_shared(tiny_salmonn, _audio(batch), [ablation] * 4, [e["id"] for e in examples])
    assert shared.dtype == today.dtype and torch.equal(shared, today)


def _audio_ids(keys: list[str | None]) -> list:
    """What identifies each row's audio: its key, or the row itself when it has none."""
    return [key if key is not None else ("row", i) for i, key in enumerate(keys)]


def _distinct_audio(ablations: list[str], keys: list[str | None], uses: frozenset[str]) -> int:
    """Distinct audio among the rows whose ablation is in ``uses``."""
    return len({audio for audio, ablation in zip(_audio_ids(keys), ablations) if ablation in uses})


def test_each_encoder_runs_once_per_distinct_audio(tiny_salmonn, monkeypatch):
    model = tiny_salmonn  # the counting wrappers come off after the test (monkeypatch)
    batch = SpeechCollator()(_mixed_examples())
    ablations, keys = _ablations_and_keys(batch)
    counters = count_encoder_rows(monkeypatch, model)
    with torch.no_grad():
        encode_audio_shared(model, _audio(batch), ablations, keys)
    pairs = {(audio, ablation) for audio, ablation in zip(_audio_ids(keys), ablations) if ablation in USES_QFORMER}
    expected = {
        "whisper": _distinct_audio(ablations, keys, USES_WHISPER),
        "beats": _distinct_audio(ablations, keys, USES_BEATS),
        "qformer": len(pairs),
    }
    assert {name: c.rows for name, c in counters.items()} == expected
    assert expected == {"whisper": 5, "beats": 6, "qformer": 10} and len(ablations) == 19
    assert all(c.calls == 1 for c in counters.values())  # one encoder batch each

    # zero_audio and no_audio rows run nothing at all.
    for counter in counters.values():
        counter.rows = counter.calls = 0
    with torch.no_grad():
        encode_audio_shared(model, _audio(batch), ["zero_audio", "no_audio"] * 9 + ["zero_audio"], keys)
    assert all(c.calls == 0 for c in counters.values())


def test_beats_output_lengths_are_the_extracted_token_counts(tiny_salmonn):
    beats = tiny_salmonn.beats
    lengths = torch.tensor([16000, 16159, 16160, 16161, 23456, 48000, 480000])
    rng = np.random.default_rng(0)
    wavs = torch.from_numpy(0.1 * rng.standard_normal((len(lengths), int(lengths.max()))))
    with torch.no_grad():
        _, padding = beats.extract_features_per_clip(wavs, lengths)
    assert beats.output_lengths(lengths).tolist() == (~padding).sum(1).tolist()
    assert int(beats.output_lengths(torch.tensor([480000]))) == 1496  # 30 s, as the official encoder gives


def test_the_module_shares_in_evaluation_and_encodes_row_by_row_in_training(tiny_config, tiny_salmonn, monkeypatch):
    module = SalmonnModule(tiny_config)
    module.salmonn = tiny_salmonn
    examples = [e for e in _mixed_examples() if e["meta"]["variant_params"]["ablation"] == "none"]
    batch = SpeechCollator()(examples)
    ablations, keys = _ablations_and_keys(batch)
    counters = count_encoder_rows(monkeypatch, tiny_salmonn)
    module.eval()
    with torch.no_grad():
        shared = module.encode(batch)
    assert counters["whisper"].rows == _distinct_audio(ablations, keys, USES_WHISPER) < len(examples)
    reference = encode_audio_per_ablation(tiny_salmonn, _audio(batch), ablations)
    _assert_rows_match(shared, reference, ablations, SHARING_ATOL)

    # Training: every row its own Q-Former pass, so two rows of the same audio draw different dropout.
    counters["qformer"].rows = 0
    module.train()
    try:
        with torch.no_grad():
            trained = module.encode(batch)
    finally:
        module.eval()  # the fixture is shared by the session
    assert counters["qformer"].rows == len(examples)
    assert keys[0] == keys[1] and not torch.equal(trained[0], trained[1])


def test_official_beats_batching_shares_nothing(tiny_salmonn):
    model = copy.copy(tiny_salmonn)
    model.config = dataclasses.replace(tiny_salmonn.config, beats_batching="official")
    batch = SpeechCollator()(_mixed_examples())
    ablations, keys = _ablations_and_keys(batch)
    with torch.no_grad():
        reference = encode_audio_per_ablation(model, _audio(batch), ablations)
        shared = encode_audio_shared(model, _audio(batch), ablations, keys)
    # Same path, same batches: bit for bit (the official features depend on the batch's padding).
    for got, want in zip(_rows(shared), _rows(reference)):
        assert torch.equal(got, want)


def test_long_audio_rows_share_their_chunks(tiny_salmonn, monkeypatch):
    model = copy.copy(tiny_salmonn)
    model.config = dataclasses.replace(tiny_salmonn.config, max_audio_seconds=90.0)
    rng = np.random.default_rng(2)
    long, short = 0.1 * rng.standard_normal(int(70.5 * 16000)), 0.1 * rng.standard_normal(5 * 16000)
    rows = [
        ("long", long, "none"),
        ("long", long, "zero_beats"),
        ("long", long, "none"),
        ("short", short, "zero_whisper"),
        ("long", long, "zero_audio"),
        ("short", short, "none"),
        ("long", long, "no_audio"),
    ]
    batch = SpeechCollator(max_seconds=90.0)([
        {"id": str(i), "audio": wav, "prompt": PROMPT, "text": "", "meta": {"audio_key": key}}
        for i, (key, wav, _) in enumerate(rows)
    ])
    ablations, keys = [r[2] for r in rows], [r[0] for r in rows]
    with torch.no_grad():
        reference = encode_audio_per_ablation(model, _audio(batch), ablations)
        counters = count_encoder_rows(monkeypatch, model)
        shared = encode_audio_shared(model, _audio(batch), ablations, keys)
    per_chunk = model.connector.tokens_for_frames()
    assert [t.size(0) for t in shared] == [3 * per_chunk] * 3 + [per_chunk, 3 * per_chunk, per_chunk, 0]
    _assert_rows_match(shared, reference, ablations, SHARING_ATOL)
    # Whisper: the long clip's 3 chunks (none, zero_beats) + the short clip (none); BEATs: 3 + 1;
    # Q-Former: 3 chunks x (none, zero_beats) + short x (zero_whisper, none).
    assert {name: c.rows for name, c in counters.items()} == {"whisper": 4, "beats": 4, "qformer": 8}


def test_whisper_only_model_shares_too(tmp_path):
    files = write_tiny_salmonn(tmp_path, with_beats=False)
    paths = {name: str(path) for name, path in files.items()}
    model = Salmonn(SalmonnConfig(**paths, qformer=tiny_qformer_settings(), llm_dtype="float32")).eval()
    batch = SpeechCollator()(_mixed_examples())
    ablations, keys = _ablations_and_keys(batch)
    with torch.no_grad():
        for raw in (batch["raw_wav"], None):  # a Whisper-only batch needs no waveform
            audio = AudioBatch(batch["spectrogram"], raw, batch["padding_mask"], batch["wav_lengths"])
            reference = encode_audio_per_ablation(model, audio, ablations)
            shared = encode_audio_shared(model, audio, ablations, keys)
            _assert_rows_match(shared, reference, ablations, SHARING_ATOL)


def test_a_key_shared_by_different_audio_is_an_error(tiny_salmonn):
    clips = _clips()
    batch = SpeechCollator()([
        {"id": name, "audio": clips[name], "prompt": PROMPT, "text": "", "meta": {}} for name in ("clip", "other")
    ])
    with pytest.raises(ValueError, match="rows 0 and 1 share meta audio_key 'same'"):
        encode_audio_shared(tiny_salmonn, _audio(batch), ["none", "none"], ["same", "same"])
    with pytest.raises(ValueError, match="2 spectrogram rows, 1 ablations and 2 audio_keys"):
        encode_audio_shared(tiny_salmonn, _audio(batch), ["none"], ["a", "b"])


def test_the_mixed_batch_covers_what_it_claims():
    examples = _mixed_examples()
    by_key = Counter(e["meta"].get("audio_key") for e in examples)
    assert {e["meta"]["variant_params"]["ablation"] for e in examples} == set(ABLATIONS)
    assert by_key["clip"] == 11 and by_key[None] == 3
