"""End-to-end parity of the composed model with the official SALMONN, through a user's config.

For every golden directory the test writes the YAML a user would write for ``salmonn-pl test``
(paths to the Whisper dir, LLaMA dir, BEATs .pt and SALMONN .pth, architecture options translated
from the official config.yaml), lets the CLI build the module from it, then feeds the golden WAV
files through our data path and compares every tensor in the manifest.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
import yaml
from tests.helpers.golden import FLOAT_ATOL, SAKURA_MINI, Golden, assert_close

from salmonn_pl.cli import build_cli
from salmonn_pl.audio.load import load_audio
from salmonn_pl.data.collate import AudioBatch, SpeechCollator
from salmonn_pl.generation import decode
from salmonn_pl.generation.decode import GenerationSettings
from salmonn_pl.model.llm import set_pad_rows
from salmonn_pl.model.salmonn import Salmonn
from salmonn_pl.generation.generate import generate



def user_config(golden: Golden) -> dict:
    """The ``model.model`` section a user writes for these files, from the official config.yaml."""
    cfg, qformer = golden.model_config, golden.qformer_settings()
    path = lambda key: str(golden.file(key) or "")  # noqa: E731
    return {
        "llm_path": path("llama_path"),
        "whisper_path": path("whisper_path"),
        "beats_path": path("beats_path"),
        "ckpt": path("ckpt"),
        "num_speech_query_token": cfg["num_speech_query_token"],
        "window_level_qformer": cfg["window_level_Qformer"],
        "second_per_window": cfg["second_per_window"],
        "second_stride": cfg["second_stride"],
        "qformer": {
            "hidden_size": qformer.hidden_size,
            "num_hidden_layers": qformer.num_hidden_layers,
            "num_attention_heads": qformer.num_attention_heads,
            "intermediate_size": qformer.intermediate_size,
            "layer_norm_eps": qformer.layer_norm_eps,
        },
        "lora": cfg["lora"],
        "lora_rank": cfg["lora_rank"],
        "lora_alpha": cfg["lora_alpha"],
        "lora_dropout": cfg["lora_dropout"],
        "max_txt_len": cfg["max_txt_len"],
        "end_sym": cfg["end_sym"],
        "llm_dtype": "float32",
        "autocast_dtype": "none",
    }


@lru_cache(maxsize=4)
def _build(golden_path: str, tmp_dir: str, beats_batching: str) -> Salmonn:
    golden = Golden(__import__("pathlib").Path(golden_path))
    config = {
        "model": {"model": {**user_config(golden), "beats_batching": beats_batching}},
        "trainer": {"logger": False},
        "data": {"class_path": "salmonn_pl.data.datamodule.SakuraDataModule", "init_args": {"root": str(SAKURA_MINI)}},
    }
    config_path = f"{tmp_dir}/{golden.name}-{beats_batching}.yaml"
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f)
    cli = build_cli(["--config", config_path], run=False)
    module = cli.model
    module.configure_model()
    model = module.salmonn
    set_pad_rows(model.llm, golden["llm.pad_row.embed_tokens"], golden["llm.pad_row.lm_head"])
    return model.float().eval()


@pytest.fixture
def build(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("configs"))
    return lambda golden, beats_batching="per_clip": _build(str(golden.path), tmp, beats_batching)


def _examples(golden: Golden, text: str | None = None) -> list[dict]:
    examples = []
    for i, w in enumerate(golden.wavs):
        audio = load_audio(golden.path / w["file"])
        examples.append({"id": w["name"], "audio": audio, "prompt": golden.prompt(i), "text": text or "", "meta": {}})
    return examples


def test_single_wav_parity(golden, build):
    model = build(golden)
    collate = SpeechCollator()
    for i, example in enumerate(_examples(golden)):
        batch = collate([example])
        assert batch["wav_lengths"].item() == golden[f"wav{i}.num_samples"].item()
        assert_close(batch["spectrogram"], golden[f"wav{i}.input_features"], f"wav{i}.input_features")
        with torch.no_grad():
            out = model.encode_audio(AudioBatch.of(batch))
        assert_close(out["whisper_out"], golden[f"wav{i}.whisper_encoder_out"], f"wav{i}.whisper_encoder_out")
        if golden.has(f"wav{i}.beats_features"):
            assert_close(out["beats_out"], golden[f"wav{i}.beats_features"], f"wav{i}.beats_features")
        assert_close(out["qformer_out"], golden[f"wav{i}.qformer_out"], f"wav{i}.qformer_out")
        assert_close(out["audio_tokens"], golden[f"wav{i}.speech_embeds"], f"wav{i}.speech_embeds")

        before, after = model.split_prompt(example["prompt"])
        assert_close(torch.tensor(before), golden[f"wav{i}.prompt_before_ids"], f"wav{i}.prompt_before_ids")
        assert_close(torch.tensor(after), golden[f"wav{i}.prompt_after_ids"], f"wav{i}.prompt_after_ids")

        inputs = model.assemble([example["prompt"]], out["audio_tokens"])
        assert_close(inputs.inputs_embeds, golden[f"wav{i}.inputs_embeds"], f"wav{i}.inputs_embeds")
        assert_close(inputs.attention_mask, golden[f"wav{i}.attention_mask"], f"wav{i}.attention_mask")
        with torch.no_grad():
            llm_out = model.llm(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask, output_hidden_states=True)
        assert_close(llm_out.logits[:, -1], golden[f"wav{i}.logits_last"], f"wav{i}.logits_last")
        assert_close(llm_out.hidden_states[-1], golden[f"wav{i}.llm_last_hidden"], f"wav{i}.llm_last_hidden")

        greedy = generate(model, [example["prompt"]], out["audio_tokens"], GenerationSettings(max_new_tokens=10, num_beams=1))
        assert greedy.sequences == [golden[f"wav{i}.gen_greedy_ids"][1:].tolist()], f"wav{i} greedy"
        beam = generate(model, [example["prompt"]], out["audio_tokens"], GenerationSettings(max_new_tokens=10, num_beams=4))
        assert beam.sequences == [golden[f"wav{i}.gen_beam4_ids"][1:].tolist()], f"wav{i} beam"
        assert_close(torch.tensor(beam.sequence_scores, dtype=torch.float32), golden[f"wav{i}.gen_beam4_sequence_score"], f"wav{i}.beam score")

        for target, suffix in ((golden.manifest["target_text"], ""), (golden.wavs[i]["varlen_target"], "_varlen_target")):
            train = model.assemble([example["prompt"]], out["audio_tokens"], [target], padding_side="right")
            assert_close(train.labels, golden[f"wav{i}.train_labels{suffix}"], f"wav{i}.train_labels{suffix}")
            with torch.no_grad():
                assert_close(model.lm_loss(train), golden[f"wav{i}.loss{suffix}"], f"wav{i}.loss{suffix}")


def test_official_batch_parity(golden, build):
    """The official batched path, quirks included: BEATs mask misalignment and middle padding."""
    model = build(golden, "official")
    batch = SpeechCollator()(_examples(golden))
    assert_close(batch["padding_mask"].sum(1), golden["batch.padding_mask_num_true"], "batch.padding_mask_num_true")
    with torch.no_grad():
        out = model.encode_audio(AudioBatch.of(batch))
    if golden.has("batch.beats_features"):
        assert_close(out["beats_out"], golden["batch.beats_features"], "batch.beats_features")
    assert_close(out["qformer_out"], golden["batch.qformer_out"], "batch.qformer_out")
    assert_close(out["audio_tokens"], golden["batch.speech_embeds"], "batch.speech_embeds")

    prompts = batch["prompt"]
    train = model.assemble(prompts, out["audio_tokens"], [golden.manifest["target_text"]] * len(prompts), padding_side="right")
    assert_close(train.inputs_embeds, golden["batch.train_inputs_embeds"], "batch.train_inputs_embeds")
    assert_close(train.attention_mask, golden["batch.train_attention_mask"], "batch.train_attention_mask")
    assert_close(train.labels, golden["batch.train_labels"], "batch.train_labels")
    with torch.no_grad():
        logits = model.llm_logits(train)
        assert_close(model.lm_loss(train), golden["batch.loss"], "batch.loss")
    n_text = golden["batch.train_logits_text"].shape[1]
    assert_close(logits[:, -n_text:], golden["batch.train_logits_text"], "batch.train_logits_text")

    varlen = model.assemble(prompts, out["audio_tokens"], [w["varlen_target"] for w in golden.wavs], padding_side="right")
    assert_close(varlen.labels, golden["batch.train_labels_varlen_target"], "batch.train_labels_varlen_target")
    with torch.no_grad():
        assert_close(model.lm_loss(varlen), golden["batch.loss_varlen_target"], "batch.loss_varlen_target")

    gen_inputs = model.assemble(prompts, out["audio_tokens"], padding_side="right")
    assert_close(gen_inputs.attention_mask, golden["batch.gen_attention_mask"], "batch.gen_attention_mask")
    settings = GenerationSettings(max_new_tokens=10, num_beams=1, stop_on_first_row_eos=True)
    result = decode.generate(model.llm, gen_inputs.inputs_embeds, gen_inputs.attention_mask, settings)
    expected = golden["batch.gen_greedy_ids"][:, 1:]
    got = torch.zeros_like(expected)  # finished rows continue with the LLaMA generation pad id 0
    for row, seq in enumerate(result.sequences):
        got[row, : len(seq)] = torch.tensor(seq)
    assert_close(got, expected, "batch.gen_greedy_ids")
    texts = [model.tokenizer.decode([model.tokenizer.bos_token_id, *row.tolist()]) for row in expected]
    assert texts == golden.variant["batch_greedy_texts"]


def test_per_clip_batching_equals_single_runs(golden, build):
    """With per-clip BEATs, a batch gives every clip the audio tokens it gets alone (the official path does not)."""
    model = build(golden)
    examples = _examples(golden)
    batch = SpeechCollator()(examples)
    with torch.no_grad():
        batched = model.encode_audio(AudioBatch.of(batch))["audio_tokens"]
    for i in range(len(examples)):
        assert_close(batched[i : i + 1], golden[f"wav{i}.speech_embeds"], f"batched wav{i}.speech_embeds")
    official_gap = golden.variant.get("batch_vs_single_speech_embeds_max_abs_diff", {})
    if official_gap and golden.has_beats:  # the official BEATs batch mask moves the shorter clips' tokens
        assert max(official_gap.values()) > FLOAT_ATOL
    elif official_gap:  # Whisper alone is batch-invariant in the official code as well
        assert max(official_gap.values()) <= FLOAT_ATOL
    assert np.isfinite(batched.numpy()).all()
