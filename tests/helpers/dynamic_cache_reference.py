"""The decode-step cache as it was before the prefix KV cache: the Hugging Face forward over a
``DynamicCache``, one full copy of the prompt per row. The reference the new ``CachedLM`` must equal
(a module of its own, so that no other test directory resolves it to a different conftest)."""

import torch
from transformers import DynamicCache


class DynamicCacheLM:
    """Same interface as ``salmonn_pl.generation.decode.CachedLM``, every step through ``model.forward``."""

    def __init__(self, model: torch.nn.Module, need_hidden: bool):
        self.model = model
        self.need_hidden = need_hidden
        self.cache = DynamicCache()
        self.attention_mask: torch.Tensor | None = None

    def prefill(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor):
        self.attention_mask = attention_mask.long()
        position_ids = self.attention_mask.cumsum(-1) - 1
        position_ids = position_ids.masked_fill(self.attention_mask == 0, 1)
        return self._forward(inputs_embeds=inputs_embeds, position_ids=position_ids)

    def step(self, tokens: torch.Tensor):
        mask = self.attention_mask
        self.attention_mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        position_ids = self.attention_mask.sum(-1, keepdim=True) - 1
        return self._forward(input_ids=tokens[:, None], position_ids=position_ids)

    def repeat_rows(self, times: int) -> None:
        self.cache.batch_repeat_interleave(times)
        self.attention_mask = self.attention_mask.repeat_interleave(times, dim=0)

    def reorder(self, rows: torch.Tensor) -> None:
        self.cache.reorder_cache(rows)
        self.attention_mask = self.attention_mask[rows]

    def _forward(self, position_ids: torch.Tensor, **inputs: torch.Tensor):
        out = self.model(
            **inputs,
            attention_mask=self.attention_mask,
            position_ids=position_ids,
            cache=self.cache,
            use_cache=True,
            output_hidden_states=self.need_hidden,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1].float()
        hidden = out.hidden_states[-1][:, -1] if self.need_hidden else None
        return logits, hidden
