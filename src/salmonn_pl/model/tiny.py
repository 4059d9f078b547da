"""A tiny random SALMONN written in the official on-disk formats.

The demo, the tests and the CPU benchmarks need a model without downloading anything. This factory
writes exactly the files a user points salmonn-pl at for the real model, only small:

* ``whisper/``: a Hugging Face Whisper directory (``WhisperForConditionalGeneration``),
* ``llama/``: a Hugging Face LLaMA directory in float16 with a SentencePiece ``tokenizer.model``
  (byte fallback, LLaMA's special ids: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2),
* ``beats.pt``: an official BEATs checkpoint ``{'cfg': ..., 'model': ...}``,
* ``salmonn.pth``: the trainable weights under the official SALMONN key names,

so that every one of them goes through the same loading code as the released checkpoints.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import torch

from salmonn_pl.data.synthetic import QUESTION_STEMS, SOUND_CLASSES
from salmonn_pl.model.beats import BEATs, BEATsConfig
from salmonn_pl.model.tokenizer import SalmonnTokenizer
from salmonn_pl.model.window_qformer import QFormerSettings

ANIMALS = ["dog", "cat", "cow", "pig", "frog", "rooster", "hen", "sheep", "horse", "crow", "bird", "insects"]
EMOTIONS = ["happy", "sad", "angry", "neutral", "fearful", "disgusted", "surprised"]
LANGUAGES = ["English", "German", "French", "Spanish", "Italian", "Japanese", "Korean", "Chinese"]
COUNTRIES = ["Germany", "France", "Spain", "Italy", "Japan", "Korea", "China", "Austria", "Mexico", "Canada"]
SOUNDS = ["tone", "low tone", "high tone", "noise burst", "rising chirp", "falling chirp", "clicks", "silence"]
QUESTIONS = [
    "What animal makes the sound in the audio?",
    "Which emotion does the speaker express?",
    "What is the gender of the speaker?",
    "Which language is spoken in the audio?",
    "Which country has the spoken language as an official language?",
    "Which sound do you hear in the audio clip?",
    "Listen to the audio and choose the best answer.",
]


@dataclass
class TinySizes:
    whisper_width: int = 64
    whisper_layers: int = 2
    llm_width: int = 64
    llm_layers: int = 2
    llm_heads: int = 4
    beats_width: int = 32
    beats_layers: int = 2
    qformer_width: int = 32
    qformer_layers: int = 2
    vocab_size: int = 1000


def tiny_qformer_settings(sizes: TinySizes | None = None) -> QFormerSettings:
    """The Q-Former shape the factory writes (a config pointing at tiny files must repeat it)."""
    sizes = sizes or TinySizes()
    return QFormerSettings(hidden_size=sizes.qformer_width, num_attention_heads=4, intermediate_size=2 * sizes.qformer_width, num_hidden_layers=sizes.qformer_layers)


def _corpus(seed: int, n: int = 3000) -> list[str]:
    """Question/answer dialogues in the SALMONN prompt format.

    Options come from SAKURA-like vocabularies and from the synthetic task's sound classes, so a
    tiny LLM pretrained on it answers in the benchmark's format and knows the option words; which
    option is right is uniform, so it has no prior to exploit. In half of the synthetic-sound
    dialogues the speech slot describes the sound in words (``<Speech> rising chirp </Speech>``) and
    the answer is the option that the description names (single-hop) or its everyday source
    (multi-hop): the LLM learns to answer from what sits in the speech slot and what makes which
    sound, the way Vicuna brings reading and world knowledge to SALMONN. The audio itself never
    appears, so fitting the connector still has to teach the model to hear.
    """
    rng = random.Random(seed)
    words = ANIMALS + EMOTIONS + LANGUAGES + COUNTRIES + SOUNDS + ["male", "female", "man", "woman"]
    vocabularies = [words, [c.name for c in SOUND_CLASSES], [c.source for c in SOUND_CLASSES]]
    stems = QUESTIONS + [q for hop in QUESTION_STEMS.values() for q in hop]
    lines = []
    for _ in range(n):
        if rng.random() < 0.5:
            sound = rng.choice(SOUND_CLASSES)
            hop = rng.choice(("single", "multi"))
            answer = sound.name if hop == "single" else sound.source
            others = [c.name if hop == "single" else c.source for c in SOUND_CLASSES if c is not sound]
            options = rng.sample(others, 3)
            options.insert(rng.randrange(4), answer)
            slot, stem = f" {sound.name} ", rng.choice(QUESTION_STEMS[hop])
        else:
            options = rng.sample(rng.choice(vocabularies), 4)
            answer, slot, stem = rng.choice(options), "", rng.choice(stems)
        k = options.index(answer)
        opts = " ".join(f"({'abcd'[i]}) {o}" for i, o in enumerate(options))
        lines.append(f"USER: <Speech>{slot}</Speech> {stem} {opts}\nASSISTANT: ({'abcd'[k]}) {answer}")
    lines += [f"The speaker sounds {rng.choice(EMOTIONS)}. I cannot determine the answer. It is a {rng.choice(SOUNDS)}." for _ in range(n // 4)]
    return lines


def pretrain_llm(llm, tokenizer: SalmonnTokenizer, lines: list[str], steps: int, seed: int, batch_size: int = 32, lr: float = 3e-3) -> list[float]:
    """A few hundred steps of next-token training on ``lines`` (CPU seconds); returns the losses.

    A random LLM would have to learn the answer format and the option words from the audio task
    itself; a briefly pretrained one, like Vicuna for SALMONN, only has to learn to listen.
    """
    generator = torch.Generator().manual_seed(seed)
    encoded = [[tokenizer.bos_token_id, *tokenizer.encode(line), tokenizer.eos_token_id] for line in lines]
    optimizer = torch.optim.AdamW(llm.parameters(), lr=lr, weight_decay=0.0)
    llm.train()
    losses = []
    for _ in range(steps):
        rows = [encoded[i] for i in torch.randint(len(encoded), (batch_size,), generator=generator).tolist()]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [tokenizer.eos_token_id] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        labels = ids.masked_fill(mask == 0, -100)
        loss = llm(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def train_tokenizer(out_dir: Path, vocab_size: int, seed: int) -> int:
    """Train ``tokenizer.model`` (at most ``vocab_size`` pieces) and its configs; returns the piece count."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(seed)),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        num_threads=1,
        minloglevel=2,
    )
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    special = {t: {"content": c, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False} for t, c in [("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>")]}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {"add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False, "model_max_length": 2048, "pad_token": None, "tokenizer_class": "LlamaTokenizer", **{k: {"__type": "AddedToken", **v} for k, v in special.items()}}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()


def write_tiny_salmonn(
    out_dir: str | Path,
    seed: int = 0,
    sizes: TinySizes | None = None,
    with_beats: bool = True,
    pretrain_steps: int = 0,
) -> dict[str, Path]:
    """Write a tiny SALMONN under ``out_dir``; returns the paths a config needs.

    Weights are random; with ``pretrain_steps`` the LLM is first trained on question/answer text
    (see :func:`pretrain_llm`) so that it writes answers in the benchmark's format.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from salmonn_pl.model.checkpoint import export_official_checkpoint
    from salmonn_pl.model.salmonn import Salmonn, SalmonnConfig
    sizes = sizes or TinySizes()
    out = Path(out_dir)
    torch.manual_seed(seed)

    whisper_dir = out / "whisper"
    whisper = WhisperForConditionalGeneration(
        WhisperConfig(
            d_model=sizes.whisper_width,
            encoder_layers=sizes.whisper_layers,
            decoder_layers=1,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=2 * sizes.whisper_width,
            decoder_ffn_dim=2 * sizes.whisper_width,
            vocab_size=100,
            num_mel_bins=80,
            max_source_positions=1500,
            max_target_positions=64,
            decoder_start_token_id=98,
            pad_token_id=99,
            bos_token_id=99,
            eos_token_id=99,
        )
    )
    whisper.save_pretrained(whisper_dir)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(whisper_dir)

    llm_dir = out / "llama"
    llm_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = train_tokenizer(llm_dir, sizes.vocab_size, seed)
    llm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=sizes.llm_width,
            intermediate_size=2 * sizes.llm_width,
            num_hidden_layers=sizes.llm_layers,
            num_attention_heads=sizes.llm_heads,
            max_position_embeddings=2048,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        )
    )
    if pretrain_steps:
        pretrain_llm(llm, SalmonnTokenizer(llm_dir), _corpus(seed + 1), pretrain_steps, seed)
    llm.eval().half().save_pretrained(llm_dir)

    paths = {"llm_path": llm_dir, "whisper_path": whisper_dir}
    if with_beats:
        cfg = dict(
            encoder_layers=sizes.beats_layers, encoder_embed_dim=sizes.beats_width, encoder_ffn_embed_dim=2 * sizes.beats_width,
            encoder_attention_heads=4, activation_fn="gelu", dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
            encoder_layerdrop=0.0, dropout_input=0.0, layer_norm_first=False, conv_bias=False, conv_pos=128, conv_pos_groups=16,
            relative_position_embedding=True, num_buckets=320, max_distance=800, gru_rel_pos=True, deep_norm=True,
            input_patch_size=16, layer_wise_gradient_decay_ratio=0.6, embed_dim=16, finetuned_model=True, predictor_dropout=0.0,
            predictor_class=527,
        )
        beats = BEATs(BEATsConfig.from_dict(cfg))
        torch.save({"cfg": cfg, "model": beats.state_dict()}, out / "beats.pt")
        paths["beats_path"] = out / "beats.pt"

    model = Salmonn(
        SalmonnConfig(
            llm_path=str(llm_dir),
            whisper_path=str(whisper_dir),
            beats_path=str(paths.get("beats_path", "")),
            qformer=tiny_qformer_settings(sizes),
            llm_dtype="float32",
        )
    )
    # peft initialises LoRA B to zero; random B makes the LoRA path (and its scale knob) observable.
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    export_official_checkpoint(model, out / "salmonn.pth")
    paths["ckpt"] = out / "salmonn.pth"
    return paths
