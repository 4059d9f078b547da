"""The LLaMA/Vicuna language model of SALMONN: loading, the extra ``[PAD]`` row, and LoRA.

SALMONN loads the LLM (stored in fp16), resizes its embeddings by one row for the ``[PAD]`` token,
freezes every base weight and wraps the model with peft LoRA (peft 0.3 defaults for LLaMA: q_proj and
v_proj). The parameter names of the wrapped model (``base_model.model.model.layers.0.self_attn.q_proj.
lora_A.default.weight``, ...) are the ones stored under ``llama_model.`` in official checkpoints, so
official LoRA weights load without renaming.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM, PreTrainedModel

from salmonn_pl.model.tokenizer import SalmonnTokenizer

OFFICIAL_PREFIX = "llama_model."


@dataclass
class LoraSettings:
    """LoRA adapter settings; defaults are SALMONN's (rank 8, alpha 32, dropout 0.1 on q_proj/v_proj).

    ``scale`` multiplies the trained LoRA scaling (alpha / rank) at load time; 1.0 keeps it unchanged.
    Test-time "activation tuning" varies it to strengthen or weaken what the adapter learned.
    """

    rank: int = 8
    alpha: int = 32
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    scale: float = 1.0


def load_llm(
    path: str | Path,
    tokenizer: SalmonnTokenizer | int,
    torch_dtype: torch.dtype | str = torch.float32,
    lora: LoraSettings | None = None,
    load_in_8bit: bool = False,
    device_map: str | dict | None = None,
    pad_row_seed: int = 0,
) -> PreTrainedModel | PeftModel:
    """A frozen causal LM from the Hugging Face directory ``path``, resized to ``len(tokenizer)`` rows.

    ``tokenizer`` is the tokenizer (or its length); ``torch_dtype`` may be given by name ("float16"). New embedding/lm_head rows (the ``[PAD]`` row) are
    drawn from normal(0, initializer_range) with a generator seeded by ``pad_row_seed``; use
    :func:`set_pad_rows` to restore rows saved elsewhere. With ``lora``, the model is wrapped by peft
    and only the LoRA matrices are trainable. ``load_in_8bit`` quantizes linear layers with
    bitsandbytes (CUDA only), as SALMONN's ``low_resource`` mode did.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json (Hugging Face causal-LM directory expected)")
    if isinstance(torch_dtype, str):
        torch_dtype = _dtype_by_name(torch_dtype)
    kwargs: dict = {"dtype": torch_dtype}
    if load_in_8bit:
        if not torch.cuda.is_available():
            raise ValueError(
                f"load_in_8bit=True needs a CUDA GPU (bitsandbytes int8), but none is available to load {path}"
            )
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = device_map if device_map is not None else {"": torch.cuda.current_device()}
    elif device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as error:
        raise ValueError(f"{unreadable_weight_file(path) or path}: cannot load the LLM: {type(error).__name__}: {error}") from error

    new_vocab_size = tokenizer if isinstance(tokenizer, int) else len(tokenizer)
    _resize_vocab(model, new_vocab_size, seed=pad_row_seed)
    for param in model.parameters():
        param.requires_grad = False

    if lora is not None:
        model = apply_lora(model, lora)
    return model


def unreadable_weight_file(path: Path) -> Path | None:
    """The first weight file of the Hugging Face directory ``path`` that cannot be read (truncated or
    corrupt), ``None`` if all open. Cheap: safetensors headers are checked against the file size, and
    ``.bin`` files are memory-mapped, not read."""
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        try:
            if file.suffix == ".safetensors":
                with safe_open(str(file), "pt"):
                    pass
            else:
                torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            return file
    return None


def _dtype_by_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"torch_dtype={name!r} is not a torch dtype (e.g. 'float32', 'float16', 'bfloat16')")
    return dtype


def _resize_vocab(model: PreTrainedModel, new_vocab_size: int, seed: int) -> None:
    old_vocab_size = model.get_input_embeddings().weight.shape[0]
    if new_vocab_size == old_vocab_size:
        return
    # transformers' default mean_resizing draws the new rows from the old rows' statistics; SALMONN's
    # transformers initialised them like any fresh embedding, normal(0, initializer_range).
    model.resize_token_embeddings(new_vocab_size, mean_resizing=False)
    if new_vocab_size < old_vocab_size:
        return
    generator = torch.Generator().manual_seed(seed)
    std = model.config.initializer_range
    with torch.no_grad():
        for layer in _vocab_layers(model):
            rows = layer.weight[old_vocab_size:]
            fresh = torch.randn(rows.shape, generator=generator, dtype=torch.float32) * std
            rows.copy_(fresh.to(rows.dtype))


def _vocab_layers(model: PreTrainedModel | PeftModel) -> list[torch.nn.Module]:
    layers = [model.get_input_embeddings()]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not layers[0].weight:
        layers.append(output)
    return layers


def set_pad_rows(
    model: PreTrainedModel | PeftModel,
    embed_row: torch.Tensor,
    lm_head_row: torch.Tensor | None,
    pad_token_id: int | None = None,
) -> None:
    """Overwrite the ``[PAD]`` row (the last one unless ``pad_token_id``) of the embedding and lm_head.

    The official code leaves this row at a random initialisation; restoring the exact row is needed
    to reproduce logits over the whole vocabulary and losses that see ``[PAD]``.
    """
    embed = model.get_input_embeddings()
    row = embed.weight.shape[0] - 1 if pad_token_id is None else pad_token_id
    targets = [(embed, embed_row)]
    lm_head = model.get_output_embeddings()
    if lm_head_row is not None:
        if lm_head is None:
            raise ValueError("set_pad_rows: the model has no output embedding to receive lm_head_row")
        targets.append((lm_head, lm_head_row))
    with torch.no_grad():
        for layer, value in targets:
            if value.shape != layer.weight[row].shape:
                raise ValueError(
                    f"set_pad_rows: row of shape {tuple(value.shape)} does not fit {tuple(layer.weight[row].shape)}"
                )
            layer.weight[row].copy_(value.to(layer.weight.dtype))


def apply_lora(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    """Wrap ``model`` with a fresh LoRA adapter named ``default`` (base weights stay frozen)."""
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        inference_mode=False,
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
    )
    peft_model = get_peft_model(model, config)
    if settings.scale != 1.0:
        set_lora_scale(peft_model, settings.scale)
    return peft_model


def set_lora_scale(model: torch.nn.Module, factor: float) -> None:
    """Set every LoRA layer's scaling to ``factor`` times its trained value (alpha / rank).

    Not cumulative: ``set_lora_scale(m, 1.0)`` always restores the trained scaling.
    """
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not layers:
        raise ValueError("set_lora_scale: the model has no LoRA layers")
    for layer in layers:
        for adapter in layer.scaling:
            layer.set_scale(adapter, factor)


def embed_tokens(model: PreTrainedModel | PeftModel) -> torch.nn.Embedding:
    """The LLM's input token embedding, whether or not peft wraps the model."""
    return model.get_input_embeddings()


def load_llm_weights(
    model: PreTrainedModel | PeftModel,
    state_dict: Mapping[str, torch.Tensor],
    prefix: str = OFFICIAL_PREFIX,
) -> list[str]:
    """Copy the entries of ``state_dict`` under ``prefix`` (e.g. the LoRA matrices in an official
    ``salmonn.pth``'s ``['model']``) into ``model``; returns the parameter names that were loaded.

    Rotary ``inv_freq`` buffers, which old transformers saved and current ones recompute, are skipped.
    Any other key that the model does not have is an error, so a renamed or mis-configured adapter
    cannot load silently as nothing.
    """
    own = dict(model.named_parameters())
    own.update(model.named_buffers())
    wanted = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    wanted = {k: v for k, v in wanted.items() if not k.endswith("rotary_emb.inv_freq")}
    unknown = sorted(k for k in wanted if k not in own)
    if unknown:
        raise KeyError(f"{len(unknown)} LLM weights have no match in the model (first: {prefix}{unknown[0]}); "
                       "check the LoRA target modules and that the model is peft-wrapped")
    with torch.no_grad():
        for name, value in wanted.items():
            if own[name].shape != value.shape:
                raise ValueError(f"{prefix}{name}: shape {tuple(value.shape)} != model's {tuple(own[name].shape)}")
            own[name].copy_(value.to(own[name].dtype))
    return sorted(wanted)
