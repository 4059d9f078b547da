"""The prior-contrast objectives: their formulas, the differentiable text-only option scores, and that
optimising them moves the model the way they say."""

from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from salmonn_pl.data.multiple_choice import answer_position, parse_question
from salmonn_pl.generation.option_scoring import OptionScoringSettings, score_options
from salmonn_pl.lit_module import SalmonnModule
from salmonn_pl.model.salmonn import Salmonn
from salmonn_pl.training.objectives import Objectives, kl_to_uniform, margin_penalty, text_only_accuracy
from salmonn_pl.training.option_prior import text_only_option_logprobs

QUESTION = "Which sound do you hear? (a) high tone (b) click train (c) white noise (d) rising chirp"
THREE = "What is the source? (a) a whistle (b) a foghorn (c) a clock"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TEMPLATE = "USER: <Speech><SpeechHere></Speech> {}\nASSISTANT:"


def test_kl_to_uniform_is_the_kl_divergence_from_uniform():
    logps = torch.randn(5, 4) * 3
    lengths = torch.randint(1, 6, (5, 4))
    scores = logps / lengths
    expected = kl_divergence(Categorical(probs=torch.full((5, 4), 0.25)), Categorical(logits=scores)).mean()
    assert torch.allclose(kl_to_uniform(logps, lengths), expected, atol=1e-6)
    # No preference (equal per-token scores) is the minimum, zero.
    assert kl_to_uniform(lengths * -2.0, lengths).abs().item() < 1e-6


def test_kl_to_uniform_with_different_numbers_of_options():
    logps, lengths = torch.randn(2, 4), torch.ones(2, 4, dtype=torch.long)
    valid = torch.tensor([[True, True, True, True], [True, True, True, False]])
    logps[1, 3] = 1e6  # padding: must not count
    separate = (kl_to_uniform(logps[:1], lengths[:1]) + kl_to_uniform(logps[1:, :3], lengths[1:, :3])) / 2
    assert torch.allclose(kl_to_uniform(logps, lengths, valid), separate, atol=1e-6)


def test_margin_penalty_is_zero_once_the_audio_adds_the_margin():
    n = torch.tensor([2, 4])
    logp_text = torch.tensor([-4.0, -8.0])
    penalty, gain = margin_penalty(logp_text + n * 0.5, logp_text, n, margin=0.5)
    assert penalty.item() == 0.0 and gain.item() == pytest.approx(0.5)
    penalty, gain = margin_penalty(logp_text, logp_text, n, margin=0.5)
    assert penalty.item() == pytest.approx(0.5) and gain.item() == 0.0


def test_objectives_reject_bad_settings():
    with pytest.raises(ValueError, match="prior_contrast_kind"):
        Objectives(prior_contrast_kind="uniform")
    with pytest.raises(ValueError, match="margin"):
        Objectives(margin=-1.0)
    with pytest.raises(ValueError, match="nothing would be trained"):
        Objectives(lm_weight=0.0)


def test_text_only_option_scores_match_option_scoring(tiny_salmonn):
    prompts = [TEMPLATE.format(QUESTION), TEMPLATE.format("Describe the sound."), TEMPLATE.format(THREE)]
    questions = [QUESTION, "Describe the sound.", THREE]
    targets = ["(b) click train", "a click train", "(c) a clock"]
    with torch.no_grad():
        scores = text_only_option_logprobs(tiny_salmonn, prompts, questions, targets)
    assert scores.rows == [0, 2], "a question without options is left out"
    assert scores.valid.tolist() == [[True] * 4, [True, True, True, False]]
    assert scores.answers.tolist() == [1, 2]
    reference = score_options(tiny_salmonn, [prompts[0], prompts[2]], [QUESTION, THREE], None,
                              OptionScoringSettings(length_normalization="none"))
    for q, ref in enumerate(reference):
        k = len(ref.audio_loglik)
        assert torch.allclose(scores.logps[q, :k], torch.tensor(ref.audio_loglik), atol=1e-4)
    assert text_only_option_logprobs(tiny_salmonn, prompts[1:2], questions[1:2], targets[1:2]) is None


def test_answer_position_needs_an_existing_option():
    options = parse_question(QUESTION).options
    assert answer_position("(b) click train", options) == 1
    assert answer_position("(b) white noise", options) == -1
    assert answer_position("(e) click train", options) == -1
    assert answer_position("click train", options) == -1


def test_text_only_accuracy_ignores_unknown_answers():
    logps = torch.tensor([[0.0, -1.0], [-1.0, 0.0], [0.0, -1.0]])
    valid = torch.ones(3, 2, dtype=torch.bool)
    lengths = torch.ones(3, 2)
    assert text_only_accuracy(logps, lengths, valid, torch.tensor([0, 0, -1])).item() == 0.5
    assert text_only_accuracy(logps, lengths, valid, torch.tensor([-1, -1, -1])) is None


def _batch(synthetic_task):
    from salmonn_pl.data.annotation_datamodule import AnnotationDataModule

    datamodule = AnnotationDataModule(str(synthetic_task.train_annotation), prompt_path=str(synthetic_task.prompt_path),
                                      audio_root=str(synthetic_task.root), batch_size=4)
    datamodule.setup("fit")
    return next(iter(datamodule.train_dataloader()))


@pytest.mark.parametrize("kind", ["margin", "kl_uniform"])
def test_losses_log_every_term_and_train_the_adapter(tiny_config, synthetic_task, kind):
    module = SalmonnModule(tiny_config, objectives=Objectives(lm_weight=0.5, prior_contrast_weight=2.0,
                                                              prior_contrast_kind=kind))
    module.configure_model()
    losses = module._losses(_batch(synthetic_task))
    extra = {"margin": {"audio_gain"}, "kl_uniform": {"text_only_acc", "text_only_known"}}[kind]
    assert set(losses) == {"loss", "loss_lm", "loss_prior"} | extra
    assert torch.allclose(losses["loss"], 0.5 * losses["loss_lm"] + 2.0 * losses["loss_prior"])
    losses["loss_prior"].backward()
    lora_grads = [p.grad for n, p in module.salmonn.llm.named_parameters() if "lora_" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in lora_grads), f"{kind}: no gradient reaches LoRA"


def test_kl_uniform_training_removes_the_text_prior(tiny_config):
    """Plant a text prior (fit the answers without audio), then optimise the KL term alone: the
    text-only option distribution goes back toward uniform."""
    torch.manual_seed(0)
    salmonn = Salmonn(tiny_config)
    salmonn.llm.eval()  # no dropout: the changes are the optimiser's doing
    questions, answers = [QUESTION, THREE], ["(b) click train", "(c) a clock"]
    prompts = [TEMPLATE.format(q) for q in questions]
    trainable = [p for p in salmonn.parameters() if p.requires_grad]

    def text_only() -> tuple[torch.Tensor, torch.Tensor | None]:
        scores = text_only_option_logprobs(salmonn, prompts, questions, answers)
        accuracy = text_only_accuracy(scores.logps.detach(), scores.lengths, scores.valid, scores.answers)
        return kl_to_uniform(scores.logps, scores.lengths, scores.valid), accuracy

    def optimise(loss_fn, steps: int) -> None:
        optimizer = torch.optim.Adam(trainable, lr=1e-2)
        for _ in range(steps):
            optimizer.zero_grad()
            loss_fn().backward()
            optimizer.step()

    def lm_text_only() -> torch.Tensor:
        inputs = salmonn.assemble(prompts, None, answers)
        logp, n = salmonn.target_logprobs(salmonn.llm_logits(inputs), inputs.labels)
        return -logp.sum() / n.sum()

    optimise(lm_text_only, 15)
    planted, planted_accuracy = text_only()
    optimise(lambda: text_only()[0], 15)
    removed, _ = text_only()
    assert planted_accuracy.item() == 1.0, "the planted prior should pick the trained answers"
    assert removed.item() < planted.item() / 4, (planted.item(), removed.item())


def test_debias_recipe_parses(tmp_path):
    from salmonn_pl.cli import build_cli

    cli = build_cli(["--config", str(CONFIGS / "debias.yaml"), "--model.output_dir", str(tmp_path)], run=False)
    assert cli.model.objectives.prior_contrast_weight > 0
    assert asdict(cli.model.objectives)["prior_contrast_kind"] in ("margin", "kl_uniform")
    assert cli.datamodule.shuffle_options


def test_kl_to_uniform_leaves_out_questions_without_options():
    logps = torch.randn(3, 4, requires_grad=True)
    lengths = torch.ones(3, 4)
    valid = torch.tensor([[True, True, True, True], [False] * 4, [True, True, False, False]])
    with_empty = kl_to_uniform(logps, lengths, valid)
    kept = torch.tensor([0, 2])
    assert torch.isfinite(with_empty)
    assert torch.allclose(with_empty, kl_to_uniform(logps[kept], lengths[kept], valid[kept]))
    with_empty.backward()
    assert torch.isfinite(logps.grad).all() and logps.grad[1].abs().sum() == 0

    none = kl_to_uniform(logps, lengths, torch.zeros(3, 4, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad, "no question with options: zero, kept in the graph"
