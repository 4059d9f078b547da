"""A tiny random Qwen2-Audio written in the official on-disk format.

The tests need a Qwen2-Audio without downloading ``Qwen/Qwen2-Audio-7B-Instruct``. This factory writes
a directory laid out like the released one -- ``config.json`` + ``model.safetensors`` +
``generation_config.json`` from ``Qwen2AudioForConditionalGeneration.save_pretrained``, and
``tokenizer.json`` / ``tokenizer_config.json`` / ``processor_config.json`` / ``chat_template.jinja``
from ``Qwen2AudioProcessor.save_pretrained`` -- so it is loaded by the same ``from_pretrained`` calls:

* audio encoder: the real architecture (Whisper-like, 128 mel bins, 1500 positions = 30 s), only
  32 wide and 2 layers deep,
* LLM: a Qwen2 decoder 64 wide, 2 layers, grouped-query attention (4 heads, 2 key/value heads),
* tokenizer: a byte-level BPE trained here on a few SAKURA-like sentences with Qwen2's pre-tokenizer,
  plus the special tokens the chat template and the processor use (``<|im_start|>``, ``<|AUDIO|>``, ...),
* chat template: Qwen2-Audio-Instruct's (the processor's ``default_chat_template``).

Random weights at the default initialisation give nearly uniform logits (every greedy step picks the
same token), so the weights are drawn wider: greedy and beam outputs then vary with the audio and the
question, and a wrong batching shows up as a different token.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    Qwen2Tokenizer,
    WhisperFeatureExtractor,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

# Qwen2-Audio-Instruct's special tokens; <|endoftext|> doubles as padding, <|im_end|> ends a turn.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]

_CORPUS = [
    "You are a helpful assistant.",
    "system user assistant Audio 1: 2: 3:",
    "Which animal do you think is the most likely match for the sound? (a) crow (b) cat (c) sheep (d) dog",
    "Which of the listed vocalizations best resembles it? (a) Croaking (b) Barking (c) Chirping (d) Mooing",
    "What is the emotion of the speaker? (a) happy (b) sad (c) angry (d) neutral (e) fearful",
    "What is the gender of the speaker in the recording? (a) male (b) female",
    "Which language is spoken in the audio? (a) English (b) German (c) French (d) Japanese (e) Chinese",
    "Which country has the spoken language as an official language? (a) Spain (b) Italy (c) Korea",
    "The answer is (b) cat. The speaker sounds happy. It is a female voice speaking German.",
    "Listen to the audio and choose the best answer from the options given below.",
]


def tiny_qwen2_tokenizer(vocab_size: int = 400) -> Qwen2Tokenizer:
    """A byte-level BPE with Qwen2's pre-tokenizer and Qwen2-Audio's special tokens (ids after the BPE)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    # The full byte alphabet keeps every text encodable, as in Qwen2's 151k vocabulary.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=trained["vocab"], merges=merges)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tokenizer


def write_tiny_qwen2_audio(directory: str | Path, seed: int = 0, weight_std: float = 0.3, eos_boost: float = 2.0
) -> Path:
    """Write a random tiny Qwen2-Audio (model + processor) to ``directory`` and return its path."""
    directory = Path(directory)
    tokenizer = tiny_qwen2_tokenizer()
    feature_extractor = WhisperFeatureExtractor(feature_size=128)  # Qwen2-Audio's: 128 mel bins, 30 s, 16 kHz
    processor = Qwen2AudioProcessor(
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=Qwen2AudioProcessor.default_chat_template.fget(None),
    )
    end_of_text, end_of_turn = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    config = Qwen2AudioConfig(
        audio_config={
            "model_type": "qwen2_audio_encoder",
            "num_mel_bins": 128,
            "d_model": 32,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "max_source_positions": 1500,
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "tie_word_embeddings": False,
            "bos_token_id": end_of_text,
            "eos_token_id": end_of_turn,
            "pad_token_id": end_of_text,
        },
        audio_token_index=processor.audio_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "embed_positions" not in name:
                p.normal_(0.0, weight_std)
        # A louder end-of-turn row lets some answers end before max_new_tokens, so that the tests see
        # finished and unfinished answers side by side in one batch.
        model.lm_head.weight[end_of_turn] *= eos_boost
    model.generation_config = GenerationConfig(
        bos_token_id=end_of_text, eos_token_id=[end_of_turn, end_of_text], pad_token_id=end_of_text
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
