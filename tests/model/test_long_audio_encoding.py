"""Audio beyond Whisper's 30 s: chunked encoding and variable audio-token counts per row."""

import copy

import numpy as np
import torch

from salmonn_pl.data.collate import AudioBatch, SpeechCollator
from salmonn_pl.generation.generate import generate

PROMPT = "USER: <Speech><SpeechHere></Speech> Which sound is it? (a) tone (b) noise\nASSISTANT:"


def _batch(seconds: list[float], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    examples = [{"id": str(i), "audio": rng.standard_normal(int(s * 16000)) * 0.1, "prompt": PROMPT, "text": "(a) tone", "meta": {}} for i, s in enumerate(seconds)]
    return SpeechCollator()(examples)


def test_chunked_path_equals_30s_path_under_30s(tiny_salmonn):
    batch = _batch([3.0, 12.5, 29.0])
    with torch.no_grad():
        plain = tiny_salmonn.encode_audio(AudioBatch.of(batch))
        chunked = tiny_salmonn.encode_long_audio(batch["raw_wav"], batch["wav_lengths"])
    assert chunked["chunks_per_clip"].tolist() == [1, 1, 1]
    for i, tokens in enumerate(chunked["audio_tokens"]):
        torch.testing.assert_close(tokens, plain["audio_tokens"][i], atol=1e-5, rtol=0)


def test_long_clip_gets_one_token_block_per_chunk(tiny_salmonn):
    model = copy.deepcopy(tiny_salmonn)
    model.config.max_audio_seconds = 90.0
    rng = np.random.default_rng(1)
    long = rng.standard_normal(int(70 * 16000)) * 0.1
    short = rng.standard_normal(int(5 * 16000)) * 0.1
    collate = SpeechCollator(max_seconds=90.0)
    batch = collate([
        {"id": "long", "audio": long, "prompt": PROMPT, "text": "", "meta": {}},
        {"id": "short", "audio": short, "prompt": PROMPT, "text": "", "meta": {}},
    ])
    with torch.no_grad():
        out = model.encode_audio(AudioBatch.of(batch))
        tail = collate([{"id": "tail", "audio": long[60 * 16000 :], "prompt": PROMPT, "text": "", "meta": {}}])
        tail_tokens = model.encode_audio(AudioBatch.of(tail))["audio_tokens"][0]
    per_chunk = model.connector.tokens_for_frames()
    assert [t.shape[0] for t in out["audio_tokens"]] == [3 * per_chunk, per_chunk]
    # The third chunk of the long clip is encoded exactly like that 10 s tail on its own.
    torch.testing.assert_close(out["audio_tokens"][0][2 * per_chunk :], tail_tokens, atol=1e-5, rtol=0)

    inputs = model.assemble(batch["prompt"], out["audio_tokens"])
    assert inputs.audio_mask.sum(1).tolist() == [3 * per_chunk, per_chunk]
    result = generate(model, batch["prompt"], out["audio_tokens"], __import__("salmonn_pl.generation.decode", fromlist=["x"]).GenerationSettings(max_new_tokens=4, num_beams=1))
    assert len(result.sequences) == 2


def test_audio_is_capped_at_max_audio_seconds(tiny_salmonn):
    model = copy.deepcopy(tiny_salmonn)
    model.config.max_audio_seconds = 60.0
    batch = SpeechCollator(max_seconds=120.0)([{"id": "x", "audio": np.zeros(100 * 16000) + 0.01, "prompt": PROMPT, "text": "", "meta": {}}])
    with torch.no_grad():
        out = model.encode_audio(AudioBatch.of(batch))
    assert out["chunks_per_clip"].tolist() == [2]
