"""Activation tuning: the LoRA scale as a test-time knob, and the few-shot long-response fine-tune."""

import json
from pathlib import Path

import pytest
import torch
from tests.helpers.golden import SAKURA_MINI
from peft.tuners.lora import LoraLayer

from salmonn_pl.data.annotations import AnnotationDataset, load_prompts
from salmonn_pl.lit_module import SalmonnModule
from salmonn_pl.data.activation import STORY_INSTRUCTION, STORY_TASK, write_template_activation_set

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
needs_sakura = pytest.mark.skipif(not SAKURA_MINI.is_dir(), reason=f"{SAKURA_MINI} (shared SAKURA clips) is absent")


def _lora_scalings(module: SalmonnModule) -> set[float]:
    layers = [m for m in module.salmonn.llm.modules() if isinstance(m, LoraLayer)]
    return {layer.scaling[adapter] for layer in layers for adapter in layer.scaling}


def _logits(module: SalmonnModule) -> torch.Tensor:
    m = module.salmonn
    inputs = m.assemble(["USER: <Speech><SpeechHere></Speech> Describe the audio.\nASSISTANT:"], None)
    with torch.no_grad():
        return m.llm_logits(inputs)


def test_lora_scale_is_a_test_time_multiplier(tiny_config):
    trained = SalmonnModule(tiny_config)
    trained.configure_model()
    half = SalmonnModule(tiny_config, lora_scale=0.5)
    half.configure_model()
    off = SalmonnModule(tiny_config, lora_scale=0.0)
    off.configure_model()
    alpha_over_rank = tiny_config.lora_alpha / tiny_config.lora_rank
    assert _lora_scalings(trained) == {alpha_over_rank}
    assert _lora_scalings(half) == {0.5 * alpha_over_rank}

    with trained.salmonn.llm.disable_adapter():
        base = _logits(trained)
    assert not torch.allclose(_logits(trained), base, atol=1e-5), "the tiny checkpoint's LoRA should matter"
    assert torch.allclose(_logits(off), base, atol=1e-6), "scale 0 must be the base LLM"
    # LoRA adds scaling * B A x to q/v: halfway in the scaling, so the logits move, but not all the way.
    mid = _logits(half)
    assert not torch.allclose(mid, base, atol=1e-5) and not torch.allclose(mid, _logits(trained), atol=1e-5)


def test_lora_scale_sweep_recipe_sets_the_scale(tmp_path):
    from salmonn_pl.cli import build_cli

    cli = build_cli(["--config", str(CONFIGS / "lora_scale_sweep.yaml"), "--model.lora_scale", "0.25",
                     "--model.output_dir", str(tmp_path)], run=False)
    assert cli.model.lora_scale == 0.25
    header = (CONFIGS / "lora_scale_sweep.yaml").read_text()
    assert "--model.lora_scale $s" in header and "salmonn-pl-eval report" in header


@needs_sakura
def test_activation_set_holds_long_answers_over_all_tracks(tmp_path):
    written = write_template_activation_set(SAKURA_MINI, tmp_path, n=8)
    dataset = AnnotationDataset(written.annotation, prompts=load_prompts(written.prompt_path), audio_root=tmp_path)
    assert len(dataset) == written.n_examples == 8
    entries = json.loads(written.annotation.read_text())["annotation"]
    tracks = {e["track"] for e in entries}
    assert tracks == {p.name for p in (SAKURA_MINI / "data").iterdir() if p.is_dir()}
    assert all(e["task"] == STORY_TASK and len(e["text"].split()) >= 80 for e in entries)
    assert all(e["label"].lower() in e["text"].lower() or e["track"] == "Emotion" for e in entries)
    example = dataset[0]
    assert STORY_INSTRUCTION in example["prompt"] and example["audio"].ndim == 1
    with pytest.raises(ValueError, match="only"):
        write_template_activation_set(SAKURA_MINI, tmp_path / "too-many", n=10_000)


@needs_sakura
@pytest.mark.slow
def test_activation_recipe_fits_the_long_answers(tiny_files, tmp_path):
    """configs/activation.yaml, shortened: a few steps on 2 stories lower their loss.

    The tiny random LLM's frozen lm_head (std 0.02, width 64) caps any token's logit near 1.3, so
    its loss on a story starts at log(vocab) and cannot fall far; the drop asserted is small but real.
    """
    from salmonn_pl.cli import build_cli

    data = write_template_activation_set(SAKURA_MINI, tmp_path / "data", n=2)
    paths = [f"--model.model.{k}={v}" for k, v in tiny_files.items()]
    common = ["--config", str(CONFIGS / "activation.yaml"), *paths, "--model.output_dir", str(tmp_path / "out"),
              "--data.train_annotation", str(data.annotation), "--data.prompt_path", str(data.prompt_path),
              "--data.audio_root", str(data.annotation.parent), "--data.batch_size", "2",
              "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.enable_progress_bar", "false",
              "--model.optim.lr", "1e-2", "--model.optim.min_lr", "1e-2", "--model.optim.warmup_steps", "0"]
    cli = build_cli(["fit", *common, "--trainer.max_epochs", "15", "--trainer.log_every_n_steps", "1",
                     "--trainer.enable_checkpointing", "false"])
    module, datamodule = cli.model, cli.datamodule
    batch = next(iter(datamodule.train_dataloader()))
    module.eval()
    with torch.no_grad():
        after = module._losses(batch)["loss_lm"].item()
    fresh = SalmonnModule(module.model_config)
    fresh.configure_model()
    fresh.eval()
    with torch.no_grad():
        before = fresh._losses(batch)["loss_lm"].item()
    print(f"activation fit: story loss {before:.3f} -> {after:.3f}")
    assert after < before - 0.1, (before, after)
