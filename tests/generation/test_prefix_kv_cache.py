"""CachedLM's decode steps over the prefix KV cache against the Hugging Face forward over a DynamicCache.

The reference (``dynamic_cache_reference.DynamicCacheLM``) is the implementation CachedLM replaced:
every step is ``model.forward`` with the whole prompt copied into every row. Both are driven with the
same tokens and beam reorders on a small random LLaMA with an active LoRA adapter.
"""

import copy
import functools

import pytest
import torch
from tests.helpers.dynamic_cache_reference import DynamicCacheLM
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, SequenceBiasLogitsProcessor

from salmonn_pl.generation import decode
from salmonn_pl.generation.decode import CachedLM, GenerationSettings, generate
from salmonn_pl.generation.prefix_kv_cache import GENERATED_CHUNK
from salmonn_pl.model.llm import LoraSettings, apply_lora

VOCAB, WIDTH, EOS = 96, 64, 2
STEPS = GENERATED_CHUNK + 8  # past the first chunk of generated positions


@functools.cache
def _llama(kv_heads: int, init_std: float = 0.02) -> torch.nn.Module:
    """A 2-layer LLaMA (4 attention heads) wrapped with SALMONN's LoRA, its B matrices non-zero."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=256,
                         initializer_range=init_std, bos_token_id=1, eos_token_id=EOS, pad_token_id=0)
    model = apply_lora(LlamaForCausalLM(config), LoraSettings())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero, which would leave LoRA without effect
                parameter.normal_(std=0.05)
    return model.eval()


def _prompts(padding: str, batch: int = 3, length: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt embeddings with 0, 3, 6, ... masked positions: at the start (left padding) or after the
    first 5 positions (the official batch: the text after the audio right-padded, mid-prompt)."""
    generator = torch.Generator().manual_seed(1)
    embeds = torch.randn(batch, length, WIDTH, generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):
        start = 0 if padding == "left" else 5
        mask[row, start : start + 3 * row] = 0
    return embeds, mask


@torch.no_grad()
def _drive(lm, embeds, mask, rows_per_item: int, reorder: bool, steps: int = STEPS, seed: int = 2) -> list:
    """Prefill, expand each item to ``rows_per_item`` rows, then ``steps`` steps on random tokens,
    each after a random reorder within items when ``reorder``; the (logits, hidden) of every call."""
    generator = torch.Generator().manual_seed(seed)
    batch = embeds.shape[0]
    outputs = [lm.prefill(embeds, mask)]
    lm.repeat_rows(rows_per_item)
    for _ in range(steps):
        if reorder:
            within_item = torch.randint(rows_per_item, (batch, rows_per_item), generator=generator)
            lm.reorder((torch.arange(batch)[:, None] * rows_per_item + within_item).view(-1))
        outputs.append(lm.step(torch.randint(3, VOCAB, (batch * rows_per_item,), generator=generator)))
    return outputs


def _max_difference(got: list, expected: list, index: int) -> float:
    return max((g[index].float() - e[index].float()).abs().max().item() for g, e in zip(got, expected))


# ------------------------------------------------------------------------------- equal to the HF forward


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("padding", ["left", "middle"])
@pytest.mark.parametrize(
    "rows_per_item, reorder", [(1, False), (3, False), (4, True)], ids=["greedy", "samples", "beams"]
)
def test_steps_equal_the_hugging_face_forward_over_a_dynamic_cache(kv_heads, padding, rows_per_item, reorder):
    model = _llama(kv_heads)
    embeds, mask = _prompts(padding)
    got = _drive(CachedLM(model, need_hidden=True), embeds, mask, rows_per_item, reorder)
    expected = _drive(DynamicCacheLM(model, need_hidden=True), embeds, mask, rows_per_item, reorder)
    assert len(got) == STEPS + 1
    assert got[-1][0].shape == (3 * rows_per_item, VOCAB)
    assert _max_difference(got, expected, 0) <= 1e-5  # logits
    assert _max_difference(got, expected, 1) <= 1e-5  # last hidden state, after the final norm


def test_lora_applies_in_decode_steps():
    model = _llama(4)
    embeds, mask = _prompts("middle")
    with_lora = _drive(CachedLM(model, need_hidden=False), embeds, mask, 2, True, steps=3)
    with model.disable_adapter():
        without = _drive(CachedLM(model, need_hidden=False), embeds, mask, 2, True, steps=3)
        reference = _drive(DynamicCacheLM(model, need_hidden=False), embeds, mask, 2, True, steps=3)
    assert _max_difference(without, reference, 0) <= 1e-5
    assert _max_difference(with_lora[1:], without[1:], 0) > 1e-3


def test_the_prompt_is_held_once_per_item_and_never_copied():
    model = _llama(2)
    embeds, mask = _prompts("left")
    lm = CachedLM(model, need_hidden=False)
    with torch.no_grad():
        lm.prefill(embeds, mask)
    prompt = [(k.data_ptr(), v.data_ptr()) for k, v in zip(lm.cache.prompt_keys, lm.cache.prompt_values)]
    lm.repeat_rows(4)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(5):
            lm.reorder((torch.arange(3)[:, None] * 4 + torch.randint(4, (3, 4), generator=generator)).view(-1))
            lm.step(torch.randint(3, VOCAB, (12,), generator=generator))
    assert [(k.data_ptr(), v.data_ptr()) for k, v in zip(lm.cache.prompt_keys, lm.cache.prompt_values)] == prompt
    assert all(k.shape == (3, 2, 12, 16) for k in lm.cache.prompt_keys)  # [B, kv_heads, L_prompt, head_dim]
    assert all(k.shape[:2] == (12, 2) and k.shape[2] >= 5 for k in lm.cache.generated_keys)  # per beam row


def test_reorder_across_items_is_rejected():
    lm = CachedLM(_llama(4), need_hidden=False)
    with torch.no_grad():
        lm.prefill(*_prompts("left"))
        lm.repeat_rows(2)
        lm.step(torch.full((6,), 5))
    lm.reorder(torch.tensor([1, 1, 2, 3, 5, 4]))  # within items: fine
    with pytest.raises(ValueError, match="within its own item"):
        lm.reorder(torch.tensor([0, 2, 2, 3, 4, 5]))  # row 1 (item 0) would continue item 1's row 2
    with pytest.raises(ValueError, match="within its own item"):
        lm.reorder(torch.tensor([0, 1, 2, 3]))  # not one index per row


# --------------------------------------------------------------------------- whole decodes, old vs new


def _generate_both(monkeypatch, *args, seed: int = 0, **kwargs):
    """``generate`` with CachedLM, then with the DynamicCache implementation; each run samples from ``seed``."""
    new = generate(*args, generator=torch.Generator().manual_seed(seed), **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(decode, "CachedLM", DynamicCacheLM)
        old = generate(*args, generator=torch.Generator().manual_seed(seed), **kwargs)
    return new, old


def test_beam_search_equals_the_dynamic_cache_implementation_with_items_finishing_apart(monkeypatch):
    model = _llama(2, init_std=0.3)  # peaked next-token distributions, so that answers end at different steps
    embeds, mask = _prompts("left", batch=4)
    settings = GenerationSettings(max_new_tokens=12, num_beams=3, num_return_sequences=2)
    new, old = _generate_both(monkeypatch, model, embeds, mask, settings,
                              logits_processors=[SequenceBiasLogitsProcessor({(EOS,): 4.0})], collect_hidden_states=True)
    assert len({len(s) for s in old.sequences[::2]}) > 1  # items finish at different steps
    assert new.sequences == old.sequences
    assert new.sequence_scores == pytest.approx(old.sequence_scores, abs=1e-5)
    assert max((n - o).abs().max().item() for n, o in zip(new.hidden_states, old.hidden_states)) <= 1e-5


@pytest.mark.parametrize("padding", ["left", "middle"])
def test_sampling_several_answers_per_item_equals_the_dynamic_cache_implementation(monkeypatch, padding):
    model = _llama(4, init_std=0.3)
    embeds, mask = _prompts(padding)
    settings = GenerationSettings(max_new_tokens=10, num_beams=1, do_sample=True, num_return_sequences=3)
    new, old = _generate_both(monkeypatch, model, embeds, mask, settings, seed=3)
    assert len(new.sequences) == 9 and len({tuple(s) for s in new.sequences}) > 3  # really sampled
    assert new.sequences == old.sequences


# --------------------------------------------------------------------------------- reduced precision


@pytest.mark.parametrize("weights", [torch.float32, torch.bfloat16], ids=["fp32-weights", "bf16-weights"])
def test_bf16_autocast_steps_are_close_to_fp32(weights):
    model = _llama(2)
    embeds, mask = _prompts("middle")
    fp32 = _drive(CachedLM(model, need_hidden=True), embeds, mask, 4, True, steps=8)
    low = copy.deepcopy(model).to(weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _drive(CachedLM(low, need_hidden=True), embeds.to(weights), mask, 4, True, steps=8)
        reference = _drive(DynamicCacheLM(low, need_hidden=True), embeds.to(weights), mask, 4, True, steps=8)
    assert all(torch.isfinite(logits).all() for logits, _ in got)
    assert got[-1][0].dtype == torch.float32 and got[-1][1].dtype == reference[-1][1].dtype
    # bf16 costs what it costs the Hugging Face path, not more.
    error, reference_error = _max_difference(got, fp32, 0), _max_difference(reference, fp32, 0)
    scale = max(logits.abs().max().item() for logits, _ in fp32)
    assert error <= 2 * reference_error and error <= 0.03 * scale


# ----------------------------------------------------------------------------------------- bad models


def test_a_model_that_is_not_llama_shaped_is_rejected():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel has no `model.layers`"):
        CachedLM(gpt2, need_hidden=False)
    llama = copy.deepcopy(_llama(4)).get_base_model()
    del llama.model.layers[1].self_attn.q_proj
    with pytest.raises(ValueError, match=r"LlamaForCausalLM has no `model.layers.1.self_attn.q_proj`"):
        CachedLM(llama, need_hidden=False)
