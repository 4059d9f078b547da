"""Window-level Q-Former: the connector between the two audio encoders and the LLM.

SALMONN normalises each encoder stream with its own LayerNorm, aligns them by frame *index*
(BEATs' 1496 tokens per 30 s are zero-padded to Whisper's 1500 frames after the LayerNorm; they are
not resampled in time), concatenates them on the channel axis, cuts the sequence into windows of
``round(1500 * seconds / 30)`` frames (17 frames = 0.333 s by default, the remainder is dropped),
and lets ``num_query_tokens`` learned queries cross-attend to each window. Every window therefore
yields ``num_query_tokens`` audio tokens for the LLM: 88 tokens per 30 s with the defaults.

The Q-Former itself is transformers' BLIP-2 Q-Former (queries only, cross-attention in every
layer), which is layer-for-layer the LAVIS BERT Q-Former the official code uses; see
``checkpoint.py`` for the key map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

# Whisper's encoder always sees 30 s of log-mel and emits 1500 frames (20 ms each).
WHISPER_FRAMES_PER_30S = 1500


@dataclass
class QFormerSettings:
    """Shape of the Q-Former. The official SALMONN uses bert-base-uncased's config with 2 layers."""

    hidden_size: int = 768
    num_hidden_layers: int = 2
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12


def frames_per_window(seconds: float) -> int:
    """Encoder frames in a window of ``seconds`` (official: ``round(1500 * seconds / 30)``)."""
    frames = round(WHISPER_FRAMES_PER_30S * seconds / 30.0)
    if frames < 1:
        raise ValueError(f"second_per_window/second_stride={seconds} gives windows of {frames} frames")
    return frames


class WindowQFormer(nn.Module):
    def __init__(
        self,
        whisper_width: int,
        beats_width: int | None,
        llm_width: int,
        num_query_tokens: int = 1,
        second_per_window: float = 0.333333,
        second_stride: float = 0.333333,
        window_level: bool = True,
        qformer: QFormerSettings | None = None,
    ):
        super().__init__()
        qformer = qformer or QFormerSettings()
        self.window_level = window_level
        self.kernel = frames_per_window(second_per_window)
        self.stride = frames_per_window(second_stride)
        self.num_query_tokens = num_query_tokens

        self.ln_speech = nn.LayerNorm(whisper_width)
        self.ln_audio = nn.LayerNorm(beats_width) if beats_width else None
        config = Blip2QFormerConfig(
            hidden_size=qformer.hidden_size,
            num_hidden_layers=qformer.num_hidden_layers,
            num_attention_heads=qformer.num_attention_heads,
            intermediate_size=qformer.intermediate_size,
            hidden_act=qformer.hidden_act,
            hidden_dropout_prob=qformer.hidden_dropout_prob,
            attention_probs_dropout_prob=qformer.attention_probs_dropout_prob,
            layer_norm_eps=qformer.layer_norm_eps,
            cross_attention_frequency=1,
            encoder_hidden_size=whisper_width + (beats_width or 0),
            use_qformer_text_input=False,
        )
        self.qformer = Blip2QFormerModel(config)
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, qformer.hidden_size))
        self.query_tokens.data.normal_(mean=0.0, std=0.02)
        self.proj = nn.Linear(qformer.hidden_size, llm_width)
        # A connector trained from scratch must not drown the prompt: with nn.Linear's default init
        # the audio tokens (the Q-Former output is LayerNorm-ed, norm ~sqrt(width)) come out an order
        # of magnitude larger than word embeddings, and a pretrained LLM then learns to ignore them.
        # This init gives each token coordinate std ~0.02, LLaMA's embedding init. Loading a released
        # checkpoint overwrites it.
        nn.init.normal_(self.proj.weight, std=0.02 / qformer.hidden_size**0.5)
        nn.init.zeros_(self.proj.bias)

    def tokens_for_frames(self, frames: int = WHISPER_FRAMES_PER_30S) -> int:
        """Number of audio tokens produced for ``frames`` encoder frames."""
        if not self.window_level:
            return self.num_query_tokens
        return ((frames - self.kernel) // self.stride + 1) * self.num_query_tokens

    def fuse(
        self,
        whisper_out: torch.Tensor,
        beats_out: torch.Tensor | None,
        beats_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """LayerNorm each stream, align by index and concatenate: ``[B, T, whisper_width + beats_width]``.

        ``beats_padding_mask`` (True = padded token) zeroes BEATs tokens *after* ``ln_audio``, which
        is exactly what a clip alone sees: its missing tokens are the zero padding added here.
        """
        speech = self.ln_speech(whisper_out)
        if beats_out is None or self.ln_audio is None:
            return speech
        audio = self.ln_audio(beats_out)
        if beats_padding_mask is not None:
            audio = audio.masked_fill(beats_padding_mask.unsqueeze(-1), 0.0)
        if audio.size(1) < speech.size(1):
            audio = F.pad(audio, (0, 0, 0, speech.size(1) - audio.size(1)))
        elif audio.size(1) > speech.size(1):
            speech = F.pad(speech, (0, 0, 0, audio.size(1) - speech.size(1)))
        return torch.cat((speech, audio), dim=-1)

    def windows(self, fused: torch.Tensor) -> torch.Tensor:
        """``[B, T, C]`` -> ``[B * n_windows, kernel, C]`` (frames past the last full window are dropped)."""
        if not self.window_level:
            return fused
        B, T, C = fused.shape
        if T < self.kernel:
            raise ValueError(f"{T} encoder frames are fewer than one window of {self.kernel} frames")
        win = fused.unfold(dimension=1, size=self.kernel, step=self.stride)  # [B, n_windows, C, kernel]
        return win.permute(0, 1, 3, 2).reshape(-1, self.kernel, C)

    def forward(
        self,
        whisper_out: torch.Tensor,
        beats_out: torch.Tensor | None = None,
        beats_padding_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Audio tokens ``[B, n_windows * num_query_tokens, llm_width]`` (+ Q-Former internals)."""
        fused = self.fuse(whisper_out, beats_out, beats_padding_mask)
        B = fused.size(0)
        frames = self.windows(fused)
        queries = self.query_tokens.expand(frames.size(0), -1, -1)
        out = self.qformer(
            query_embeds=queries,
            encoder_hidden_states=frames,
            output_attentions=output_attentions,
            return_dict=True,
        )
        hidden = out.last_hidden_state  # [B * n_windows, num_query_tokens, qformer_width]
        tokens = self.proj(hidden).reshape(B, -1, self.proj.out_features)
        result = {"audio_tokens": tokens, "qformer_out": hidden}
        if output_attentions:
            result["cross_attentions"] = out.cross_attentions
        return result
