"""The attention-position probe on Qwen2-Audio: every row of a batch gets the profile it gets alone,
on the family's own time axis (one audio token per 40 ms of the clip as the variant made it)."""

from __future__ import annotations

import pytest
import torch

from salmonn_pl.data.datamodule import SakuraDataModule
from salmonn_pl.data.variants import Variant
from salmonn_pl.lit_module import select_rows
from salmonn_pl.model.qwen2_audio import Qwen2Audio
from salmonn_pl.probes.attention import profile_family_batch
from tests.helpers.cli_runs import DEMO_SAKURA


@pytest.fixture(scope="module")
def batch():
    data = SakuraDataModule(DEMO_SAKURA, tracks=["Synthetic"], limit=2, batch_size=6,
                            variants=[Variant(), Variant(pad_seconds=6.0, pad_position="late", pad_fill="noise"),
                                      Variant(ablation="no_audio")])
    data.setup("test")
    return next(iter(data.test_dataloader()))


@pytest.mark.parametrize("answers", ["reference", "generated"])
def test_each_row_profiles_as_alone_on_the_families_time_axis(qwen, batch, answers):
    profiles = profile_family_batch(qwen, batch, answers=answers)
    heard = [i for i, meta in enumerate(batch["meta"]) if meta["variant_params"]["ablation"] != "no_audio"]
    assert [p.id for p in profiles] == [batch["id"][i] for i in heard]  # text-only rows have no audio to look at
    for profile, i in zip(profiles, heard):
        (alone,) = profile_family_batch(qwen, select_rows(batch, [i]), answers=answers)
        assert profile.answer_ids == alone.answer_ids
        torch.testing.assert_close(profile.prompt_mass, alone.prompt_mass, atol=1e-5, rtol=0)
        torch.testing.assert_close(profile.answer_mass, alone.answer_mass, atol=1e-5, rtol=0)
        seconds = int(batch["clip_lengths"][i]) / 16000
        assert profile.audio_seconds == pytest.approx(seconds)
        assert len(profile.seconds) == Qwen2Audio.num_audio_tokens(int(batch["clip_lengths"][i]))
        assert torch.allclose(profile.seconds[:2], torch.tensor([0.02, 0.06]))
        assert profile.seconds[-1] < seconds
        # Attention probabilities: what the last prompt token pays to the audio is a share of 1.
        assert 0 < float(profile.prompt_mass.sum(-1).max()) <= 1
    padded = next(p for p in profiles if p.variant.startswith("pad6s"))
    start, end = padded.clip_span
    assert start > 0 and end == pytest.approx(6.0)  # the clip sits late in the padding
    regions = padded.regions(padded.prompt_mass.mean(0))
    assert regions["clip"]["tokens"] + regions["padding"]["tokens"] == len(padded.seconds)
