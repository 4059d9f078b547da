"""Every numeric setting is checked when it is built, with one short message naming it; through the CLI
the message is the first line the user sees, ``--print_config`` included, and nothing runs."""

from dataclasses import replace
from pathlib import Path

import pytest

from salmonn_pl.cli import build_cli
from salmonn_pl.generation.contrastive import ContrastiveSettings
from salmonn_pl.generation.decode import GenerationSettings
from salmonn_pl.generation.diverse_beam import DiverseBeamSettings
from salmonn_pl.generation.format_forcing import FormatForcingSettings
from salmonn_pl.generation.option_scoring import OptionScoringSettings
from salmonn_pl.generation.processors import LogitsProcessorSettings
from salmonn_pl.lit_module import SalmonnModule
from salmonn_pl.settings_check import SettingError
from salmonn_pl.training.objectives import Objectives
from salmonn_pl.training.schedule import OptimSettings

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
NAN, INF = float("nan"), float("inf")

BAD = [
    (GenerationSettings, {"num_beams": 0}, "generation.num_beams must be >= 1, got 0"),
    (GenerationSettings, {"max_new_tokens": 0}, "generation.max_new_tokens must be >= 1, got 0"),
    (GenerationSettings, {"min_length": -1}, "generation.min_length must be >= 0"),
    (GenerationSettings, {"top_p": 0.0}, "generation.top_p must be in (0, 1], got 0.0"),
    (GenerationSettings, {"top_p": 1.5}, "generation.top_p must be in (0, 1], got 1.5"),
    (GenerationSettings, {"top_k": -1}, "generation.top_k must be >= 0"),
    (GenerationSettings, {"temperature": 0.0}, "generation.temperature must be > 0, got 0.0"),
    (GenerationSettings, {"temperature": NAN}, "generation.temperature must be > 0, got nan"),
    (GenerationSettings, {"repetition_penalty": 0.0}, "generation.repetition_penalty must be > 0"),
    (GenerationSettings, {"length_penalty": INF}, "generation.length_penalty must be a finite number"),
    (GenerationSettings, {"num_return_sequences": 0}, "generation.num_return_sequences must be >= 1"),
    (GenerationSettings, {"num_beams": 2, "num_return_sequences": 3},
     "generation.num_return_sequences must be <= generation.num_beams (2)"),
    (GenerationSettings, {"num_beams": 1, "num_return_sequences": 2}, "generation.num_return_sequences must be 1 with greedy decoding; more needs beam search"),
    (GenerationSettings, {"eos_token_id": -2}, "generation.eos_token_id must be >= 0 or null"),
    (DiverseBeamSettings, {"alpha": -0.5}, "diverse_beam.alpha must be >= 0, got -0.5"),
    (DiverseBeamSettings, {"query": "mean"}, "diverse_beam.query must be one of"),
    (ContrastiveSettings, {"beta": -1.0}, "contrastive.beta must be >= 0, got -1.0"),
    (ContrastiveSettings, {"plausibility": 2.0}, "contrastive.plausibility must be in [0, 1], got 2.0"),
    (OptionScoringSettings, {"max_rows_per_forward": 0}, "option_scoring.max_rows_per_forward must be >= 1"),
    (OptionScoringSettings, {"calibration": "ratio"}, "option_scoring.calibration must be one of"),
    (FormatForcingSettings, {"force": "text"}, "format_forcing.force must be one of ('label', 'label_text')"),
    (LogitsProcessorSettings, {"encoder_repetition_penalty": 0.0},
     "logits_processors.encoder_repetition_penalty must be > 0"),
    (LogitsProcessorSettings, {"sequence_bias": {"I cannot": NAN}},
     "logits_processors.sequence_bias['I cannot'] must be a finite number"),
    (LogitsProcessorSettings, {"exponential_decay_length_penalty": (5, 0.0)},
     "logits_processors.exponential_decay_length_penalty must be [start_index >= 0, decay_factor > 0]"),
    (OptimSettings, {"lr": 0.0}, "optim.lr must be > 0, got 0.0"),
    (OptimSettings, {"lr": INF}, "optim.lr must be > 0, got inf"),
    (OptimSettings, {"min_lr": -1e-5}, "optim.min_lr must be >= 0"),
    (OptimSettings, {"warmup_start_lr": NAN}, "optim.warmup_start_lr must be >= 0"),
    (OptimSettings, {"warmup_steps": -1}, "optim.warmup_steps must be >= 0, got -1"),
    (OptimSettings, {"weight_decay": -0.1}, "optim.weight_decay must be >= 0"),
    (OptimSettings, {"betas": (0.9, 1.0)}, "optim.betas must be two numbers in [0, 1)"),
    (Objectives, {"lm_weight": -1.0}, "objectives.lm_weight must be >= 0"),
    (Objectives, {"prior_contrast_weight": NAN}, "objectives.prior_contrast_weight must be >= 0, got nan"),
    (Objectives, {"margin": INF}, "objectives.margin must be >= 0, got inf"),
    (Objectives, {"prior_contrast_kind": "kl"}, "objectives.prior_contrast_kind must be one of"),
    (Objectives, {"lm_weight": 0.0}, "objectives.lm_weight must be > 0 when prior_contrast_weight is 0 too"),
]


@pytest.mark.parametrize(("cls", "values", "message"), BAD, ids=[f"{c.__name__}-{next(iter(v))}" for c, v, _ in BAD])
def test_a_bad_setting_is_named_when_it_is_built(cls, values, message):
    with pytest.raises(SettingError) as error:
        cls(**values)
    assert str(error.value).startswith(message)
    assert isinstance(error.value, ValueError)


def test_defaults_and_edge_values_are_accepted():
    for cls in (GenerationSettings, DiverseBeamSettings, ContrastiveSettings, OptionScoringSettings,
                FormatForcingSettings, LogitsProcessorSettings, OptimSettings, Objectives):
        cls()
    GenerationSettings(top_p=1.0, top_k=0, num_beams=1, num_return_sequences=3, do_sample=True, length_penalty=-1.0)
    OptimSettings(min_lr=0.0, warmup_steps=0, weight_decay=0.0)
    ContrastiveSettings(beta=0.0, plausibility=0.0)
    LogitsProcessorSettings(exponential_decay_length_penalty=(0, 1.05), encoder_repetition_penalty=0.5)


MODEL_BAD = [
    ({"second_per_window": 0.0}, "model.second_per_window must be > 0 seconds"),
    ({"second_stride": -0.1}, "model.second_stride must be > 0 seconds"),
    ({"lora_rank": 0}, "model.lora_rank must be > 0, got 0"),
    ({"lora_alpha": 0}, "model.lora_alpha must be > 0, got 0"),
    ({"lora_dropout": 1.0}, "model.lora_dropout must be in [0, 1), got 1.0"),
    ({"max_txt_len": 0}, "model.max_txt_len must be > 0"),
    ({"num_speech_query_token": 0}, "model.num_speech_query_token must be >= 1"),
]


@pytest.mark.parametrize(("values", "message"), MODEL_BAD, ids=[next(iter(v)) for v, _ in MODEL_BAD])
def test_model_config_numbers_are_checked(tiny_config, values, message):
    with pytest.raises(SettingError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        replace(tiny_config, **values)


@pytest.mark.parametrize("scale", [-0.5, NAN, INF])
def test_lora_scale_must_be_finite_and_non_negative(tiny_config, scale):
    with pytest.raises(SettingError, match="lora_scale must be a finite number >= 0"):
        SalmonnModule(tiny_config, lora_scale=scale)


@pytest.mark.parametrize(("override", "message"), [
    (["--model.generation.num_beams", "0"], "error: model.generation.num_beams must be >= 1, got 0"),
    (["--model.model.lora_dropout", "1.5"], "error: model.model.lora_dropout must be in [0, 1), got 1.5"),
    (["--model.lora_scale", "-1"], "error: model.lora_scale must be a finite number >= 0, got -1.0"),
    (["--model.optim", "{lr: 0}"], "error: model.optim.lr must be > 0, got 0.0"),
    (["--model.decoder", "Contrastive", "--model.decoder.beta", "-1"], "error: model.decoder.beta must be >= 0, got -1.0"),
    (["--model.decoder.max_rows_per_forward", "0"], "error: model.decoder.max_rows_per_forward must be >= 1, got 0"),
], ids=["num_beams", "lora_dropout", "lora_scale", "optim_lr", "decoder_beta", "decoder_rows"])
@pytest.mark.parametrize("print_config", [True, False], ids=["print_config", "run"])
def test_cli_shows_the_short_message_first(override, message, print_config, capsys, tmp_path):
    extra = ["--print_config"] if print_config else ["--model.output_dir", str(tmp_path)]
    with pytest.raises(SystemExit) as done:
        build_cli(["test", "--config", str(DEMO), *override, *extra])
    assert done.value.code == 2
    out, err = capsys.readouterr()
    assert err.splitlines()[0] == message
    assert out == "", "nothing may be printed or run with a bad setting"
    assert not list(tmp_path.iterdir()), "nothing may be written with a bad setting"


def test_print_config_of_a_template_without_values_still_works(capsys):
    with pytest.raises(SystemExit) as done:
        build_cli(["fit", "--print_config"])
    assert done.value.code == 0
    assert "output_dir: outputs/run" in capsys.readouterr().out
    # model.model takes either family's settings; each family lists its own.
    for family, field in (("SalmonnConfig", "--model.model.lora_rank"), ("Qwen2AudioConfig", "--model.model.qwen2_audio_path")):
        with pytest.raises(SystemExit):
            build_cli(["fit", "--model.model.help", family])
        assert field in capsys.readouterr().out
