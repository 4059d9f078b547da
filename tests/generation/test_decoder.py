"""Decoders chosen by class (``model.decoder``): short names resolve, settings are typed and checked,
and each decoder answers exactly as the decoding function it wraps."""

import dataclasses
from typing import Optional

import pytest
from jsonargparse import ArgumentParser
from tests.helpers.noise_audio import noise_audio_tokens

from salmonn_pl.generation.contrastive import ContrastiveSettings, contrastive_generate
from salmonn_pl.generation.decode import GenerationSettings
from salmonn_pl.generation.decoder import Contrastive, Decoder, DecodeInputs, DiverseBeam, Generate, OptionScoring
from salmonn_pl.generation.diverse_beam import DiverseBeamSettings, diverse_beam_generate
from salmonn_pl.generation.generate import generate
from salmonn_pl.generation.option_scoring import OptionScoringSettings, score_options
from salmonn_pl.lit_module import SalmonnModule
from salmonn_pl.settings_check import SettingError

TEMPLATE = "USER: <Speech><SpeechHere></Speech> {}\nASSISTANT:"
QUESTIONS = [
    "What animal makes the sound in the audio? (a) dog (b) cat (c) cow (d) pig",
    "Which emotion does the speaker express? (a) happy (b) sad (c) angry",
]
PROMPTS = [TEMPLATE.format(q) for q in QUESTIONS]


def _parse(*args: str) -> Decoder:
    parser = ArgumentParser()
    parser.add_argument("--decoder", type=Optional[Decoder], default=None)
    return parser.instantiate(parser.parse_args(list(args))).decoder


@pytest.mark.parametrize("name, cls", [("Generate", Generate), ("DiverseBeam", DiverseBeam),
                                       ("Contrastive", Contrastive), ("OptionScoring", OptionScoring)])
def test_short_class_names_select_the_decoder(name, cls):
    assert type(_parse("--decoder", name)) is cls


def test_settings_are_init_arguments():
    decoder = _parse("--decoder", "OptionScoring", "--decoder.calibration", "pmi", "--decoder.permutations", "cyclic")
    assert decoder.settings() == OptionScoringSettings(calibration="pmi", permutations="cyclic")
    assert _parse("--decoder", "Contrastive", "--decoder.beta", "2").settings() == ContrastiveSettings(beta=2.0)


@pytest.mark.parametrize("decoder, settings", [(DiverseBeam(), DiverseBeamSettings()), (Contrastive(), ContrastiveSettings()),
                                               (OptionScoring(), OptionScoringSettings())])
def test_decoder_defaults_are_the_settings_defaults(decoder, settings):
    assert decoder.settings() == settings


def test_a_bad_setting_names_its_key():
    with pytest.raises(SettingError, match=r"^decoder.beta must be >= 0, got -1.0$"):
        Contrastive(beta=-1.0)
    with pytest.raises(SettingError, match=r"^decoder.calibration must be one of"):
        OptionScoring(calibration="bogus")
    with pytest.raises(SettingError, match=r"^decoder.alpha must be >= 0"):
        DiverseBeam(alpha=-0.5)


def test_the_module_keeps_the_decoder_as_plain_settings(tiny_config):
    module = SalmonnModule(tiny_config, decoder=Contrastive(beta=2.0))
    expected = {"class_path": "salmonn_pl.generation.decoder.Contrastive", "init_args": {"beta": 2.0, "plausibility": 0.1}}
    assert module.hparams["decoder"] == expected  # checkpoints hold no objects
    assert module.answer_fingerprint()["module"]["decoder"] == expected
    assert type(SalmonnModule(tiny_config).decoder) is Generate


def _inputs(audio, generation: GenerationSettings) -> DecodeInputs:
    return DecodeInputs(PROMPTS, QUESTIONS, audio, ["q0", "q1"], "left", generation)


def _texts(salmonn, sequences) -> list[str]:
    return [salmonn.tokenizer.decode(s, skip_special_tokens=True).strip() for s in sequences]


def test_each_decoder_answers_as_its_decoding_function(tiny_salmonn):
    audio = noise_audio_tokens(tiny_salmonn, len(PROMPTS), seed=5)
    greedy = GenerationSettings(max_new_tokens=6, num_beams=1)
    beams = GenerationSettings(max_new_tokens=6, num_beams=3, num_return_sequences=2)

    plain = generate(tiny_salmonn, PROMPTS, audio, greedy).sequences
    assert [a["response"] for a in Generate().answer(tiny_salmonn, _inputs(audio, greedy))] == _texts(tiny_salmonn, plain)

    settings = ContrastiveSettings(beta=1.5, plausibility=0.2)
    contrast = contrastive_generate(tiny_salmonn, PROMPTS, audio, greedy, settings).sequences
    answers = Contrastive(**dataclasses.asdict(settings)).answer(tiny_salmonn, _inputs(audio, greedy))
    assert [a["response"] for a in answers] == _texts(tiny_salmonn, contrast)

    diverse = DiverseBeamSettings(alpha=0.5)
    texts = _texts(tiny_salmonn, diverse_beam_generate(tiny_salmonn, PROMPTS, audio, beams, diverse).sequences)
    answers = DiverseBeam(alpha=0.5).answer(tiny_salmonn, _inputs(audio, beams))
    assert [[a["response"], *a["alternatives"]] for a in answers] == [texts[0:2], texts[2:4]]

    scores = score_options(tiny_salmonn, PROMPTS, QUESTIONS, audio, OptionScoringSettings(), ids=["q0", "q1"])
    answers = OptionScoring().answer(tiny_salmonn, _inputs(audio, greedy))
    assert answers == [{"response": s.choice, "option_scores": s.to_record()} for s in scores]
    assert not OptionScoring.generates_text and Generate.generates_text
