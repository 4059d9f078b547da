"""SAKURA's text-based control: the ``text_caption`` variant reads the clip's attribute instead of hearing it."""

from pathlib import Path

import numpy as np
import pytest
from jsonargparse import ArgumentParser
from tests.helpers.golden import SAKURA_MINI

from salmonn_pl.data.datamodule import DEFAULT_CAPTION_TEMPLATES, SakuraDataModule
from salmonn_pl.data.variants import Variant, VariantSweep, resolve_variants

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO = REPO_ROOT / "assets" / "demo-sakura"
needs_mini = pytest.mark.skipif(not SAKURA_MINI.is_dir(), reason=f"no sakura-mini at {SAKURA_MINI}")


def test_a_caption_variant_hears_nothing_and_keeps_the_clips_audio_key():
    variant = Variant(text_caption=True)
    assert variant.name == "text_caption"
    assert variant.ablation == "no_audio" and variant.params()["ablation"] == "no_audio"
    assert Variant(text_caption=True, ablation="no_audio") == variant
    assert variant.audio_key("Gender/f1.wav") == Variant().audio_key("Gender/f1.wav") == "Gender/f1.wav"
    assert Variant(text_caption=True, strip_options=True).name == "no_options-text_caption"


@pytest.mark.parametrize("ablation", ["zero_audio", "zero_beats", "zero_whisper"])
def test_a_caption_variant_with_another_ablation_is_an_error(ablation: str):
    with pytest.raises(ValueError, match=f"text_caption.*no_audio.*{ablation}"):
        Variant(text_caption=True, ablation=ablation)


@pytest.mark.parametrize("settings", [{"pad_seconds": 15.0}, {"long_audio_seconds": 60.0}])
def test_a_caption_variant_with_audio_settings_is_an_error(settings: dict):
    with pytest.raises(ValueError, match="text_caption.*leave them null"):
        Variant(text_caption=True, **settings)


def test_sweep_adds_one_caption_control_per_question_form():
    sweep = VariantSweep(pad_seconds=[None, 15.0], pad_position=["early", "late"], ablation=["none", "zero_audio"],
                         strip_options=[False, True], text_caption=[False, True])
    variants = {v.name: v for v in sweep.expand()}
    captions = [name for name, v in variants.items() if v.text_caption]
    # Padding and ablations collapse for a caption: one per question form (with and without options).
    assert captions == ["text_caption", "no_options-text_caption"]
    assert all(variants[n].ablation == "no_audio" and variants[n].pad_seconds is None for n in captions)
    audio = [name for name, v in variants.items() if not v.text_caption]
    assert "original" in audio and "pad15s-zero-late-no_options-zero_audio" in audio and len(audio) == 12
    assert [v.name for v in resolve_variants(None, VariantSweep(text_caption=[False, True]))] == ["original", "text_caption"]


def _demo_module(**kwargs) -> SakuraDataModule:
    return SakuraDataModule(DEMO, tracks=["Synthetic"], hops=["single"], limit=2, **kwargs)


def test_caption_prompt_and_meta_on_the_demo_track():
    dm = _demo_module(variants=[Variant(), Variant(text_caption=True)],
                      caption_templates={"Synthetic": "The sound is a {label}."})
    dm.setup()
    examples = [dm.dataset[i] for i in range(len(dm.dataset))]
    assert [e["meta"]["variant"] for e in examples] == ["original", "text_caption"] * 2
    for audio, caption in zip(examples[::2], examples[1::2]):
        label = audio["meta"]["label"]
        assert caption["meta"]["caption"] == f"The sound is a {label}."
        assert "caption" not in audio["meta"]
        question = audio["meta"]["question"]
        assert audio["prompt"] == f"USER: <Speech><SpeechHere></Speech> {question}\nASSISTANT:"
        assert caption["prompt"] == f"USER: <Speech>The sound is a {label}.<SpeechHere></Speech> {question}\nASSISTANT:"
        assert caption["meta"]["variant_params"]["ablation"] == "no_audio"
        assert caption["meta"]["variant_params"]["text_caption"] is True
        assert audio["meta"]["variant_params"]["text_caption"] is False
        # The same clip, the same key: a shared encoding stays right (and a no_audio row encodes nothing).
        assert caption["meta"]["audio_key"] == audio["meta"]["audio_key"]
        np.testing.assert_array_equal(caption["audio"], audio["audio"])
    assert [e["meta"]["label"] for e in examples[::2]] == ["falling chirp", "white noise"]


def test_a_variant_prompt_template_gets_the_caption_too():
    template = "Listen: <SpeechHere> {question}"
    dm = _demo_module(variants=[Variant(text_caption=True, prompt_template=template)],
                      caption_templates={"Synthetic": "[{label}]"})
    dm.setup()
    example = dm.dataset[0]
    assert example["prompt"] == f"Listen: [falling chirp]<SpeechHere> {example['meta']['question']}"


def test_a_caption_variant_without_a_template_for_a_track_names_the_track_and_the_setting():
    with pytest.raises(ValueError, match=r"track\(s\) \['Synthetic'\].*data\.init_args\.caption_templates"):
        _demo_module(variants=[Variant(), Variant(text_caption=True)])
    # Without a caption variant a track needs no template.
    assert [v.name for v in _demo_module(variants=[Variant()]).variants] == ["original"]


@pytest.mark.parametrize("template, message", [("The sound.", "must be a text holding '{label}'"),
                                               ("<SpeechHere>{label}", "must not hold <SpeechHere>")])
def test_bad_caption_templates_are_rejected_naming_the_setting(template: str, message: str):
    with pytest.raises(ValueError, match=f"data.init_args.caption_templates.Synthetic {message}"):
        _demo_module(caption_templates={"Synthetic": template})


def test_yaml_templates_extend_and_override_the_defaults():
    parser = ArgumentParser()
    parser.add_class_arguments(SakuraDataModule, "data")
    config = parser.parse_string(f"""
data:
  root: {DEMO}
  tracks: [Synthetic]
  variants: [{{}}, {{text_caption: true}}]
  caption_templates:
    Synthetic: "The sound is {{label}}."
    Gender: "A {{label}} voice."
""")
    dm = parser.instantiate(config).data
    assert dm.caption_templates == {**DEFAULT_CAPTION_TEMPLATES, "Synthetic": "The sound is {label}.",
                                    "Gender": "A {label} voice."}
    assert [v.name for v in dm.variants] == ["original", "text_caption"]


@needs_mini
def test_default_captions_read_as_sentences_for_every_sakura_track():
    dm = SakuraDataModule(SAKURA_MINI, hops=["single"], limit=1, variants=[Variant(text_caption=True)])
    dm.setup()
    captions = {e["meta"]["track"]: (e["meta"]["label"], e["meta"]["caption"])
                for e in (dm.dataset[i] for i in range(len(dm.dataset)))}
    assert set(captions) == {"Animal", "Emotion", "Gender", "Language"}
    for track, (label, caption) in captions.items():
        assert caption == DEFAULT_CAPTION_TEMPLATES[track].replace("{label}", label)
        assert label in caption and caption.endswith(".")
    gender = next(dm.dataset[i] for i in range(len(dm.dataset)) if dm.dataset[i]["meta"]["track"] == "Gender")
    label = gender["meta"]["label"]
    assert gender["prompt"].startswith(f"USER: <Speech>The speaker is {label}.<SpeechHere></Speech> ")
