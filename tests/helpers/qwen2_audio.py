"""The bundled tiny Qwen2-Audio (assets/tiny-qwen2-audio) and questions about noise clips for its tests."""

from __future__ import annotations

import numpy as np
import torch

from salmonn_pl.model.family import FamilyQuestion
from tests.helpers.cli_runs import REPO

TINY_QWEN = REPO / "assets" / "tiny-qwen2-audio"
QUESTIONS = ["Which animal makes this sound? (a) dog (b) cat (c) frog (d) hen",
             "What is the speaker's emotion? (a) happy (b) sad (c) angry (d) neutral"]


def noise_questions(seed: int, samples: tuple[int, ...] = (16000, 40000)) -> list[FamilyQuestion]:
    """:data:`QUESTIONS` about clips of white noise of ``samples`` lengths (1 s and 2.5 s at 16 kHz)."""
    rng = np.random.default_rng(seed)
    clips = [torch.from_numpy(rng.standard_normal(n).astype(np.float32) * 0.1) for n in samples]
    return [FamilyQuestion(text=q, clip=c) for q, c in zip(QUESTIONS, clips)]
