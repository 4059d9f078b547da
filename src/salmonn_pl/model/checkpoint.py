"""Checkpoints: the official SALMONN ``.pth`` key map, and our trainable-only checkpoints.

Official checkpoints (``salmonn_v1.pth``, ``salmonn_7b_v0.pth``, and what the official trainer
writes) are ``{"model": state_dict}`` holding the parameters that were trainable (LAVIS Q-Former,
LayerNorms, projection, peft LoRA) plus whatever buffers sat beside them (rotary ``inv_freq``,
Q-Former ``position_ids``, BEATs' shared relative-attention bias). Every key is mapped explicitly;
a key that maps nowhere, or a shape that differs, is an error, never a silent skip.

Our own checkpoints hold only trainable weights (and the ``[PAD]`` rows, which the official code
leaves random) under salmonn-pl names, and load back losslessly.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

FORMAT = "salmonn-pl/trainable-v1"
PAD_ROW_KEYS = ("llm.pad_row.embed_tokens", "llm.pad_row.lm_head")
# Where SalmonnModule keeps the model, hence the key prefix in `salmonn-pl fit` checkpoints.
LIGHTNING_PREFIX = "salmonn."

# Buffers the official checkpoints carry that we recompute instead of loading.
_DROPPED = (
    re.compile(r"^llama_model\..*rotary_emb\.inv_freq$"),
    re.compile(r"^speech_Qformer\.bert\.embeddings\.position_ids$"),
)

# (official name, salmonn-pl name) templates, tried in order in either direction. {layer} is a layer
# index, {kind} the Q-Former's self- or cross-attention, {rest} the remainder of the name.
_NAME_PAIRS = [
    ("speech_query_tokens", "connector.query_tokens"),
    ("ln_speech.{rest}", "connector.ln_speech.{rest}"),
    ("ln_audio.{rest}", "connector.ln_audio.{rest}"),
    ("speech_llama_proj.{rest}", "connector.proj.{rest}"),
    ("speech_Qformer.bert.embeddings.LayerNorm.{rest}", "connector.qformer.layernorm.{rest}"),
    (
        "speech_Qformer.bert.encoder.layer.{layer}.{kind}.self.{rest}",
        "connector.qformer.encoder.layer.{layer}.{kind}.attention.{rest}",
    ),
    ("speech_Qformer.bert.encoder.layer.{layer}.{rest}", "connector.qformer.encoder.layer.{layer}.{rest}"),
    ("llama_model.{rest}", "llm.{rest}"),
    ("speech_encoder.{rest}", "whisper.{rest}"),
    ("beats.{rest}", "beats.{rest}"),
]
_FIELDS = {"layer": r"\d+", "kind": "attention|crossattention", "rest": ".*"}


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ...
    return re.compile(
        "^" + "".join(f"(?P<{p}>{_FIELDS[p]})" if i % 2 else re.escape(p) for i, p in enumerate(parts)) + "$"
    )


_TO_OURS = [(_pattern(official), ours) for official, ours in _NAME_PAIRS]
_TO_OFFICIAL = [(_pattern(ours), official) for official, ours in _NAME_PAIRS]


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return template.format(**match.groupdict())
    raise KeyError(key)


def map_official_key(key: str) -> str | None:
    """salmonn-pl name of an official key; ``None`` for buffers we recompute."""
    if any(p.match(key) for p in _DROPPED):
        return None
    return _rename(key, _TO_OURS)


def to_official_key(key: str) -> str:
    """Official SALMONN name of a salmonn-pl parameter (inverse of :func:`map_official_key`)."""
    return _rename(key, _TO_OFFICIAL)


def export_official_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Write the trainable weights as an official ``{'model': state_dict}`` SALMONN checkpoint."""
    state = {to_official_key(n): p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, path)


def _read(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # zip/pickle errors have many types; all mean the file cannot be read
        raise ValueError(f"{path}: not a readable checkpoint (truncated or corrupt?): {type(error).__name__}: {error}") from error
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def required_checkpoint_keys(model: nn.Module) -> list[str]:
    """The parameters no other file provides, so a checkpoint must: the connector (Q-Former, query
    tokens, speech/audio LayerNorms, projection) and the LoRA matrices. Without them they would be
    random, and the model would answer without having learnt to listen."""
    return [n for n, _ in model.named_parameters() if n.startswith("connector.") or (n.startswith("llm.") and ".lora_" in n)]


def load_salmonn_checkpoint(model: nn.Module, path: str | Path, allow_missing: bool = False) -> dict[str, int]:
    """Load an official SALMONN ``.pth``, a salmonn-pl checkpoint, or a ``salmonn-pl fit`` Lightning
    ``.ckpt`` (weights under ``salmonn.``) into ``model``.

    Returns counts of loaded tensors per top-level module. Raises on keys that cannot be placed,
    on shape mismatches and, unless ``allow_missing``, on :func:`required_checkpoint_keys` the
    file lacks, naming the file and the keys.
    """
    obj = _read(path)
    if obj.get("format") == FORMAT:
        state = dict(obj["state_dict"])
    elif "pytorch-lightning_version" in obj and isinstance(obj.get("state_dict"), dict):
        outside = [k for k in obj["state_dict"] if not k.startswith(LIGHTNING_PREFIX)]
        if outside:
            raise ValueError(
                f"{path}: Lightning checkpoint with weights outside '{LIGHTNING_PREFIX}' (not a salmonn-pl fit?): {outside[:10]}"
            )
        state = {k[len(LIGHTNING_PREFIX) :]: v for k, v in obj["state_dict"].items()}
    elif "model" in obj and isinstance(obj["model"], dict):
        state = {}
        unplaced = []
        for key, value in obj["model"].items():
            try:
                mapped = map_official_key(key)
            except KeyError:
                unplaced.append(key)
                continue
            if mapped is not None:
                state[mapped] = value
        if unplaced:
            raise ValueError(f"{path}: {len(unplaced)} keys cannot be placed in SALMONN: {unplaced[:10]}")
    else:
        raise ValueError(
            f"{path}: neither an official SALMONN checkpoint ({{'model': ...}}), a salmonn-pl checkpoint, "
            "nor a salmonn-pl fit Lightning checkpoint"
        )

    pad_rows = [state.pop(k, None) for k in PAD_ROW_KEYS]
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ValueError(f"{path}: keys with no counterpart in this model (check the model config): {unknown[:10]}")
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if mismatched:
        raise ValueError(f"{path}: shape mismatches (check the model config):\n  " + "\n  ".join(mismatched))
    missing = [k for k in required_checkpoint_keys(model) if k not in state]
    if missing and not allow_missing:
        raise ValueError(
            f"{path}: lacks {len(missing)} of the weights this model takes from its checkpoint (they would stay "
            f"random): {missing[:20]}{' ...' if len(missing) > 20 else ''}. Check that this is the checkpoint of "
            "this model config, or set allow_missing: true for a deliberate partial load"
        )
    model.load_state_dict(state, strict=False)
    if all(r is not None for r in pad_rows):
        from salmonn_pl.model.llm import set_pad_rows

        set_pad_rows(model.llm, *pad_rows)

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    not_in_ckpt = sorted(trainable - set(state))
    counts = Counter(k.split(".")[0] for k in state)
    log.info("loaded %d tensors from %s: %s", len(state), path, dict(counts))
    if missing:
        log.info("%s: allow_missing: %d weights absent from the checkpoint stay randomly initialised, e.g. %s", path, len(missing), missing[:5])
    elif not_in_ckpt:
        log.warning("%s holds no value for %d trainable tensors (kept as initialised), e.g. %s", path, len(not_in_ckpt), not_in_ckpt[:5])
    return dict(counts)


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters under salmonn-pl names, plus the ``[PAD]`` embedding rows."""
    state = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    # [PAD] is the last row of both vocabulary matrices (added after the SentencePiece vocabulary).
    embed, lm_head = model.llm.get_input_embeddings(), model.llm.get_output_embeddings()
    state[PAD_ROW_KEYS[0]] = embed.weight[-1].detach().cpu().clone()
    state[PAD_ROW_KEYS[1]] = lm_head.weight[-1].detach().cpu().clone()
    return state


def save_trainable_checkpoint(model: nn.Module, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "state_dict": trainable_state_dict(model)}, path)
