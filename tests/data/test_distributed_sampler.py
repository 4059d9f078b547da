"""Under DDP each rank evaluates a contiguous block of the clip-ordered examples, so that a clip's
questions stay on one rank and share its encoding there."""

import pytest
from tests.helpers.golden import SAKURA_MINI
from torch.utils.data import DistributedSampler

from salmonn_pl.data.datamodule import ContiguousDistributedSampler, SakuraDataModule
from salmonn_pl.data.variants import Variant

needs_mini = pytest.mark.skipif(not SAKURA_MINI.is_dir(), reason=f"no sakura-mini at {SAKURA_MINI}")


@pytest.mark.parametrize(("size", "ranks"), [(7, 2), (8, 2), (5, 4), (2, 3), (12, 3)])
def test_blocks_cover_every_example_like_the_default_sampler(size, ranks):
    dataset = list(range(size))
    blocks = [list(ContiguousDistributedSampler(dataset, num_replicas=ranks, rank=r)) for r in range(ranks)]
    default = [list(DistributedSampler(dataset, num_replicas=ranks, rank=r, shuffle=False)) for r in range(ranks)]

    # Same number of examples per rank and the same examples overall (repeats included) as Lightning's default.
    assert [len(b) for b in blocks] == [len(d) for d in default]
    assert sorted(i for b in blocks for i in b) == sorted(i for d in default for i in d)
    # Each rank's examples are consecutive, and the blocks follow each other in order.
    flat = [i for b in blocks for i in b]
    assert flat[:size] == dataset
    assert set(flat[size:]) <= set(dataset)


@needs_mini
def test_a_clips_questions_stay_on_one_rank():
    dm = SakuraDataModule(SAKURA_MINI, tracks=["Animal"], limit=6, variants=[Variant(), Variant(ablation="zero_beats")])
    dm.setup()
    dataset = dm.dataset
    rank_of_example = {}
    for rank in range(2):
        for index in ContiguousDistributedSampler(dataset, num_replicas=2, rank=rank):
            rank_of_example.setdefault(index, rank)
    ranks_of_clip: dict[str, set[int]] = {}
    for index, rank in rank_of_example.items():
        ranks_of_clip.setdefault(dataset[index]["meta"]["audio_key"], set()).add(rank)
    # 6 clips x 2 hops x 2 conditions = 24 examples, 12 per rank: no clip is split.
    assert len(ranks_of_clip) == 6
    assert all(len(ranks) == 1 for ranks in ranks_of_clip.values())
    # Lightning's default deals adjacent examples to different ranks, splitting every clip.
    default = {i: r for r in range(2) for i in DistributedSampler(dataset, num_replicas=2, rank=r, shuffle=False)}
    split = {dataset[i]["meta"]["audio_key"] for i in default if default[i] != default[i ^ 1]}
    assert len(split) == 6
