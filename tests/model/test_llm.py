"""LLM loading ([PAD] row, LoRA names, official LoRA weights) against the official golden tensors."""

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

from tests.helpers.golden import Golden, assert_close
from salmonn_pl.model.llm import (
    embed_tokens,
    load_llm,
    load_llm_weights,
    set_lora_scale,
    set_pad_rows,
)
from salmonn_pl.model.tokenizer import SalmonnTokenizer


def _official_state(golden: Golden) -> dict[str, torch.Tensor]:
    return torch.load(golden.file("ckpt"), map_location="cpu", weights_only=True)["model"]


def _golden_llm(golden: Golden, lora: bool = True):
    """The LLM as SALMONN.from_config builds it for the golden fixture (its LoRA settings), in fp32 eval mode."""
    tokenizer = SalmonnTokenizer(golden.file("llama_path"))
    lora = golden.lora_settings() if lora else None
    model = load_llm(golden.file("llama_path"), tokenizer, lora=lora)
    set_pad_rows(model, golden["llm.pad_row.embed_tokens"], golden["llm.pad_row.lm_head"])
    if lora is not None:
        load_llm_weights(model, _official_state(golden))
    return model.float().eval(), tokenizer


def _last_logits(model, golden: Golden, i: int) -> torch.Tensor:
    with torch.no_grad():
        out = model(inputs_embeds=golden[f"wav{i}.inputs_embeds"], attention_mask=golden[f"wav{i}.attention_mask"])
    return out.logits[:, -1]


def test_lora_parameter_names_are_the_official_ones(golden: Golden):
    model, _ = _golden_llm(golden)
    trainable = {"llama_model." + n for n, p in model.named_parameters() if p.requires_grad}
    official = {k for k in _official_state(golden) if k.startswith("llama_model.") and not k.endswith("inv_freq")}
    assert trainable == official


def test_vocab_resized_and_base_rows_untouched(golden: Golden):
    model, tokenizer = _golden_llm(golden, lora=False)
    stored = load_file(str(golden.file("llama_path") / "model.safetensors"))
    embed = model.get_input_embeddings().weight
    lm_head = model.get_output_embeddings().weight
    assert embed.shape[0] == lm_head.shape[0] == len(tokenizer) == golden.variant["llm_vocab_after_resize"]
    old = stored["model.embed_tokens.weight"].shape[0]
    assert torch.equal(embed[:old], stored["model.embed_tokens.weight"].float())
    assert torch.equal(lm_head[:old], stored["lm_head.weight"].float())
    assert not any(p.requires_grad for p in model.parameters())


def test_pad_row_is_seeded(golden: Golden):
    path, size = golden.file("llama_path"), golden.variant["len_tokenizer"]
    rows = [load_llm(path, size, pad_row_seed=s).get_input_embeddings().weight[-1].clone() for s in (3, 3, 4)]
    assert torch.equal(rows[0], rows[1])
    assert not torch.equal(rows[0], rows[2])
    assert rows[0].abs().max() > 0


def test_set_pad_rows_restores_golden_rows(golden: Golden):
    model, _ = _golden_llm(golden)
    assert_close(model.get_input_embeddings().weight[-1], golden["llm.pad_row.embed_tokens"], "embed [PAD] row", atol=0)
    assert_close(model.get_output_embeddings().weight[-1], golden["llm.pad_row.lm_head"], "lm_head [PAD] row", atol=0)
    with pytest.raises(ValueError, match="does not fit"):
        set_pad_rows(model, torch.zeros(3), None)


def test_logits_and_hidden_states_match_official(golden: Golden):
    model, _ = _golden_llm(golden)
    for i in range(len(golden.wavs)):
        with torch.no_grad():
            out = model(
                inputs_embeds=golden[f"wav{i}.inputs_embeds"],
                attention_mask=golden[f"wav{i}.attention_mask"],
                output_hidden_states=True,
            )
        assert_close(out.logits[:, -1], golden[f"wav{i}.logits_last"], f"wav{i}.logits_last")
        assert_close(out.hidden_states[-1], golden[f"wav{i}.llm_last_hidden"], f"wav{i}.llm_last_hidden")


def test_embed_tokens_builds_the_official_prompt_embeddings(golden: Golden):
    model, tokenizer = _golden_llm(golden)
    embed = embed_tokens(model)
    assert embed is embed_tokens(model.get_base_model())
    for i in range(len(golden.wavs)):
        before = golden[f"wav{i}.prompt_before_ids"]
        after = golden[f"wav{i}.prompt_after_ids"]
        head = torch.cat([torch.tensor([tokenizer.bos_token_id]), before])
        expected = golden[f"wav{i}.inputs_embeds"][0]
        with torch.no_grad():
            assert_close(embed(head), expected[: len(head)], f"wav{i} <s>+prompt_before embeds", atol=0)
            assert_close(embed(after), expected[-len(after):], f"wav{i} prompt_after embeds", atol=0)


def test_lora_scale(golden: Golden):
    model, _ = _golden_llm(golden)
    trained = _last_logits(model, golden, 0)
    assert_close(trained, golden["wav0.logits_last"], "scale 1.0")
    with model.disable_adapter():
        base = _last_logits(model, golden, 0)
    assert (trained - base).abs().max() > 1e-3  # the golden LoRA weights do change the output

    set_lora_scale(model, 0.0)
    assert_close(_last_logits(model, golden, 0), base, "scale 0.0 == adapter disabled", atol=1e-5)
    set_lora_scale(model, 2.0)
    doubled = _last_logits(model, golden, 0)
    assert (doubled - trained).abs().max() > 1e-3
    set_lora_scale(model, 1.0)
    assert_close(_last_logits(model, golden, 0), golden["wav0.logits_last"], "scale back to 1.0")


def test_lora_settings_scale_applies_at_load(golden: Golden):
    settings = golden.lora_settings(scale=0.5)
    model = load_llm(golden.file("llama_path"), golden.variant["len_tokenizer"], lora=settings)
    scalings = [m.scaling["default"] for m in model.modules() if isinstance(m, LoraLayer)]
    assert len(scalings) == 2 * len(model.get_base_model().model.layers)  # q_proj and v_proj per layer
    assert all(s == pytest.approx(0.5 * settings.alpha / settings.rank) for s in scalings)


def test_set_lora_scale_needs_lora(golden: Golden):
    with pytest.raises(ValueError, match="no LoRA layers"):
        set_lora_scale(load_llm(golden.file("llama_path"), golden.variant["len_tokenizer"]), 2.0)


def test_load_llm_weights_rejects_unknown_keys(golden: Golden):
    q_only = golden.lora_settings(target_modules=("q_proj",))
    model = load_llm(golden.file("llama_path"), golden.variant["len_tokenizer"], lora=q_only)
    with pytest.raises(KeyError, match="v_proj"):
        load_llm_weights(model, _official_state(golden))


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_llm(tmp_path, 10)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_8bit_needs_cuda(golden: Golden):
    with pytest.raises(ValueError, match="8bit.*CUDA GPU"):
        load_llm(golden.file("llama_path"), golden.variant["len_tokenizer"], load_in_8bit=True)


def test_dtype_by_name(golden: Golden):
    model = load_llm(golden.file("llama_path"), golden.variant["len_tokenizer"], torch_dtype="float16")
    stored = load_file(str(golden.file("llama_path") / "model.safetensors"))["model.embed_tokens.weight"]
    weight = model.get_input_embeddings().weight
    assert weight.dtype == torch.float16
    assert torch.equal(weight[: stored.shape[0]], stored.to(torch.float16))
    with pytest.raises(ValueError, match="not a torch dtype"):
        load_llm(golden.file("llama_path"), golden.variant["len_tokenizer"], torch_dtype="float17")
