"""Per-step random streams, so that a resumed run draws the same dropout masks as an uninterrupted one.

Dropout (LoRA, Q-Former) draws from the global generator, whose state a Lightning checkpoint does not
hold, and anything else that draws from it (sanity-check validation, a worker start) would shift the
masks. Each training micro-batch therefore runs its forward pass in a forked generator seeded from
``(run seed, rank, epoch, batch index)``: its masks depend on nothing else, and the global stream
is left as it was. Backward needs no random numbers (the masks are saved by autograd).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch


def step_seed(run_seed: int, rank: int, epoch: int, batch_idx: int) -> int:
    """A 63-bit seed that depends only on its arguments (well mixed, unlike ``run_seed + step``)."""
    state = np.random.SeedSequence([run_seed % 2**63, rank, epoch, batch_idx]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with the CPU generator (and ``device``'s, for an accelerator) seeded by ``seed``;
    the previous states are restored afterwards."""
    accelerator = device.type not in ("cpu", "meta")
    devices = [device] if accelerator else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if accelerator else "cuda"):
        torch.random.default_generator.manual_seed(seed)
        if accelerator:
            torch.get_device_module(device.type).manual_seed(seed)
        yield
