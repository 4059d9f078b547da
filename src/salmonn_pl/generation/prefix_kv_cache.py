"""A decode-step KV cache that holds each prompt once, and the LLaMA decoder step that reads it.

Beam search (and several samples per question) decodes ``n`` rows per batch item that share one
prompt: ``<s>``, the prompt text and the audio tokens, ~150 positions against a few dozen generated
ones. A Hugging Face ``DynamicCache`` copies that prompt's keys/values into every row, appends a
position with a ``torch.cat`` of the whole cache at every step and reorders beams with an
``index_select`` of the whole cache: copies that grow with rows x context and, on a GPU, move as
many bytes per step as the weights. :class:`PrefixKVCache` instead keeps

- the prompt's keys/values once per batch item, never copied after the prefill, and
- the generated positions' keys/values per row, in buffers written in place (grown in chunks);
  a beam reorder moves only these.

Attention lets an item's rows share its prompt keys by stacking them as extra *queries*
(``[B, heads, rows, hd] @ [B, heads, hd, L_prompt]``), adds each row's own generated keys, and takes
one softmax over both parts, in float32, as transformers 4.28's LLaMA attention did.

:func:`llama_decode_step` runs one token per row through a LLaMA-shaped causal LM (peft LoRA-wrapped
or not) against this cache, calling the model's own modules so that LoRA, its rotary embedding and
its norms apply exactly as in the Hugging Face forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Generated positions are allocated this many at a time: a re-allocation copies only the generated
# part, and a few dozen answer tokens fit in one or two chunks.
GENERATED_CHUNK = 32


class PrefixKVCache:
    """Keys/values of a batch's prompts (once per item) and of the tokens generated after them (per row).

    Rows are grouped by item: rows ``b * n .. (b + 1) * n - 1`` continue item ``b``'s prompt, with
    ``n = rows_per_item``. Per layer, the prompt part is ``[B, kv_heads, L_prompt, head_dim]`` and the
    generated part ``[B * n, kv_heads, capacity, head_dim]`` of which ``generated`` positions are filled.
    """

    def __init__(self, prompt_keys: list[torch.Tensor], prompt_values: list[torch.Tensor], prompt_mask: torch.Tensor):
        if len(prompt_keys) != len(prompt_values) or not prompt_keys:
            raise ValueError(f"PrefixKVCache needs keys and values for every layer; got {len(prompt_keys)} key and "
                             f"{len(prompt_values)} value tensors")
        if prompt_mask.dim() != 2 or prompt_keys[0].shape[0] != prompt_mask.shape[0] or prompt_keys[0].shape[2] != prompt_mask.shape[1]:
            raise ValueError(f"prompt_mask must be [B, L_prompt] = {tuple(prompt_keys[0].shape[:1] + prompt_keys[0].shape[2:3])}, "
                             f"got {tuple(prompt_mask.shape)}")
        # Contiguous once here, so that no step has to re-pack the prompt for its matmuls.
        self.prompt_keys = [k.contiguous() for k in prompt_keys]
        self.prompt_values = [v.contiguous() for v in prompt_values]
        # [B, 1, 1, 1, L_prompt] (the layout of the scores in attend): positions no token may attend to;
        # None when every prompt fills the whole length (batch of one, unpadded batches).
        padding = prompt_mask == 0
        self.prompt_padding = padding[:, None, None, None, :] if padding.any() else None
        self.prompt_lengths = prompt_mask.long().sum(-1)  # [B]: real prompt positions per item
        self.rows_per_item = 1
        self.generated = 0
        self.generated_keys: list[torch.Tensor] = []  # allocated by the first add_position
        self.generated_values: list[torch.Tensor] = []

    @property
    def batch_size(self) -> int:
        return self.prompt_keys[0].shape[0]

    @property
    def rows(self) -> int:
        return self.batch_size * self.rows_per_item

    def repeat_rows(self, times: int) -> None:
        """Every row becomes ``times`` consecutive rows (beams or samples); the prompt is not copied."""
        if times < 1:
            raise ValueError(f"repeat_rows: times must be >= 1, got {times}")
        self.rows_per_item *= times
        self.generated_keys = [k.repeat_interleave(times, dim=0) for k in self.generated_keys]
        self.generated_values = [v.repeat_interleave(times, dim=0) for v in self.generated_values]

    def reorder(self, rows: torch.Tensor) -> None:
        """Row ``i`` continues from row ``rows[i]``, which must belong to the same batch item."""
        own_item = torch.arange(self.rows, device=rows.device) // self.rows_per_item
        if rows.shape != own_item.shape or not torch.equal(rows // self.rows_per_item, own_item):
            raise ValueError(f"reorder: rows must be {self.rows} indices, each within its own item's "
                             f"{self.rows_per_item} rows (the prompt is shared per item); got {rows.tolist()}")
        filled = slice(0, self.generated)
        for cache in (self.generated_keys, self.generated_values):
            for layer in cache:
                layer[:, :, filled] = layer[:, :, filled].index_select(0, rows)

    def next_positions(self) -> torch.Tensor:
        """``[rows]`` position ids of the next token: its item's real prompt length + tokens generated so far."""
        return self.prompt_lengths.repeat_interleave(self.rows_per_item) + self.generated

    def add_position(self) -> None:
        """Make room for one more generated position, which every layer then fills in :meth:`attend`."""
        capacity = self.generated_keys[0].shape[2] if self.generated_keys else 0
        if self.generated == capacity:
            # Before the first position there is nothing to keep: the prompt's tensors give shape and dtype.
            self.generated_keys = [self._grown(k, capacity) for k in self.generated_keys or self.prompt_keys]
            self.generated_values = [self._grown(v, capacity) for v in self.generated_values or self.prompt_values]
        self.generated += 1

    def _grown(self, layer: torch.Tensor, kept: int) -> torch.Tensor:
        """A per-row buffer ``GENERATED_CHUNK`` positions longer than ``kept``, holding ``layer``'s first ``kept``."""
        _, kv_heads, _, head_dim = layer.shape
        grown = layer.new_empty(self.rows, kv_heads, kept + GENERATED_CHUNK, head_dim)
        if kept:
            grown[:, :, :kept] = layer[:, :, :kept]
        return grown

    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
        """Store the new position's ``key``/``value`` ``[rows, kv_heads, hd]`` and attend from ``query``
        ``[rows, heads, hd]`` over the item's prompt and the row's generated positions; ``[rows, heads * hd]``.

        Query head ``h`` reads kv head ``h // (heads // kv_heads)`` (grouped-query attention).
        """
        rows, heads, head_dim = query.shape
        kv_heads = key.shape[1]
        groups, batch, n, t = heads // kv_heads, self.batch_size, self.rows_per_item, self.generated
        prompt_keys, prompt_values = self.prompt_keys[layer], self.prompt_values[layer]
        generated_keys, generated_values = self.generated_keys[layer], self.generated_values[layer]
        generated_keys[:, :, t - 1] = key
        generated_values[:, :, t - 1] = value
        generated_keys, generated_values = generated_keys[:, :, :t], generated_values[:, :, :t]
        prompt_len = prompt_keys.shape[2]

        # Queries [B, kv_heads, n * groups, hd]: one kv head serves its query heads of every row of the item.
        by_item = query.to(prompt_keys.dtype).view(batch, n, kv_heads, groups, head_dim)
        prompt_queries = by_item.permute(0, 2, 1, 3, 4).reshape(batch, kv_heads, n * groups, head_dim)
        prompt_scores = torch.matmul(prompt_queries, prompt_keys.transpose(-1, -2))  # [B, kvh, n * g, Lp]
        generated_scores = torch.matmul(by_item.view(rows, kv_heads, groups, head_dim), generated_keys.transpose(-1, -2))

        # One softmax over [prompt | generated], laid out [B, kv_heads, n, groups, Lp + t], in float32.
        scores = torch.cat(
            [
                prompt_scores.view(batch, kv_heads, n, groups, prompt_len).float(),
                generated_scores.view(batch, n, kv_heads, groups, t).transpose(1, 2).float(),
            ],
            dim=-1,
        )
        scores.mul_(scale)
        if self.prompt_padding is not None:
            scores[..., :prompt_len].masked_fill_(self.prompt_padding, float("-inf"))
        probs = torch.softmax(scores, dim=-1)

        prompt_probs = probs[..., :prompt_len].reshape(batch, kv_heads, n * groups, prompt_len)
        prompt_out = torch.matmul(prompt_probs.to(prompt_values.dtype), prompt_values)  # [B, kvh, n * g, hd]
        prompt_out = prompt_out.view(batch, kv_heads, n, groups, head_dim).transpose(1, 2)
        generated_probs = probs[..., prompt_len:].transpose(1, 2).reshape(rows, kv_heads, groups, t)
        generated_out = torch.matmul(generated_probs.to(generated_values.dtype), generated_values)  # [rows, kvh, g, hd]
        return prompt_out.reshape(rows, heads * head_dim) + generated_out.reshape(rows, heads * head_dim)


# ------------------------------------------------------------------------------------ LLaMA decoder step


@dataclass
class LlamaParts:
    """The modules of a LLaMA-shaped causal LM that a decode step calls (peft LoRA layers included)."""

    embed_tokens: nn.Module
    layers: list[nn.Module]  # LlamaDecoderLayer-like: input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp
    norm: nn.Module
    rotary_emb: nn.Module
    lm_head: nn.Module
    heads: int
    kv_heads: int
    head_dim: int
    scale: float

    @classmethod
    def of(cls, model: nn.Module) -> LlamaParts:
        """The parts of ``model`` (a Hugging Face ``LlamaForCausalLM``, or a peft wrapper of one).

        Raises ``ValueError`` naming the first missing module when the model is not LLaMA-shaped.
        """
        get_base_model = getattr(model, "get_base_model", None)  # peft wraps the causal LM
        causal_lm = get_base_model() if callable(get_base_model) else model
        name = type(causal_lm).__name__

        def part(path: str) -> nn.Module:
            found = causal_lm
            for attribute in path.split("."):  # a ModuleList's items are attributes "0", "1", ...
                found = getattr(found, attribute, None)
                if found is None:
                    raise ValueError(f"the prefix-KV decode step needs a LLaMA-shaped causal LM, but {name} has no `{path}`")
            return found

        layers = list(part("model.layers"))
        if not layers:
            raise ValueError(f"the prefix-KV decode step needs a LLaMA-shaped causal LM, but {name}'s `model.layers` is empty")
        for index in range(len(layers)):
            for module in ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                           "self_attn.o_proj", "post_attention_layernorm", "mlp"):
                part(f"model.layers.{index}.{module}")
        config = causal_lm.config
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        if heads % kv_heads:
            raise ValueError(f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})")
        return cls(
            embed_tokens=part("model.embed_tokens"),
            layers=layers,
            norm=part("model.norm"),
            rotary_emb=part("model.rotary_emb"),
            lm_head=part("lm_head"),
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            scale=head_dim**-0.5,
        )


def llama_decode_step(parts: LlamaParts, cache: PrefixKVCache, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed one token per row (``tokens [rows]``); returns the next-token logits ``[rows, V]`` and the
    last-layer hidden state after the final norm ``[rows, H]`` (what Hugging Face reports as
    ``hidden_states[-1]``)."""
    if tokens.shape != (cache.rows,):
        raise ValueError(f"tokens must be [rows] = [{cache.rows}] (batch {cache.batch_size} x {cache.rows_per_item} "
                         f"rows per item), got {tuple(tokens.shape)}")
    rows = cache.rows
    positions = cache.next_positions()
    cache.add_position()
    hidden = parts.embed_tokens(tokens)  # [rows, H]
    # The model's rotary module, as its forward calls it: cos/sin [rows, 1, hd] in the embedding's dtype.
    cos, sin = parts.rotary_emb(hidden, positions[:, None])
    for index, layer in enumerate(parts.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        query = _rotate(attn.q_proj(x).view(rows, parts.heads, parts.head_dim), cos, sin)
        key = _rotate(attn.k_proj(x).view(rows, parts.kv_heads, parts.head_dim), cos, sin)
        value = attn.v_proj(x).view(rows, parts.kv_heads, parts.head_dim)
        attended = cache.attend(index, query, key, value, parts.scale)
        hidden = hidden + attn.o_proj(attended)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    hidden = parts.norm(hidden)
    return parts.lm_head(hidden).float(), hidden


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of ``x [rows, heads, hd]``: each half-pair (i, i + hd/2) turns by its angle."""
    half = x.shape[-1] // 2
    rotated_half = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated_half * sin
