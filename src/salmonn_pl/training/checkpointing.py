"""What a Lightning fit checkpoint of SALMONN holds: the trainable weights, the ``[PAD]`` rows, and plain hyperparameters.

The frozen encoders and base LLM are rebuilt from their own files, so a 13B model's checkpoint stays
tens of MB. The weights are taken from the state dict the strategy gathered (DDP, or FSDP with a full
state dict), so the same code serves every strategy.

Hyperparameters are stored as plain dicts and lists: ``torch.load(weights_only=True)`` (what
``salmonn-pl fit --ckpt_path`` uses to read them) refuses arbitrary classes, and jsonargparse rebuilds
the typed settings from them when ``SalmonnModule.load_from_checkpoint`` is called.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from salmonn_pl.model.checkpoint import PAD_ROW_KEYS

# The instantiator that LightningCLI records; Lightning allows it when loading a checkpoint.
CLI_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
# Names that FSDP / activation checkpointing insert into module paths but not into state-dict keys.
_WRAPPER_PARTS = re.compile(r"(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")


def plain(value: Any) -> Any:
    """``value`` with every dataclass turned into a dict (recursively) and tuples into lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def plain_hyperparameters(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Checkpoint hyperparameters readable with ``weights_only=True`` and re-instantiable by jsonargparse."""
    out = plain(dict(hparams))
    out.setdefault("_instantiator", CLI_INSTANTIATOR)
    return out


def clean_name(name: str) -> str:
    return _WRAPPER_PARTS.sub("", name)


def trainable_names(model: nn.Module, prefix: str) -> set[str]:
    """State-dict keys (under ``prefix``) of the parameters that training updates."""
    return {prefix + clean_name(n) for n, p in model.named_parameters() if p.requires_grad}


def _module_key(model: nn.Module, module: nn.Module, prefix: str) -> str:
    name = next(n for n, m in model.named_modules(remove_duplicate=False) if m is module)
    return f"{prefix}{clean_name(name)}.weight"


def trainable_checkpoint_state(state: Mapping[str, torch.Tensor], model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """The trainable entries of a gathered ``state`` plus the ``[PAD]`` rows (``prefix`` + ``PAD_ROW_KEYS``).

    ``model`` is the SALMONN whose keys appear under ``prefix`` in ``state``. Raises if a trainable
    parameter is missing from ``state`` (a strategy that did not gather it would otherwise lose it).
    """
    wanted = trainable_names(model, prefix)
    missing = sorted(wanted - set(state))
    if missing:
        raise ValueError(f"the state dict to checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[:3]}")
    kept = {key: state[key] for key in sorted(wanted)}
    # [PAD] is the last row of both vocabulary matrices; the official code leaves it random, so it is kept.
    llm = model.llm
    for key, module in zip(PAD_ROW_KEYS, (llm.get_input_embeddings(), llm.get_output_embeddings())):
        weight = state.get(_module_key(model, module, prefix)) if module is not None else None
        # Sharded (DTensor) or ZeRO-3 placeholder weights hold no full row to keep.
        if weight is not None and type(weight) in (torch.Tensor, nn.Parameter) and weight.dim() == 2 and len(weight):
            kept[prefix + key] = weight[-1].detach().clone()
    return kept


def check_trainable_state(state: Mapping[str, torch.Tensor], model: nn.Module, prefix: str) -> None:
    """Raise unless ``state`` holds a value of the right shape for every trainable parameter, and
    nothing the model lacks."""
    wanted = trainable_names(model, prefix)
    own = {prefix + clean_name(k): v for k, v in model.state_dict().items()}
    missing, unknown = sorted(wanted - set(state)), sorted(set(state) - set(own))
    reshaped = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                for k in sorted(set(state) & set(own)) if state[k].shape != own[k].shape]
    if missing or unknown or reshaped:
        raise ValueError(
            "checkpoint does not match this model's trainable weights (check lora_rank, lora_target_modules "
            f"and the freeze_* options): {len(missing)} missing, e.g. {missing[:3]}; {len(unknown)} unknown, "
            f"e.g. {unknown[:3]}; {len(reshaped)} of another shape, e.g. {reshaped[:3]}"
        )
