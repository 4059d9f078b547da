"""SALMONN behind the model-family interface gives the numbers of its native path: the same answers
from the decoders, the same option scores, for clips, text-only rows and captions."""

from __future__ import annotations

import pytest

from salmonn_pl.cli import build_cli
from salmonn_pl.data.datamodule import SakuraDataModule
from salmonn_pl.data.variants import Variant
from salmonn_pl.generation.decoder import Generate, OptionScoring
from salmonn_pl.generation.salmonn_family import SalmonnFamily
from salmonn_pl.model.family import questions_from_batch
from tests.helpers.cli_runs import DEMO_SAKURA, REPO


@pytest.fixture(scope="module")
def module():
    cli = build_cli(["--config", str(REPO / "configs" / "demo.yaml"), "--model.generation.max_new_tokens", "8"],
                    run=False)
    cli.model.configure_model()
    return cli.model.eval()


@pytest.fixture(scope="module")
def batch():
    data = SakuraDataModule(DEMO_SAKURA, tracks=["Synthetic"], limit=2, batch_size=8,
                            variants=[Variant(), Variant(pad_seconds=6.0, pad_fill="noise", pad_position="late"),
                                      Variant(ablation="no_audio"), Variant(text_caption=True)],
                            caption_templates={"Synthetic": "The sound is described as: {label}."})
    data.setup("test")
    return next(iter(data.test_dataloader()))


@pytest.mark.parametrize("num_beams", [1, 4])
def test_generated_answers_are_the_native_paths(module, batch, num_beams):
    module.generation = module.generation.__class__(num_beams=num_beams, max_new_tokens=8)
    module.decoder = Generate()
    native = [a["response"] for a in module.answer(batch)]
    family = SalmonnFamily(module.salmonn)
    asked = questions_from_batch(batch, module.row_ablations(batch))
    assert any(q.caption for q in asked) and any(q.clip is None and not q.caption for q in asked)
    answers = Generate().answer_family(family, asked, list(batch["id"]), module.generation)
    assert [a["response"] for a in answers] == native


def test_option_scores_are_the_native_paths(module, batch):
    decoder = OptionScoring(calibration="pmi", permutations="cyclic")
    module.decoder = decoder
    native = module.answer(batch)
    family = decoder.answer_family(SalmonnFamily(module.salmonn), questions_from_batch(batch, module.row_ablations(batch)),
                                   list(batch["id"]), module.generation)
    assert [a["response"] for a in family] == [a["response"] for a in native]
    for ours, theirs in zip(family, native):
        for label, score in theirs["option_scores"]["option_scores"].items():
            assert ours["option_scores"]["option_scores"][label] == pytest.approx(score, abs=1e-4)


def test_calibration_of_a_caption_row_is_against_the_question_without_the_caption(module, batch):
    """PMI of a text-control row: log p(option | caption, question) - log p(option | question). Were the
    caption kept in the text-only pass, both passes would be the same prompt and every score 0."""
    module.decoder = OptionScoring(calibration="pmi")
    answers = module.answer(batch)
    for meta, answer in zip(batch["meta"], answers):
        scores = list(answer["option_scores"]["option_scores"].values())
        if meta.get("caption"):
            assert max(abs(s) for s in scores) > 1e-2, scores
        elif meta["variant_params"]["ablation"] == "no_audio":
            assert max(abs(s) for s in scores) < 1e-5  # nothing but the question either way
