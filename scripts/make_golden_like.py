"""Write golden-like fixture directories for architectures other than ``../shared/golden/tiny-v1``.

The official golden sets (``manifest.json`` + ``expected.safetensors`` beside a tiny SALMONN in the
official file formats) come in several architectures: other widths and depths, another LoRA rank,
several query tokens per window, other windows, stereo WAVs, no BEATs. Tests that take a golden set
must read all of that from the set's own files. This script writes sets of the same layout whose
reference tensors come from *our* implementation (which reproduces the official tensors on tiny-v1),
so that a test that silently assumes tiny-v1's settings fails on them:

    python scripts/make_golden_like.py /tmp/golden-like            # every preset below
    SALMONN_PL_GOLDEN=/tmp/golden-like/h48-r4-q2-w05-stereo:/tmp/golden-like/nobeats pytest -k golden ...

It needs ``../shared/golden/tiny-v1`` (the clips and their questions are taken from there). The
generated data is for local checks only; do not commit it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_V1 = REPO_ROOT.parent / "shared" / "golden" / "tiny-v1"
PROMPT_TEMPLATE = "USER: {}\nASSISTANT:"
PROMPT = "<Speech><SpeechHere></Speech> {}"
EOS = 2

# Presets in the official manifest's ``preset`` schema. ``stereo`` marks the WAVs written with two
# channels (channel 0 is the clip, as the official loader reads it).
PRESETS: dict[str, dict] = {
    "h48-r4-q2-w05-stereo": {
        "seed": 7,
        "whisper": {"d_model": 48, "encoder_layers": 3, "encoder_attention_heads": 4, "encoder_ffn_dim": 96},
        "llama": {"hidden_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 96},
        "sp_vocab_size": 1200,
        "eos_lm_head_scale": 1.1,
        "beats": {"encoder_layers": 3, "encoder_embed_dim": 48, "encoder_ffn_embed_dim": 96, "encoder_attention_heads": 4, "embed_dim": 16},
        "qformer": {"hidden_size": 24, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 48},
        "salmonn": {"num_speech_query_token": 2, "second_per_window": 0.5, "second_stride": 0.5, "lora_rank": 4, "lora_alpha": 16, "lora_dropout": 0.1},
        "nobeats_variant": False,
        "stereo": ["w1_5s", "w2_17s"],
    },
    "nobeats": {
        "seed": 11,
        "whisper": {"d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 64},
        "llama": {"hidden_size": 80, "num_hidden_layers": 1, "num_attention_heads": 5, "intermediate_size": 160},
        "sp_vocab_size": 1400,
        "eos_lm_head_scale": 1.1,
        "beats": None,
        "qformer": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        "salmonn": {"num_speech_query_token": 1, "second_per_window": 1.0, "second_stride": 1.0, "lora_rank": 16, "lora_alpha": 8, "lora_dropout": 0.05},
        "nobeats_variant": True,
        "stereo": ["w0_short"],
    },
}


def _write_wavs(out: Path, preset: dict, tiny: dict) -> list[dict]:
    """tiny-v1's clips and questions; the preset's ``stereo`` ones get a second channel."""
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(preset["seed"])
    wavs = []
    for entry in tiny["wavs"]:
        audio, sr = sf.read(TINY_V1 / entry["file"], dtype="int16")
        stereo = entry["name"] in preset["stereo"]
        if stereo:
            other = (rng.standard_normal(len(audio)) * 3000).astype(np.int16)
            audio = np.stack([audio, other], axis=1)
        sf.write(out / entry["file"], audio, sr, subtype="PCM_16")
        wavs.append({**entry, "stereo": stereo})
    return wavs


def _write_model_files(out: Path, preset: dict) -> dict[str, str]:
    """Whisper dir, LLaMA dir (SentencePiece tokenizer), BEATs .pt and the official SALMONN .pth."""
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperForConditionalGeneration

    from salmonn_pl.model.beats import BEATs, BEATsConfig
    from salmonn_pl.model.checkpoint import export_official_checkpoint
    from salmonn_pl.model.salmonn import Salmonn
    from salmonn_pl.model.tiny import train_tokenizer

    torch.manual_seed(preset["seed"])
    w = preset["whisper"]
    whisper = WhisperForConditionalGeneration(WhisperConfig(
        d_model=w["d_model"], encoder_layers=w["encoder_layers"], decoder_layers=1,
        encoder_attention_heads=w["encoder_attention_heads"], decoder_attention_heads=w["encoder_attention_heads"],
        encoder_ffn_dim=w["encoder_ffn_dim"], decoder_ffn_dim=w["encoder_ffn_dim"], vocab_size=100, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=64, decoder_start_token_id=98, pad_token_id=99, bos_token_id=99, eos_token_id=99,
    ))
    whisper.save_pretrained(out / "whisper")
    shutil.copy(TINY_V1 / "whisper" / "preprocessor_config.json", out / "whisper" / "preprocessor_config.json")

    llama_dir = out / "llama"
    llama_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = train_tokenizer(llama_dir, preset["sp_vocab_size"], preset["seed"])
    preset["sp_vocab_size"] = vocab_size
    l = preset["llama"]
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size, hidden_size=l["hidden_size"], intermediate_size=l["intermediate_size"],
        num_hidden_layers=l["num_hidden_layers"], num_attention_heads=l["num_attention_heads"], max_position_embeddings=2048,
        bos_token_id=1, eos_token_id=EOS, pad_token_id=0, rms_norm_eps=1e-6, tie_word_embeddings=False,
    ))
    with torch.no_grad():
        # Weight scales like the official harness's (embeddings 0.125, lm_head 0.25, linears
        # 1/sqrt(fan-in), norms around 1): peaked next-token distributions, not uniform ones.
        for name, p in llm.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name == "lm_head.weight":
                p.normal_(0, 0.25)
            elif name == "model.embed_tokens.weight":
                p.normal_(0, 0.125)
            else:
                p.normal_(0, p.shape[1] ** -0.5)
        llm.lm_head.weight[EOS] *= preset["eos_lm_head_scale"]  # </s> a little likelier, so answers end sometimes
    llm.eval().half().save_pretrained(llama_dir)

    paths = {"llama_path": "llama", "whisper_path": "whisper", "beats_path": "", "ckpt": "salmonn.pth"}
    if preset["beats"]:
        b = preset["beats"]
        cfg = dict(
            encoder_layers=b["encoder_layers"], encoder_embed_dim=b["encoder_embed_dim"], encoder_ffn_embed_dim=b["encoder_ffn_embed_dim"],
            encoder_attention_heads=b["encoder_attention_heads"], activation_fn="gelu", dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, encoder_layerdrop=0.0, dropout_input=0.0, layer_norm_first=False, conv_bias=False, conv_pos=128,
            conv_pos_groups=16, relative_position_embedding=True, num_buckets=320, max_distance=800, gru_rel_pos=True, deep_norm=True,
            input_patch_size=16, layer_wise_gradient_decay_ratio=0.6, embed_dim=b["embed_dim"], finetuned_model=True,
            predictor_dropout=0.0, predictor_class=527,
        )
        torch.save({"cfg": cfg, "model": BEATs(BEATsConfig.from_dict(cfg)).state_dict()}, out / "beats.pt")
        paths["beats_path"] = "beats.pt"

    model = Salmonn(_salmonn_config(out, preset, paths, ckpt=False))
    with torch.no_grad():  # peft starts LoRA B at zero; random B makes the adapter (and its rank) matter
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    export_official_checkpoint(model, out / "salmonn.pth")
    return paths


def _qformer_bert_config(preset: dict) -> dict:
    q = preset["qformer"]
    bert = json.loads((TINY_V1 / "qformer_bert_config.json").read_text())
    return {**bert, "hidden_size": q["hidden_size"], "num_attention_heads": q["num_attention_heads"],
            "intermediate_size": q["intermediate_size"], "num_hidden_layers": q["num_hidden_layers"]}


def _salmonn_config(out: Path, preset: dict, paths: dict[str, str], ckpt: bool = True, beats_batching: str = "per_clip"):
    from salmonn_pl.model.salmonn import SalmonnConfig
    from salmonn_pl.model.window_qformer import QFormerSettings

    q, s = preset["qformer"], preset["salmonn"]
    return SalmonnConfig(
        llm_path=str(out / paths["llama_path"]),
        whisper_path=str(out / paths["whisper_path"]),
        beats_path=str(out / paths["beats_path"]) if paths["beats_path"] else "",
        ckpt=str(out / paths["ckpt"]) if ckpt else "",
        num_speech_query_token=s["num_speech_query_token"],
        second_per_window=s["second_per_window"],
        second_stride=s["second_stride"],
        qformer=QFormerSettings(hidden_size=q["hidden_size"], num_hidden_layers=q["num_hidden_layers"],
                                num_attention_heads=q["num_attention_heads"], intermediate_size=q["intermediate_size"]),
        lora_rank=s["lora_rank"],
        lora_alpha=s["lora_alpha"],
        lora_dropout=s["lora_dropout"],
        llm_dtype="float32",
        beats_batching=beats_batching,
    )


def _write_config(out: Path, preset: dict, paths: dict[str, str], tiny_config: dict) -> None:
    s = preset["salmonn"]
    model = {**tiny_config["model"], **paths, **{k: s[k] for k in s}}
    golden = {**tiny_config["golden"], "preset": preset["name"], "qformer_num_hidden_layers": preset["qformer"]["num_hidden_layers"]}
    text = "# Golden-like fixture written by scripts/make_golden_like.py (tensors from salmonn-pl, not the official code).\n"
    (out / "config.yaml").write_text(text + yaml.safe_dump({"model": model, "generate": tiny_config["generate"], "golden": golden}, sort_keys=False))


def _compute(out: Path, preset: dict, paths: dict[str, str], tiny: dict, wavs: list[dict]) -> tuple[dict, dict]:
    """The manifest's tensors and its ``info`` section, computed by salmonn-pl on the written files."""
    from salmonn_pl.audio.load import load_audio, prepare_official
    from salmonn_pl.data.collate import AudioBatch, SpeechCollator
    from salmonn_pl.generation import decode
    from salmonn_pl.generation.decode import GenerationSettings
    from salmonn_pl.generation.generate import generate
    from salmonn_pl.model.beats import FBANK_MEAN, FBANK_STD
    from salmonn_pl.audio.fbank import kaldi_fbank
    from salmonn_pl.model.salmonn import Salmonn
    from salmonn_pl.model.window_qformer import frames_per_window

    torch.set_num_threads(1)
    model = Salmonn(_salmonn_config(out, preset, paths)).float().eval()
    official = Salmonn(_salmonn_config(out, preset, paths, beats_batching="official")).float().eval()
    tok = model.tokenizer
    t: dict[str, torch.Tensor] = {
        "llm.pad_row.embed_tokens": model.llm.get_input_embeddings().weight[-1].detach().clone(),
        "llm.pad_row.lm_head": model.llm.get_output_embeddings().weight[-1].detach().clone(),
    }
    target = tiny["target_text"]
    examples, info_wavs = [], {}
    greedy, beam4 = GenerationSettings(max_new_tokens=10, num_beams=1), GenerationSettings(max_new_tokens=10, num_beams=4)
    for i, w in enumerate(wavs):
        prompt = PROMPT_TEMPLATE.format(PROMPT.format(w["instruction"]))
        example = {"id": w["name"], "audio": load_audio(out / w["file"]), "prompt": prompt, "text": "", "meta": {}}
        examples.append(example)
        batch = SpeechCollator()([example])
        raw = torch.from_numpy(prepare_official(example["audio"]))
        t[f"wav{i}.input_features"] = batch["spectrogram"]
        t[f"wav{i}.num_samples"] = torch.tensor(len(raw))
        entry = {"num_samples": len(raw), "prompt": prompt}
        with torch.no_grad():
            enc = model.encode_audio(AudioBatch.of(batch))
            if model.beats is not None:
                fbank = kaldi_fbank(raw * 2**15)
                t[f"wav{i}.beats_fbank"] = ((fbank - FBANK_MEAN) / (2 * FBANK_STD)).to(torch.float32)[None]
                float32 = ((kaldi_fbank(raw.float() * 2**15) - FBANK_MEAN) / (2 * FBANK_STD)).to(torch.float32)
                entry["fbank_if_computed_in_float32_max_abs_diff"] = (float32 - t[f"wav{i}.beats_fbank"][0]).abs().max().item()
                features, mask = model.beats.extract_features(raw[None], torch.zeros(1, len(raw), dtype=torch.bool))
                t[f"wav{i}.beats_features"], t[f"wav{i}.beats_padding_mask_out"] = features, mask
                entry["beats_tokens"] = features.shape[1]
        t[f"wav{i}.whisper_encoder_out"] = enc["whisper_out"]
        t[f"wav{i}.qformer_out"] = enc["qformer_out"]
        t[f"wav{i}.speech_embeds"] = speech = enc["audio_tokens"]
        before, after = model.split_prompt(prompt)
        t[f"wav{i}.prompt_before_ids"], t[f"wav{i}.prompt_after_ids"] = torch.tensor(before), torch.tensor(after)
        entry["prompt_before_pieces"], entry["prompt_after_pieces"] = tok.convert_ids_to_tokens(before), tok.convert_ids_to_tokens(after)
        inputs = model.assemble([prompt], speech)
        t[f"wav{i}.inputs_embeds"], t[f"wav{i}.attention_mask"] = inputs.inputs_embeds, inputs.attention_mask
        with torch.no_grad():
            llm_out = model.llm(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask, output_hidden_states=True)
        t[f"wav{i}.logits_last"] = llm_out.logits[:, -1]
        t[f"wav{i}.llm_last_hidden"] = llm_out.hidden_states[-1]
        g = generate(model, [prompt], speech, greedy).sequences[0]
        b = generate(model, [prompt], speech, beam4)
        t[f"wav{i}.gen_greedy_ids"] = torch.tensor([1, *g])
        t[f"wav{i}.gen_beam4_ids"] = torch.tensor([1, *b.sequences[0]])
        t[f"wav{i}.gen_beam4_sequence_score"] = torch.tensor(b.sequence_scores, dtype=torch.float32)
        entry.update(greedy_text=tok.decode(t[f"wav{i}.gen_greedy_ids"]), greedy_new_tokens=len(g), greedy_ends_with_eos=g[-1] == EOS,
                     beam4_text=tok.decode(t[f"wav{i}.gen_beam4_ids"]), beam4_new_tokens=len(b.sequences[0]),
                     beam4_ends_with_eos=b.sequences[0][-1] == EOS)
        for text, suffix in ((target, ""), (w["varlen_target"], "_varlen_target")):
            train = model.assemble([prompt], speech, [text], padding_side="right")
            t[f"wav{i}.train_labels{suffix}"] = train.labels
            with torch.no_grad():
                t[f"wav{i}.loss{suffix}"] = model.lm_loss(train)
        info_wavs[w["name"]] = entry

    batch = SpeechCollator()(examples)
    t["batch.padding_mask_num_true"] = batch["padding_mask"].sum(1)
    with torch.no_grad():
        enc = official.encode_audio(AudioBatch.of(batch))
        if official.beats is not None:
            features, mask = official.beats.extract_features(batch["raw_wav"], batch["padding_mask"])
            t["batch.beats_features"], t["batch.beats_padding_mask_out"] = features, mask
            for i, w in enumerate(wavs):
                info_wavs[w["name"]]["beats_batch_unmasked_tokens"] = int((~mask[i]).sum())
    t["batch.qformer_out"], t["batch.speech_embeds"] = enc["qformer_out"], enc["audio_tokens"]
    prompts = batch["prompt"]
    train = official.assemble(prompts, enc["audio_tokens"], [target] * len(prompts), padding_side="right")
    t["batch.train_inputs_embeds"], t["batch.train_attention_mask"], t["batch.train_labels"] = train.inputs_embeds, train.attention_mask, train.labels
    with torch.no_grad():
        logits = official.llm_logits(train)
        t["batch.loss"] = official.lm_loss(train)
    n_text = int((train.labels[0] != -100).sum()) + 1
    t["batch.train_logits_text"] = logits[:, -n_text:]
    varlen = official.assemble(prompts, enc["audio_tokens"], [w["varlen_target"] for w in wavs], padding_side="right")
    t["batch.train_labels_varlen_target"] = varlen.labels
    with torch.no_grad():
        t["batch.loss_varlen_target"] = official.lm_loss(varlen)
    gen_inputs = official.assemble(prompts, enc["audio_tokens"], padding_side="right")
    t["batch.gen_attention_mask"] = gen_inputs.attention_mask
    result = decode.generate(official.llm, gen_inputs.inputs_embeds, gen_inputs.attention_mask,
                             GenerationSettings(max_new_tokens=10, num_beams=1, stop_on_first_row_eos=True))
    width = max(len(s) for s in result.sequences)
    ids = torch.zeros(len(prompts), width + 1, dtype=torch.long)
    ids[:, 0] = 1
    for row, seq in enumerate(result.sequences):
        ids[row, 1 : 1 + len(seq)] = torch.tensor(seq)
    t["batch.gen_greedy_ids"] = ids

    n_windows = model.connector.tokens_for_frames() // preset["salmonn"]["num_speech_query_token"]
    gap = {w["name"]: (enc["audio_tokens"][i] - t[f"wav{i}.speech_embeds"][0]).abs().max().item() for i, w in enumerate(wavs)}
    main = {
        "config": "config.yaml",
        "pad_token_id": tok.pad_token_id,
        "len_tokenizer": len(tok),
        "llm_vocab_after_resize": model.llm.get_input_embeddings().weight.shape[0],
        "window_kernel_frames": frames_per_window(preset["salmonn"]["second_per_window"]),
        "window_stride_frames": frames_per_window(preset["salmonn"]["second_stride"]),
        "n_windows": n_windows,
        "speech_tokens": model.connector.tokens_for_frames(),
        "batch_vs_single_speech_embeds_max_abs_diff": gap,
        "batch_greedy_texts": tok.batch_decode(ids),
        "wavs": info_wavs,
    }
    cases = []
    for case in tiny["info"]["tokenizer_cases"]:
        ids_ = tok.encode(case["text"], add_special_tokens=case["add_special_tokens"])
        cases.append({"text": case["text"], "add_special_tokens": case["add_special_tokens"], "ids": ids_, "pieces": tok.convert_ids_to_tokens(ids_)})
    t = {k: v.detach().contiguous() for k, v in t.items()}
    return t, {"variants": {"main": main}, "tokenizer_cases": cases}


def write_golden_like(out: str | Path, name: str, preset: dict | None = None) -> Path:
    """Write the golden-like set ``name`` (a key of :data:`PRESETS`, or ``preset`` given) under ``out/name``."""
    if not (TINY_V1 / "manifest.json").is_file():
        raise FileNotFoundError(f"{TINY_V1}: the clips of the golden-like sets come from tiny-v1, which is missing")
    preset = {"name": name, **json.loads(json.dumps(preset or PRESETS[name]))}
    out = Path(out) / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tiny = json.loads((TINY_V1 / "manifest.json").read_text())
    tiny_config = yaml.safe_load((TINY_V1 / "config.yaml").read_text())
    wavs = _write_wavs(out, preset, tiny)
    paths = _write_model_files(out, preset)
    (out / "qformer_bert_config.json").write_text(json.dumps(_qformer_bert_config(preset), indent=1))
    shutil.copy(TINY_V1 / "prompts.json", out / "prompts.json")
    _write_config(out, preset, paths, tiny_config)
    tensors, info = _compute(out, preset, paths, tiny, wavs)
    save_file(tensors, str(out / "expected.safetensors"))
    manifest = {
        "description": "Golden-like fixtures written by salmonn-pl's scripts/make_golden_like.py (reference tensors from salmonn-pl)",
        "preset": {**{k: v for k, v in preset.items() if k != "stereo"},
                   "wavs": [[w["name"], w["sources"], w["stereo"]] for w in wavs],
                   "qformer_bert_config": _qformer_bert_config(preset)},
        "wavs": wavs,
        "generate_cfg": tiny["generate_cfg"],
        "target_text": tiny["target_text"],
        "prompt_template": PROMPT_TEMPLATE,
        "info": info,
        "tensors": [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in tensors.items()],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write the sets into (one subdirectory per preset)")
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS), help="only these presets (default: all)")
    args = parser.parse_args(argv)
    written = [write_golden_like(args.out, name) for name in args.preset or PRESETS]
    print("SALMONN_PL_GOLDEN=" + ":".join(str(p) for p in written))


if __name__ == "__main__":
    sys.exit(main())
