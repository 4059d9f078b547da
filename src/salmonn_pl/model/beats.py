"""BEATs audio encoder, state-dict compatible with the official checkpoints (``BEATs_iter3_plus_AS2M*.pt``).

Pipeline (official ``BEATs.extract_features``):

1. ``preprocess``: Kaldi fbank (128 mel, 25 ms / 10 ms) of ``wav * 2**15``, normalised with the
   AudioSet statistics, computed in the waveform's dtype and cast to float32 at the end;
2. patch embedding: a 16x16 stride-16 convolution over (frames, mel) gives ``frames // 16`` time
   patches x 8 frequency patches, flattened *time-major / frequency-minor* into tokens
   (token ``t`` is time patch ``t // 8``, frequency patch ``t % 8``), then a LayerNorm;
3. a wav2vec2-style Transformer: convolutional positional embedding (weight-normed grouped conv),
   post- or pre-LayerNorm layers (optionally DeepNorm), T5-style bucketed relative position bias
   shared by all layers, gated per query (``gru_rel_pos``);
4. fine-tuned checkpoints add a linear ``predictor``: mean-pooled sigmoid class probabilities.

Attention uses ``F.scaled_dot_product_attention``. To avoid fp16 overflow the official code scales
the queries down by 32, subtracts each row's max logit and scales back up before the softmax;
softmax is shift-invariant, so the result is the same, and the fused kernel is fp16/bf16-safe.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache, partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salmonn_pl.audio.fbank import kaldi_fbank_batch, num_fbank_frames

logger = logging.getLogger(__name__)

# AudioSet fbank statistics used by every released BEATs checkpoint.
FBANK_MEAN = 15.41663
FBANK_STD = 6.55582
NUM_MEL_BINS = 128
# Kaldi fbank expects int16-scaled samples.
INT16_SCALE = 2**15


@dataclass
class BEATsConfig:
    """The ``cfg`` dict stored in official BEATs checkpoints (field names and defaults as upstream)."""

    input_patch_size: int = -1
    embed_dim: int = 512
    conv_bias: bool = False

    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"

    layer_wise_gradient_decay_ratio: float = 1.0
    layer_norm_first: bool = False
    deep_norm: bool = False

    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0

    conv_pos: int = 128
    conv_pos_groups: int = 16

    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False

    finetuned_model: bool = False
    predictor_dropout: float = 0.1
    predictor_class: int = 527

    # Keys of the checkpoint's cfg that this implementation does not use, kept for reference.
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, cfg: Mapping) -> BEATsConfig:
        known = {f.name for f in fields(cls)} - {"extra"}
        config = cls(**{k: v for k, v in cfg.items() if k in known})
        config.extra = {k: v for k, v in cfg.items() if k not in known}
        if config.extra:
            logger.debug("BEATs config keys not used: %s", sorted(config.extra))
        return config

    def validate(self) -> None:
        if self.input_patch_size <= 0 or NUM_MEL_BINS % self.input_patch_size:
            raise ValueError(
                f"BEATs input_patch_size={self.input_patch_size} must be a positive divisor of {NUM_MEL_BINS}"
            )
        if self.deep_norm and self.layer_norm_first:
            raise ValueError("BEATs deep_norm and layer_norm_first cannot both be set")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ValueError(
                f"BEATs encoder_embed_dim={self.encoder_embed_dim} is not divisible by "
                f"encoder_attention_heads={self.encoder_attention_heads}"
            )


# --------------------------------------------------------------------------- building blocks


class _ScaleGradient(torch.autograd.Function):
    """Identity forward, gradient times ``scale`` backward (layer-wise gradient decay)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


class WeightNormConv1d(nn.Module):
    """Conv1d whose weight is ``weight_v`` rescaled to norm ``weight_g`` per kernel tap (``dim=2``).

    Keeps the parameter names of the deprecated ``nn.utils.weight_norm(conv, dim=2)`` used upstream.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        self.groups = groups
        weight = torch.empty(channels, channels // groups, kernel_size)
        nn.init.normal_(weight, mean=0.0, std=math.sqrt(4.0 / (kernel_size * channels)))
        self.weight_g = nn.Parameter(weight.norm(dim=(0, 1), keepdim=True))
        self.weight_v = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        if x.device.type == "cpu":
            # The CPU bf16 kernel for this grouped long-kernel conv returns wrong values (errors of the
            # size of the output itself, seen with torch 2.13), so the CPU computes it in float32.
            with torch.autocast(device_type="cpu", enabled=False):
                out = F.conv1d(x.float(), weight.float(), self.bias.float(), padding=self.padding, groups=self.groups)
            return out.to(x.dtype)
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    """Drops the extra output step an even-sized kernel produces, keeping the input length."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        return x[..., : x.size(-1) - self.remove]


class GLULinear(nn.Module):
    """Linear to ``2 * out`` features, first half gated by swish of the second (``activation_fn='glu'``)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * out_features)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.linear(x).chunk(2, dim=-1)
        return value * F.silu(gate)


def _gelu_in_float32(x: Tensor) -> Tensor:
    return F.gelu(x.float()).type_as(x)


def _identity(x: Tensor) -> Tensor:
    return x


def activation_function(name: str) -> Callable[[Tensor], Tensor]:
    """The feed-forward activation named by ``activation_fn`` (upstream fairseq names)."""
    match name:
        case "relu":
            return F.relu
        case "gelu":
            return _gelu_in_float32
        case "gelu_fast" | "gelu_accurate":
            return partial(F.gelu, approximate="tanh")
        case "tanh":
            return torch.tanh
        case "linear" | "glu":  # for "glu" the gating happens inside GLULinear
            return _identity
    raise ValueError(
        f"BEATs activation_fn={name!r} is not one of relu, gelu, gelu_fast, gelu_accurate, tanh, linear, glu"
    )


@lru_cache(maxsize=16)
def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> Tensor:
    """Bidirectional T5 buckets [length, length] of ``key - query`` positions, on the CPU.

    Half of the buckets are for positive offsets; within each half, offsets below a quarter of
    ``num_buckets`` get their own bucket and larger ones share log-spaced buckets up to
    ``max_distance``. Computed in float32 on the CPU exactly like upstream so the integer buckets
    agree (a different log implementation could flip a boundary case).
    """
    positions = torch.arange(length, dtype=torch.long)
    relative = positions[None, :] - positions[:, None]
    half = num_buckets // 2
    buckets = (relative > 0).to(torch.long) * half
    distance = relative.abs()
    max_exact = half // 2
    log_bucket = max_exact + (
        torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).to(torch.long)
    log_bucket = torch.clamp(log_bucket, max=half - 1)
    return buckets + torch.where(distance < max_exact, distance, log_bucket)


# --------------------------------------------------------------------------- transformer


class BEATsAttention(nn.Module):
    """Self-attention with an optional shared relative position bias and per-query bias gate."""

    def __init__(self, config: BEATsConfig, relative_attention_bias: nn.Embedding | None) -> None:
        super().__init__()
        dim, heads = config.encoder_embed_dim, config.encoder_attention_heads
        self.num_heads = heads
        self.head_dim = dim // heads
        self.dropout = config.attention_dropout
        self.num_buckets = config.num_buckets
        self.max_distance = config.max_distance
        # Upstream registers one Embedding per layer, then replaces layers 1..N-1's by layer 0's;
        # sharing the module keeps every layer's state-dict key while storing one table.
        if relative_attention_bias is not None:
            self.relative_attention_bias = relative_attention_bias
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gru_rel_pos = config.gru_rel_pos
        if self.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def position_bias(self, length: int) -> Tensor:
        """Relative position bias [heads, length, length] from this layer's bucket embedding."""
        buckets = relative_position_buckets(length, self.num_buckets, self.max_distance)
        weight = self.relative_attention_bias.weight
        return F.embedding(buckets.to(weight.device), weight).permute(2, 0, 1)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None, position_bias: Tensor | None) -> Tensor:
        batch, length, dim = x.shape

        def split_heads(t: Tensor) -> Tensor:
            return t.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        q = split_heads(self.q_proj(x))
        k = split_heads(self.k_proj(x))
        v = split_heads(self.v_proj(x))

        attn_bias: Tensor | None = None
        if position_bias is not None:
            attn_bias = position_bias.to(q.dtype).unsqueeze(0)
            if self.gru_rel_pos:
                # Each query scales the shared bias by a gate computed from its own (unscaled) projection.
                gates = torch.sigmoid(self.grep_linear(q).view(batch, self.num_heads, length, 2, 4).sum(-1))
                gate_a, gate_b = gates.chunk(2, dim=-1)
                attn_bias = (gate_a * (gate_b * self.grep_a.to(q.dtype) - 1.0) + 2.0) * attn_bias
        if key_padding_mask is not None:
            # A clip with no valid token would give an all -inf row (NaN); its outputs are padding
            # anyway, so it attends to everything instead.
            key_padding_mask = key_padding_mask & ~key_padding_mask.all(dim=-1, keepdim=True)
            padding_bias = torch.zeros(key_padding_mask.shape, dtype=q.dtype, device=q.device)
            padding_bias = padding_bias.masked_fill(key_padding_mask, float("-inf"))[:, None, None, :]
            if attn_bias is None:
                attn_bias = padding_bias
            elif self.gru_rel_pos:
                # The gated bias is this call's own [B, heads, T, T] tensor: add in place rather than
                # allocate a second one of that size (the largest tensor of the encoder).
                attn_bias.add_(padding_bias)
            else:
                attn_bias = attn_bias + padding_bias

        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=None if attn_bias is None else attn_bias.to(q.dtype),
            dropout_p=self.dropout if self.training else 0.0,
            scale=self.head_dim**-0.5,
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


class BEATsLayer(nn.Module):
    """Transformer layer: pre-LN, or post-LN with the DeepNorm residual scale ``(2 * layers) ** 0.25``."""

    def __init__(self, config: BEATsConfig, relative_attention_bias: nn.Embedding | None) -> None:
        super().__init__()
        dim, ffn_dim = config.encoder_embed_dim, config.encoder_ffn_embed_dim
        self.activation = activation_function(config.activation_fn)
        self.self_attn = BEATsAttention(config, relative_attention_bias)
        self.dropout1 = nn.Dropout(config.dropout)
        self.dropout2 = nn.Dropout(config.activation_dropout)
        self.dropout3 = nn.Dropout(config.dropout)
        self.layer_norm_first = config.layer_norm_first
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = GLULinear(dim, ffn_dim) if config.activation_fn == "glu" else nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.residual_scale = math.pow(2 * config.encoder_layers, 0.25) if config.deep_norm else 1.0

    def feed_forward(self, x: Tensor) -> Tensor:
        return self.dropout3(self.fc2(self.dropout2(self.activation(self.fc1(x)))))

    def forward(self, x: Tensor, key_padding_mask: Tensor | None, position_bias: Tensor | None) -> Tensor:
        if self.layer_norm_first:
            x = x + self.dropout1(self.self_attn(self.self_attn_layer_norm(x), key_padding_mask, position_bias))
            return x + self.feed_forward(self.final_layer_norm(x))
        attended = self.dropout1(self.self_attn(x, key_padding_mask, position_bias))
        x = self.self_attn_layer_norm(x * self.residual_scale + attended)
        return self.final_layer_norm(x * self.residual_scale + self.feed_forward(x))


class BEATsEncoder(nn.Module):
    """Convolutional positional embedding followed by the Transformer layers (batch-first)."""

    def __init__(self, config: BEATsConfig) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.dropout = config.dropout
        self.layerdrop = config.encoder_layerdrop
        self.gradient_decay = config.layer_wise_gradient_decay_ratio
        self.layer_norm_first = config.layer_norm_first
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(dim, config.conv_pos, config.conv_pos_groups), SamePad(config.conv_pos), nn.GELU()
        )
        shared_bias = (
            nn.Embedding(config.num_buckets, config.encoder_attention_heads)
            if config.relative_position_embedding
            else None
        )
        self.layers = nn.ModuleList(BEATsLayer(config, shared_bias) for _ in range(config.encoder_layers))
        self.relative_position_embedding = config.relative_position_embedding
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        if padding_mask is not None:
            # Zeroed padding doubles as the positional conv's zero padding past a clip's end.
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = F.dropout(x, p=self.dropout, training=self.training)

        position_bias = self.layers[0].self_attn.position_bias(x.size(1)) if self.relative_position_embedding else None
        for layer in self.layers:
            if self.gradient_decay != 1.0:
                x = _ScaleGradient.apply(x, self.gradient_decay)
            if self.training and self.layerdrop > 0 and torch.rand(()).item() < self.layerdrop:
                continue
            x = layer(x, padding_mask, position_bias)

        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x


# --------------------------------------------------------------------------- BEATs


def official_token_padding_mask(padding_mask: Tensor, num_positions: int) -> Tensor:
    """Upstream ``BEATs.forward_padding_mask``: a position is padding iff all its samples are.

    The [B, N] mask is cut into ``num_positions`` equal consecutive groups (the last
    ``N % num_positions`` entries dropped), i.e. it treats positions as purely temporal and evenly
    spread. Applied to fbank frames it ignores the 25 ms window overlap; applied to BEATs tokens it
    ignores that tokens are time-major / frequency-minor (8 tokens share one 16-frame time patch),
    so some tokens of real audio are masked and some tokens of padding are not. Reproduced for
    parity; ``BEATs.extract_features_per_clip`` builds the exact mask instead.
    """
    extra = padding_mask.size(1) % num_positions
    if extra > 0:
        padding_mask = padding_mask[:, :-extra]
    return padding_mask.view(padding_mask.size(0), num_positions, -1).all(-1)


class BEATs(nn.Module):
    """BEATs encoder with the official parameter names (``load_state_dict(strict=True)`` on official checkpoints)."""

    def __init__(self, config: BEATsConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.patch_size = config.input_patch_size
        self.post_extract_proj = (
            nn.Linear(config.embed_dim, config.encoder_embed_dim)
            if config.embed_dim != config.encoder_embed_dim
            else None
        )
        self.patch_embedding = nn.Conv2d(
            1, config.embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=config.conv_bias
        )
        self.dropout_input = nn.Dropout(config.dropout_input)
        self.encoder = BEATsEncoder(config)
        self.layer_norm = nn.LayerNorm(config.embed_dim)
        if config.finetuned_model:
            self.predictor_dropout = nn.Dropout(config.predictor_dropout)
            self.predictor = nn.Linear(config.encoder_embed_dim, config.predictor_class)
        else:
            self.predictor = None

    @property
    def output_dim(self) -> int:
        return self.config.encoder_embed_dim

    @property
    def tokens_per_time_patch(self) -> int:
        return NUM_MEL_BINS // self.patch_size

    def output_lengths(self, wav_lengths: Tensor) -> Tensor:
        """Tokens :meth:`extract_features_per_clip` gives clips of ``wav_lengths`` samples: one per
        frequency patch of every whole ``patch_size``-frame time patch of the clip's fbank (1496 for 30 s).

        Lets a caller that skips the encoder (an ablation that zeroes its output) know the shape.
        """
        return (num_fbank_frames(wav_lengths) // self.patch_size) * self.tokens_per_time_patch

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> BEATs:
        """Load an official ``{'cfg': ..., 'model': ...}`` BEATs checkpoint; returned in eval mode."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"BEATs checkpoint {path} does not exist")
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as error:  # pickle/zip errors have many types; all mean "not a checkpoint we can read"
            raise ValueError(f"{path} is not a readable BEATs checkpoint: {error}") from error
        if not isinstance(checkpoint, Mapping) or not {"cfg", "model"} <= checkpoint.keys():
            found = sorted(checkpoint.keys()) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
            raise ValueError(f"{path} is not a BEATs checkpoint: expected a dict with 'cfg' and 'model', found {found}")
        try:
            model = cls(BEATsConfig.from_dict(checkpoint["cfg"]))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: invalid BEATs cfg: {error}") from error
        try:
            model.load_state_dict(checkpoint["model"], strict=True)
        except RuntimeError as error:
            raise ValueError(f"{path}: weights do not match its BEATs cfg: {error}") from error
        return model.eval()

    # ------------------------------------------------------------------ features

    def _normalise(self, fbank: Tensor) -> Tensor:
        return ((fbank - FBANK_MEAN) / (2 * FBANK_STD)).to(torch.float32)

    def preprocess(self, source: Tensor) -> Tensor:
        """Normalised Kaldi fbank [B, T, 128] float32 of ``source`` [B, N] (computed in ``source``'s dtype)."""
        fbank, _ = kaldi_fbank_batch(source * INT16_SCALE, num_mel_bins=NUM_MEL_BINS)
        return self._normalise(fbank)

    def _patch_tokens(self, fbank: Tensor) -> Tensor:
        """[B, T, 128] fbank -> [B, (T // patch) * (128 // patch), embed_dim], time-major / frequency-minor."""
        if fbank.size(1) < self.patch_size:
            raise ValueError(
                f"audio too short for BEATs: {fbank.size(1)} fbank frames, fewer than one {self.patch_size}-frame "
                f"patch (at 16 kHz a clip needs at least {400 + 160 * (self.patch_size - 1)} samples)"
            )
        # The fbank stays float32 (as upstream); a model cast to half precision needs it in its dtype.
        fbank = fbank.to(self.patch_embedding.weight.dtype)
        patches = self.patch_embedding(fbank.unsqueeze(1))  # [B, E, T // p, 128 // p]
        return self.layer_norm(patches.flatten(2).transpose(1, 2))

    def _encode(self, tokens: Tensor, token_padding_mask: Tensor | None) -> Tensor:
        if self.post_extract_proj is not None:
            tokens = self.post_extract_proj(tokens)
        return self.encoder(self.dropout_input(tokens), padding_mask=token_padding_mask)

    def _class_probabilities(self, x: Tensor, token_padding_mask: Tensor | None) -> Tensor:
        """Sigmoid of the predictor logits averaged over the unmasked tokens: [B, predictor_class]."""
        logits = self.predictor(self.predictor_dropout(x))
        if token_padding_mask is not None and token_padding_mask.any():
            logits = logits.masked_fill(token_padding_mask.unsqueeze(-1), 0.0).sum(dim=1)
            logits = logits / (~token_padding_mask).sum(dim=1, keepdim=True)
        else:
            logits = logits.mean(dim=1)
        return torch.sigmoid(logits)

    def extract_features(
        self,
        source: Tensor,
        padding_mask: Tensor | None = None,
        feature_only: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Official batched path: ``(features [B, T', D], token_padding_mask [B, T'] or None)``.

        ``source`` [B, N] is right-padded audio in [-1, 1]; ``padding_mask`` [B, N] is True on
        padding. Every row's fbank is computed on the full padded row and the token mask comes from
        ``official_token_padding_mask``, exactly as upstream, so a clip's features depend on how
        much padding the batch adds (see ``extract_features_per_clip``). With
        ``feature_only=False`` a fine-tuned model returns class probabilities [B, predictor_class]
        instead of features.
        """
        fbank = self.preprocess(source)
        if padding_mask is not None:
            padding_mask = official_token_padding_mask(padding_mask, fbank.size(1))
        tokens = self._patch_tokens(fbank)
        if padding_mask is not None:
            padding_mask = official_token_padding_mask(padding_mask, tokens.size(1))
        x = self._encode(tokens, padding_mask)
        if not feature_only and self.predictor is not None:
            return self._class_probabilities(x, padding_mask), padding_mask
        return x, padding_mask

    def extract_features_per_clip(self, source: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Batch-invariant features: each clip encoded as if it were alone in the batch.

        ``source`` [B, N] holds right-padded audio with ``lengths`` [B] valid samples per row.
        Returns ``(features [B, T'max, D], token_padding_mask [B, T'max])`` with T'max the token
        count of the longest clip. Every unmasked token equals the batch-of-one output up to float
        rounding; masked tokens hold arbitrary values for the caller to discard or zero.

        Why the official batched path is not batch-invariant: it computes the fbank of the padded
        row (extra frames of silence), and its token mask treats tokens as purely temporal
        (``official_token_padding_mask``) whereas BEATs tokens are time-major / frequency-minor,
        so padded tokens leak into attention and the positional convolution and real tokens get
        masked. Here each clip gets only its own frames, a token is valid iff its whole 16-frame
        time patch consists of real frames (the patches a lone clip would have), and masked tokens
        are zeroed before the positional convolution, reproducing its zero padding.
        """
        if source.dim() != 2 or lengths.shape != source.shape[:1]:
            raise ValueError(
                f"source must be [B, N] with lengths [B], got {tuple(source.shape)} and {tuple(lengths.shape)}"
            )
        fbank, _ = kaldi_fbank_batch(source * INT16_SCALE, lengths, num_mel_bins=NUM_MEL_BINS)
        tokens = self._patch_tokens(self._normalise(fbank))
        num_tokens = self.output_lengths(lengths.to(tokens.device).clamp(max=source.size(1)))
        token_padding_mask = torch.arange(tokens.size(1), device=tokens.device) >= num_tokens.unsqueeze(1)
        return self._encode(tokens, token_padding_mask), token_padding_mask
