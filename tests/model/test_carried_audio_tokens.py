"""An evaluation run carries the audio tokens of one batch into the next: a clip whose questions
straddle two batches is encoded once, and each row still gets the tokens of its own encoding."""

import numpy as np
import torch
from tests.helpers.encoder_counts import count_encoder_rows

from salmonn_pl.data.collate import AudioBatch, SpeechCollator
from salmonn_pl.lit_module import SalmonnModule
from salmonn_pl.model.audio_encoding import CarriedAudioTokens, encode_audio_per_ablation, encode_audio_shared

PROMPT = "USER: <Speech><SpeechHere></Speech> Which sound is it? (a) tone (b) noise\nASSISTANT:"
ATOL = 1e-6  # differently composed encoder batches may round differently (fp32)


def _clips() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {name: 0.1 * rng.standard_normal(int(seconds * 16000)) for name, seconds in
            (("clip", 1.5), ("other", 2.0), ("new", 1.2))}


def _batch(rows: list[tuple[str, str]], clips: dict[str, np.ndarray]) -> dict:
    examples = [
        {"id": f"{key}/{i}", "audio": clips[key], "prompt": PROMPT, "text": "(a) tone",
         "meta": {"variant_params": {"ablation": ablation}, "audio_key": key}}
        for i, (key, ablation) in enumerate(rows)
    ]
    return SpeechCollator()(examples)


def _encode(model, batch: dict, carry: CarriedAudioTokens | None):
    """Tokens of the shared path (with ``carry``) and of the row-by-row reference path."""
    shared = _encode_shared(model, batch, carry)
    with torch.no_grad():
        reference = encode_audio_per_ablation(model, AudioBatch.of(batch), [m["variant_params"]["ablation"] for m in batch["meta"]])
    return shared, reference


def _encode_shared(model, batch: dict, carry: CarriedAudioTokens | None):
    ablations = [m["variant_params"]["ablation"] for m in batch["meta"]]
    keys = [m["audio_key"] for m in batch["meta"]]
    with torch.no_grad():
        return encode_audio_shared(model, AudioBatch.of(batch), ablations, keys, carry=carry)


def _assert_close(shared, reference) -> None:
    assert len(shared) == len(reference)
    for got, want in zip(shared, reference):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_a_clip_straddling_two_batches_is_encoded_once(tiny_salmonn, monkeypatch):
    clips = _clips()
    first = _batch([("clip", "none"), ("clip", "zero_beats"), ("other", "none")], clips)
    second = _batch([("clip", "none"), ("clip", "zero_whisper"), ("new", "none")], clips)
    carry = CarriedAudioTokens()
    _encode(tiny_salmonn, first, carry)
    assert set(carry.tokens) == {("clip", "none"), ("clip", "zero_beats"), ("other", "none")}

    counters = count_encoder_rows(monkeypatch, tiny_salmonn)
    shared = _encode_shared(tiny_salmonn, second, carry)
    # ("clip", "none") came from the first batch: Whisper only for "new", BEATs for the clip's
    # zero_whisper row and "new", the Q-Former for those two (audio, ablation) pairs.
    assert {name: c.rows for name, c in counters.items()} == {"whisper": 1, "beats": 2, "qformer": 2}
    reference = _encode(tiny_salmonn, second, None)[1]
    _assert_close(shared, reference)
    # The carry now holds this batch's tokens only.
    assert set(carry.tokens) == {("clip", "none"), ("clip", "zero_whisper"), ("new", "none")}


def test_a_key_with_other_samples_is_encoded_again(tiny_salmonn, monkeypatch):
    clips = _clips()
    carry = CarriedAudioTokens()
    _encode(tiny_salmonn, _batch([("clip", "none")], clips), carry)
    # Same key, other waveform (another benchmark copy, say): the carried tokens must not serve it.
    changed = dict(clips, clip=clips["clip"] * 0.5)
    counters = count_encoder_rows(monkeypatch, tiny_salmonn)
    shared = _encode_shared(tiny_salmonn, _batch([("clip", "none")], changed), carry)
    assert counters["whisper"].rows == 1
    _assert_close(shared, _encode(tiny_salmonn, _batch([("clip", "none")], changed), None)[1])
    old = _encode(tiny_salmonn, _batch([("clip", "none")], clips), None)[1]
    assert not torch.allclose(shared[0], old[0])


def test_without_a_carry_nothing_is_reused(tiny_salmonn, monkeypatch):
    clips = _clips()
    batch = _batch([("clip", "none")], clips)
    _encode_shared(tiny_salmonn, batch, None)
    counters = count_encoder_rows(monkeypatch, tiny_salmonn)
    _encode_shared(tiny_salmonn, batch, None)
    assert counters["whisper"].rows == 1


def test_the_module_carries_tokens_in_evaluation_and_forgets_them_on_a_mode_switch(tiny_config, tiny_salmonn, monkeypatch):
    module = SalmonnModule(tiny_config)
    module.salmonn = tiny_salmonn
    batch = _batch([("clip", "none"), ("other", "none")], _clips())
    counters = count_encoder_rows(monkeypatch, tiny_salmonn)
    module.eval()
    with torch.no_grad():
        module.encode(batch)
        assert counters["whisper"].rows == 2
        module.encode(batch)  # the next batch repeats both clips: nothing to encode
        assert counters["whisper"].rows == 2 and len(module.carried_audio.tokens) == 2
        module.train()  # training changes the weights the carried tokens came from
        assert module.carried_audio.tokens == {}
        module.eval()
        module.encode(batch)
    assert counters["whisper"].rows == 4
