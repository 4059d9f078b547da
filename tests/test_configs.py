"""Every YAML recipe in configs/ parses with the command its header documents; the SAKURA recipes
instantiate (placeholders replaced by the tiny model's files) and the main one runs end to end."""

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from salmonn_pl.callbacks import QuestionProgressBar
from salmonn_pl.cli import build_cli
from salmonn_pl.eval.judge_llm import LLMJudge
from salmonn_pl.eval.judge_rule import RuleJudge
from salmonn_pl.eval.report import SakuraWandbLogger
from salmonn_pl.model.tiny import tiny_qformer_settings

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
# Files that swap the model of a recipe (added after it), not recipes themselves.
MODEL_SWAPS = [TINY, REPO / "configs" / "qwen2_audio.yaml", REPO / "configs" / "qwen2_audio_tiny.yaml"]
CONFIGS = sorted(c for c in (REPO / "configs").glob("*.yaml") if c not in MODEL_SWAPS)
DEMO_SAKURA = REPO / "assets" / "demo-sakura"
SAKURA_RECIPES = ["sakura_eval.yaml", "sakura_7b_eval.yaml", "padding_sweep.yaml", "ablation_sweep.yaml",
                  "caption_control.yaml"]
PLACEHOLDER = "/PATH/TO/"


def documented_subcommand(config: Path) -> str:
    """The subcommand of the first ``salmonn-pl <subcommand> --config configs/<file>`` in the header."""
    match = re.search(rf"salmonn-pl (fit|validate|test|predict) --config configs/{re.escape(config.name)}",
                      config.read_text())
    return match.group(1) if match else "test"


PROBE_CONFIGS = [c for c in CONFIGS if f"salmonn-pl-probe --config configs/{c.name}" in c.read_text()]


@pytest.mark.parametrize("config", [c for c in CONFIGS if c not in PROBE_CONFIGS], ids=lambda p: p.name)
def test_config_parses(config, capsys):
    with pytest.raises(SystemExit) as done:
        build_cli([documented_subcommand(config), "--config", str(config), "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["model"]["llm_path"] and printed["data"]["class_path"]


@pytest.mark.parametrize("config", PROBE_CONFIGS, ids=lambda p: p.name)
def test_probe_config_parses(config, capsys):
    from salmonn_pl.probe_cli import main as probe_main

    with pytest.raises(SystemExit) as done:
        probe_main(["--config", str(config), "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["model"]["llm_path"] and printed["data"]["class_path"]


def tiny_overrides(tiny_files: dict[str, Path]) -> list[str]:
    """Command-line overrides that put the tiny model and the bundled demo data in place of the
    real files, on CPU."""
    return [
        *(arg for key, path in tiny_files.items() for arg in (f"--model.model.{key}", str(path))),
        "--model.model.qformer", json.dumps(asdict(tiny_qformer_settings())),
        "--trainer.accelerator", "cpu",
        "--data.init_args.root", str(DEMO_SAKURA),
        "--data.init_args.tracks", "[Synthetic]",
    ]


def instantiate(config: Path, *overrides: str):
    return build_cli(["--config", str(config), *overrides], run=False)


BEATS_URL = ("https://valle.blob.core.windows.net/share/BEATs/BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt?"
             "sv=2020-08-04&st=2023-03-01T07%3A51%3A05Z&se=2033-03-02T07%3A51%3A00Z&sr=c&sp=rl&"
             "sig=QJXmSJG9DbMKf48UDIU1MfzIro8HQOf3sqlNXiflY1I%3D")
# The main recipes name the released weights (fetched into the Hugging Face cache on first use).
RELEASED_WEIGHTS = {
    "sakura_eval.yaml": {"llm_path": "lmsys/vicuna-13b-v1.1", "whisper_path": "openai/whisper-large-v2",
                         "beats_path": BEATS_URL, "ckpt": "hf://tsinghua-ee/SALMONN/salmonn_v1.pth"},
    "sakura_7b_eval.yaml": {"llm_path": "lmsys/vicuna-7b-v1.5", "whisper_path": "openai/whisper-large-v2",
                            "beats_path": BEATS_URL, "ckpt": "hf://tsinghua-ee/SALMONN-7B/salmonn_7b_v0.pth"},
}


@pytest.mark.parametrize("name", SAKURA_RECIPES)
def test_sakura_recipe_names_the_released_weights_or_placeholders(name):
    config = yaml.safe_load((REPO / "configs" / name).read_text())
    paths = config["model"]["model"]
    for key in ("llm_path", "whisper_path", "beats_path", "ckpt"):
        if name in RELEASED_WEIGHTS:
            assert paths[key] == RELEASED_WEIGHTS[name][key], f"{name}: model.model.{key}"
        else:
            assert paths[key].startswith(PLACEHOLDER), f"{name}: model.model.{key} is not a marked placeholder"
    assert config["data"]["init_args"]["root"].startswith(PLACEHOLDER)


def test_main_recipe_is_the_official_setup(tiny_files):
    cli = instantiate(REPO / "configs" / "sakura_eval.yaml", *tiny_overrides(tiny_files))
    module, data, trainer = cli.model, cli.datamodule, cli.trainer
    generation = module.generation
    assert (generation.num_beams, generation.max_new_tokens, generation.top_p) == (4, 200, 0.9)
    assert (generation.do_sample, generation.repetition_penalty, generation.length_penalty) == (False, 1.0, 1.0)
    assert (module.model_config.llm_dtype, module.model_config.autocast_dtype) == ("float16", "float16")
    assert module.padding_side == "left" and isinstance(module.judge, RuleJudge)
    assert data.batch_size == 16
    assert isinstance(trainer.logger, SakuraWandbLogger) and trainer.logger._offline
    assert isinstance(trainer.progress_bar_callback, QuestionProgressBar)


def test_7b_recipe_differs_by_its_llm_and_checkpoint():
    main = yaml.safe_load((REPO / "configs" / "sakura_eval.yaml").read_text())["model"]
    seven = yaml.safe_load((REPO / "configs" / "sakura_7b_eval.yaml").read_text())["model"]
    assert seven["model"]["llm_path"].endswith("vicuna-7b-v1.5")
    assert seven["model"]["ckpt"].endswith("salmonn_7b_v0.pth")
    assert seven["generation"] == main["generation"]
    for key in ("whisper_path", "beats_path", "llm_dtype", "autocast_dtype", "lora_alpha", "lora_rank"):
        assert seven["model"][key] == main["model"][key], key


def test_commented_llm_judge_block_instantiates(tiny_files):
    """The LLM judge shown in comments of the main recipe is a working replacement of the rule judge."""
    config = REPO / "configs" / "sakura_eval.yaml"
    lines = config.read_text().splitlines()
    start = lines.index("  # judge:")
    block = []
    for line in lines[start:]:
        if not line.startswith("  # "):
            break
        block.append(line[len("  # "):])
    judge = yaml.safe_load("\n".join(block))["judge"]
    cli = instantiate(config, *tiny_overrides(tiny_files), "--model.judge", json.dumps(judge))
    assert isinstance(cli.model.judge, LLMJudge)
    assert (cli.model.judge.base_url, cli.model.judge.model) == (judge["init_args"]["base_url"], judge["init_args"]["model"])


def test_padding_sweep_is_one_run_of_twelve_padded_variants_and_the_original(tiny_files):
    cli = instantiate(REPO / "configs" / "padding_sweep.yaml", *tiny_overrides(tiny_files))
    names = [v.name for v in cli.datamodule.variants]
    padded = {f"pad{s}s-{fill}-{position}" for s in (15, 30) for fill in ("zero", "noise")
              for position in ("early", "middle", "late")}
    assert names[0] == "original" and set(names[1:]) == padded and len(names) == 13


def test_ablation_sweep_variants(tiny_files):
    cli = instantiate(REPO / "configs" / "ablation_sweep.yaml", *tiny_overrides(tiny_files))
    variants = {v.name: v for v in cli.datamodule.variants}
    assert list(variants) == ["original", "zero_beats", "zero_whisper", "zero_audio", "no_audio", "no_options"]
    assert variants["no_options"].strip_options and variants["no_audio"].ablation == "no_audio"


def test_caption_control_asks_every_question_heard_and_read(tiny_files):
    from salmonn_pl.data.datamodule import DEFAULT_CAPTION_TEMPLATES

    cli = instantiate(REPO / "configs" / "caption_control.yaml", *tiny_overrides(tiny_files),
                      "--data.init_args.caption_templates", '{Synthetic: "It is {label}."}')
    assert [(v.name, v.ablation) for v in cli.datamodule.variants] == [("original", "none"), ("text_caption", "no_audio")]
    assert cli.datamodule.caption_templates == {**DEFAULT_CAPTION_TEMPLATES, "Synthetic": "It is {label}."}
    recipe = yaml.safe_load((REPO / "configs" / "caption_control.yaml").read_text())
    assert recipe["data"]["init_args"]["caption_templates"] == DEFAULT_CAPTION_TEMPLATES  # the defaults, written out
    # The recipe on the demo track without its caption: an error that names the track and the setting.
    with pytest.raises(ValueError, match=r"\['Synthetic'\].*data\.init_args\.caption_templates"):
        instantiate(REPO / "configs" / "caption_control.yaml", *tiny_overrides(tiny_files))


@pytest.mark.slow
def test_main_recipe_runs_on_the_tiny_model(tiny_files, tmp_path, monkeypatch):
    """``salmonn-pl test`` of the main recipe, offline W&B included, with the tiny model on CPU."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "run"
    build_cli([
        "test", "--config", str(REPO / "configs" / "sakura_eval.yaml"), *tiny_overrides(tiny_files),
        "--model.model.llm_dtype", "float32", "--model.model.autocast_dtype", "none",
        "--model.generation.max_new_tokens", "4",
        "--model.output_dir", str(out),
        "--data.init_args.limit", "1", "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
    ])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["questions"] == 2 and metrics["judge"] == "rule"
    assert "synthetic-single" in (out / "report.md").read_text()
    # The W&B run lives in the run's output directory.
    assert list((out / "wandb").glob("offline-run-*/files/media/table/test/predictions*.table.json"))


# ---------------------------------------------------------------------------------------------
# configs/tiny.yaml: every recipe on a CPU with the bundled tiny model


@pytest.mark.parametrize("config", [c for c in CONFIGS if c not in PROBE_CONFIGS], ids=lambda p: p.name)
def test_every_recipe_composes_with_tiny_yaml(config, monkeypatch):
    """``--config <recipe> --config configs/tiny.yaml`` instantiates the tiny model's settings on CPU
    with the demo data and keeps the recipe's own study settings (variants, decoding, judge)."""
    monkeypatch.chdir(REPO)  # tiny.yaml's paths are relative to the repository, as in the README
    recipe = yaml.safe_load(config.read_text())
    # Fit recipes already use the tiny model; with tiny.yaml they are evaluated on the demo data.
    cli = instantiate(config, "--config", str(TINY))
    settings = cli.config
    model = settings.model.model
    assert model.llm_path == "assets/tiny-salmonn/llama" and model.ckpt == "assets/tiny-salmonn/salmonn_synthetic.pth"
    assert (model.llm_dtype, model.autocast_dtype, model.qformer.hidden_size) == ("float32", "none", 32)
    assert settings.trainer.accelerator == "cpu"
    assert settings.data.class_path.endswith("SakuraDataModule") and settings.data.init_args.root == "assets/demo-sakura"
    init_args = recipe["data"].get("init_args", {})
    for key in ("variants", "sweep"):
        if key in init_args and recipe["data"]["class_path"].endswith("SakuraDataModule"):
            assert settings.data.init_args[key] is not None, key
    if "decoder" in recipe["model"]:  # the recipe's decoder survives the model swap
        named = recipe["model"]["decoder"]
        named = named if isinstance(named, str) else named["class_path"]
        assert type(cli.model.decoder).__name__ == named.rsplit(".", 1)[-1]


@pytest.mark.parametrize("config", PROBE_CONFIGS, ids=lambda p: p.name)
def test_probe_recipe_composes_with_tiny_yaml(config, capsys, monkeypatch):
    from salmonn_pl.probe_cli import main as probe_main

    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        probe_main(["--config", str(config), "--config", str(TINY), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["model"]["llm_path"] == "assets/tiny-salmonn/llama"


def test_probe_reads_a_test_recipe(capsys, monkeypatch):
    """One file serves `salmonn-pl test` and `salmonn-pl-probe`: the probe parses a test recipe."""
    from salmonn_pl.probe_cli import main as probe_main

    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        probe_main(["--config", "configs/padding_sweep.yaml", "--config", str(TINY), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["output_dir"] == "outputs/padding_sweep"
    assert printed["data"]["init_args"]["sweep"]["pad_position"] == ["early", "middle", "late"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["padding_sweep.yaml", "ablation_sweep.yaml"])
def test_study_recipe_runs_on_cpu_with_tiny_yaml(name, tmp_path, monkeypatch):
    """The README's try-before-a-GPU command, limited to one clip per hop."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    build_cli(["test", "--config", f"configs/{name}", "--config", str(TINY), "--model.output_dir", str(out),
               "--model.generation.max_new_tokens", "2", "--model.generation.num_beams", "1",
               "--data.init_args.limit", "1"])
    recipe = instantiate(REPO / "configs" / name, "--config", str(TINY))
    expected_variants = len(recipe.datamodule.variants)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["questions"] == 2 * expected_variants  # one clip, two hops
    assert (out / "report.md").is_file() and (out / "config.yaml").is_file()


def test_probe_runs_from_a_test_recipe_with_tiny_yaml(tmp_path, monkeypatch):
    from salmonn_pl.probe_cli import main as probe_main

    monkeypatch.chdir(REPO)
    out = tmp_path / "probe"
    probe_main(["--config", "configs/padding_sweep.yaml", "--config", str(TINY), "--answers", "reference",
                "--data.init_args.limit", "1", "--data.init_args.batch_size", "13", "--max_batches", "1",
                "--model.output_dir", str(out)])
    report = json.loads((out / "attention_profile.json").read_text())
    assert len(report["variants"]) == 13 and (out / "attention_vs_time.png").is_file()


@pytest.mark.parametrize("recipe", ["sakura_eval.yaml", "padding_sweep.yaml", "demo.yaml"])
def test_a_recipe_runs_qwen2_audio_with_the_family_swap(recipe, monkeypatch):
    """``--config <recipe> --config configs/qwen2_audio.yaml``: the model is the released Qwen2-Audio by
    name, the recipe's data, variants, decoding and judge stay."""
    monkeypatch.chdir(REPO)
    cpu = ("--trainer.accelerator", "cpu")  # the GPU recipes, parsed on this machine
    cli = instantiate(REPO / "configs" / recipe, "--config", "configs/qwen2_audio.yaml", *cpu)
    module = cli.model
    assert type(module.model_config).__name__ == "Qwen2AudioConfig" and module.family == "Qwen2-Audio"
    assert module.model_config.qwen2_audio_path == "Qwen/Qwen2-Audio-7B-Instruct"
    plain = instantiate(REPO / "configs" / recipe, *cpu)
    assert module.generation == plain.model.generation and module.decoder.config() == plain.model.decoder.config()
    assert [v.name for v in cli.datamodule.variants] == [v.name for v in plain.datamodule.variants]


@pytest.mark.slow
def test_probe_runs_qwen2_audio_from_a_test_recipe(tmp_path, monkeypatch):
    from salmonn_pl.probe_cli import main as probe_main

    monkeypatch.chdir(REPO)
    out = tmp_path / "probe"
    probe_main(["--config", "configs/padding_sweep.yaml", "--config", str(TINY), "--config", "configs/qwen2_audio_tiny.yaml",
                "--answers", "reference", "--data.init_args.limit", "1", "--data.init_args.batch_size", "13",
                "--max_batches", "1", "--model.output_dir", str(out)])
    report = json.loads((out / "attention_profile.json").read_text())
    assert report["settings"]["model_family"] == "Qwen2-Audio" and len(report["variants"]) == 13
    assert (out / "attention_vs_time.png").is_file()


@pytest.mark.slow
def test_caption_control_with_tiny_yaml_reports_hearing_vs_reasoning(tmp_path, monkeypatch):
    """``salmonn-pl test --config configs/caption_control.yaml --config configs/tiny.yaml``: every question
    heard and read as a caption, and the report's text-control table."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    build_cli(["test", "--config", "configs/caption_control.yaml", "--config", str(TINY), "--model.output_dir", str(out),
               "--model.generation.max_new_tokens", "2", "--model.generation.num_beams", "1",
               "--data.init_args.limit", "2", "--data.init_args.batch_size", "4"])
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    captions = [r for r in records if r["variant"] == "text_caption"]
    assert len(records) == 8 and len(captions) == 4  # 2 clips x 2 hops, heard and read
    for record in captions:
        assert record["meta"]["caption"] == f"The sound is described as: {record['attribute_label']}."
        assert record["meta"]["variant_params"]["ablation"] == "no_audio"
    report = (out / "report.md").read_text()
    assert "## Hearing vs reasoning (SAKURA text control)" in report
    table = report.split("### original vs text_caption", 1)[1]
    assert "| synthetic-multi |" in table and "| synthetic-single |" in table
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_family"] == "SALMONN"
    gap = next(line for line in table.splitlines() if line.startswith("| synthetic-single |")).split("|")[2:5]
    audio, caption = (metrics["accuracy"][v]["synthetic-single"] for v in ("original", "text_caption"))
    assert [cell.strip() for cell in gap] == [f"{audio:.1f}", f"{caption:.1f}", f"{caption - audio:+.1f}"]


@pytest.mark.slow
def test_the_demo_runs_both_families_and_writes_one_side_by_side_report(tmp_path, monkeypatch):
    """``make demo``'s three commands, limited to one clip per hop: the padding sweep and the text control
    on the tiny SALMONN and the tiny Qwen2-Audio, then one report over both."""
    from salmonn_pl.eval.commands import main as eval_main

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WANDB_MODE", "offline")
    salmonn, qwen = tmp_path / "demo", tmp_path / "demo_qwen2_audio"
    limit = ("--data.init_args.limit", "1")
    build_cli(["test", "--config", "configs/demo.yaml", "--model.output_dir", str(salmonn), *limit])
    build_cli(["test", "--config", "configs/demo.yaml", "--config", "configs/qwen2_audio_tiny.yaml",
               "--model.output_dir", str(qwen), *limit])
    eval_main(["report", "--runs", json.dumps([str(salmonn), str(qwen)]), "--output", str(tmp_path / "families")])
    families = {json.loads((run / "metrics.json").read_text())["model_family"] for run in (salmonn, qwen)}
    assert families == {"SALMONN", "Qwen2-Audio"}
    report = (tmp_path / "families" / "report.md").read_text()
    for run in ("demo (SALMONN)", "demo_qwen2_audio (Qwen2-Audio)"):
        for variant in ("original", "pad15s-noise-early", "pad15s-noise-late", "text_caption"):
            assert f"| {run} / {variant} |" in report
        assert f"### {run}: original vs text_caption" in report
    # The study's questions side by side: the position effect and hearing vs reasoning of each family.
    study = report[report.index("## The study's questions, family by family"):report.index("## Questions")]
    assert "### Position effect" in study and "### Hearing vs reasoning" in study
    for run in ("demo (SALMONN)", "demo_qwen2_audio (Qwen2-Audio)"):
        assert f"| {run} | 15s noise -40 dBFS |" in study
        assert f"| {run} | original vs text_caption |" in study
    assert (tmp_path / "families" / "position_accuracy.png").is_file()


@pytest.mark.slow
def test_two_runs_in_one_process_each_log_their_own_wandb_run(tmp_path, monkeypatch):
    """A notebook sweep: the second ``salmonn-pl test`` in the process gets its own W&B run in its own
    output directory (Lightning would hand it the first run, still open)."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WANDB_SILENT", "true")
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        build_cli(["test", "--config", "configs/demo.yaml", "--model.output_dir", str(out),
                   "--data.init_args.limit", "1", "--data.init_args.sweep", "null"])
    for out in runs:
        assert list((out / "wandb").glob("offline-run-*/files/media/table/test/predictions*.table.json")), out
