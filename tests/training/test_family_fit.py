"""``salmonn-pl fit`` of Qwen2-Audio's LoRA adapters: the objectives through the family interface, a
checkpoint holding only the adapters, and a test run from it that answers as the fitted model."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.helpers.cli_runs import REPO
from tests.helpers.qwen2_audio import TINY_QWEN
from tests.helpers.fit_runs import checkpoint_callback, run_fit, write_fit_config

QWEN = {"qwen2_audio_path": str(TINY_QWEN), "dtype": "float32", "adapters": {"rank": 4, "alpha": 8}}


def _qwen_fit_config(path, tiny_files, task, out, objectives, max_steps=4):
    write_fit_config(path, tiny_files, task, out, max_steps=max_steps, objectives=objectives,
                     callbacks=[checkpoint_callback(out / "checkpoints", max_steps)])
    config = yaml.safe_load(path.read_text())
    config["model"]["model"] = QWEN
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["kl_uniform", "margin"])
def test_lora_fit_moves_only_the_adapters_and_its_checkpoint_answers_alike(tiny_files, synthetic_task, tmp_path, kind):
    out = tmp_path / "fit"
    objectives = {"prior_contrast_weight": 1.0, "prior_contrast_kind": kind}
    config = _qwen_fit_config(tmp_path / "fit.yaml", tiny_files, synthetic_task, out, objectives)
    cli = run_fit(config)
    module = cli.model
    trained = {n: p.detach().clone() for n, p in module.family_model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    assert any(float(p.abs().sum()) > 0 for n, p in trained.items() if "lora_B" in n)  # B left zero: it moved
    logged = cli.trainer.logged_metrics
    assert torch.isfinite(logged["train/loss"]) and "train/loss_prior" in logged

    (checkpoint,) = (out / "checkpoints").glob("*.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert set(state) == {f"family_model.{n}" for n in trained}  # the adapters only: a few kB, not the model

    # A test run from the checkpoint answers as the fitted model in memory.
    test_config = yaml.safe_load(config.read_text())
    test_config["data"] = {"class_path": "salmonn_pl.data.datamodule.SakuraDataModule",
                           "init_args": {"root": str(REPO / "assets" / "demo-sakura"), "tracks": ["Synthetic"],
                                         "limit": 2, "batch_size": 4}}
    test_config["model"] |= {"decoder": "OptionScoring", "output_dir": str(tmp_path / "test")}
    test_config["trainer"] = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test_config, sort_keys=False))
    from salmonn_pl.cli import build_cli

    build_cli(["test", "--config", str(tmp_path / "test.yaml"), "--model.model.finetuned", str(checkpoint)])
    from_checkpoint = [json.loads(line)["meta"]["option_scores"]["option_scores"]
                       for line in (tmp_path / "test" / "predictions.jsonl").open()]
    module.to("cpu").eval()
    test_config["model"]["output_dir"] = str(tmp_path / "in_memory")
    (tmp_path / "test2.yaml").write_text(yaml.safe_dump(test_config, sort_keys=False))
    fresh = build_cli(["--config", str(tmp_path / "test2.yaml")], run=False)
    fresh.model.configure_model()
    with torch.no_grad():
        for n, p in fresh.model.family_model.named_parameters():
            if n in trained:
                p.copy_(trained[n])
    fresh.trainer.test(fresh.model, datamodule=fresh.datamodule)
    in_memory = [json.loads(line)["meta"]["option_scores"]["option_scores"]
                 for line in (tmp_path / "in_memory" / "predictions.jsonl").open()]
    assert from_checkpoint == in_memory


def test_fit_without_adapters_says_what_to_set(tiny_files, synthetic_task, tmp_path):
    config = _qwen_fit_config(tmp_path / "fit.yaml", tiny_files, synthetic_task, tmp_path / "fit", {})
    with pytest.raises(ValueError, match=r"model.model.adapters is null: Qwen2-Audio's weights are frozen"):
        run_fit(config, "--model.model.adapters", "null")


def test_a_checkpoint_of_other_adapters_is_refused(tiny_files, synthetic_task, tmp_path):
    from salmonn_pl.model.qwen2_audio import Qwen2AudioConfig, QwenLoRASettings

    fake = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"family_model.model.some.lora_A.default.weight": torch.zeros(2, 2)}}, fake)
    config = Qwen2AudioConfig(str(TINY_QWEN), dtype="float32", adapters=QwenLoRASettings(rank=4), finetuned=str(fake))
    with pytest.raises(ValueError, match=r"does not hold this model's adapters .* 8 missing.*1 unknown"):
        config.build()
    with pytest.raises(ValueError, match="needs model.adapters"):
        Qwen2AudioConfig(str(TINY_QWEN), finetuned=str(fake)).build()
