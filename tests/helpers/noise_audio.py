"""Audio tokens of noise clips for the decoding tests (a module of its own: spawned processes and
other test directories must not resolve it to a different conftest)."""

import numpy as np
import torch

from salmonn_pl.data.collate import AudioBatch, SpeechCollator


def noise_audio_tokens(salmonn, n: int, seed: int) -> torch.Tensor:
    """``[n, tokens, width]`` audio tokens of ``n`` white-noise clips of 1, 1.5, 2, ... s."""
    rng = np.random.default_rng(seed)
    examples = [
        {"id": str(i), "audio": 0.1 * rng.standard_normal(8000 * (i + 2)), "prompt": "<SpeechHere>", "text": "", "meta": {}}
        for i in range(n)
    ]
    batch = SpeechCollator()(examples)
    with torch.no_grad():
        return salmonn.encode_audio(AudioBatch.of(batch))["audio_tokens"]
