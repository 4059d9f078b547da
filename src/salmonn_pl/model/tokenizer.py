"""The LLaMA SentencePiece tokenizer exactly as SALMONN used it (transformers 4.28 slow ``LlamaTokenizer``).

SALMONN loads the slow ``LlamaTokenizer`` and calls ``add_special_tokens({'pad_token': '[PAD]'})``, so
``[PAD]`` gets the id right after the SentencePiece vocabulary. The tokenizers-backed LlamaTokenizer of
transformers 5 tokenizes leading/double spaces and text after special tokens differently, and the ids
are what the trained LoRA/projection weights were fitted to, so this class reimplements the 4.28
behaviour on ``sentencepiece`` directly:

- the text is split on the special tokens ``<s>``, ``</s>``, ``<unk>`` and ``[PAD]``; each remaining
  chunk is encoded by SentencePiece on its own, so the dummy-prefix ``▁`` applies per chunk;
- whitespace next to ``[PAD]`` is stripped (it was added as a plain string, which 4.28 strips on both
  sides), but not next to ``<s>``/``</s>``/``<unk>`` (AddedTokens with lstrip/rstrip False);
- decoding reproduces 4.28's ``batch_decode`` string, including its quirk of inserting one space
  before the decoded text that precedes a special token, and joining added tokens with spaces.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm
import torch

PAD_TOKEN = "[PAD]"


class SalmonnTokenizer:
    """SentencePiece LLaMA tokenizer plus the ``[PAD]`` token SALMONN adds.

    ``path`` is a Hugging Face LLaMA directory holding ``tokenizer.model`` (its ``tokenizer_config.json``
    is read when present) or the ``tokenizer.model`` file itself.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        model_file = path / "tokenizer.model" if path.is_dir() else path
        if not model_file.is_file():
            raise FileNotFoundError(
                f"{path}: no SentencePiece tokenizer.model found (LLaMA directory or .model file expected)"
            )
        config = _read_tokenizer_config(model_file.parent / "tokenizer_config.json")

        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.bos_token_id: int = self.sp.bos_id()
        self.eos_token_id: int = self.sp.eos_id()
        self.unk_token_id: int = self.sp.unk_id()
        self.pad_token_id: int = self.sp.get_piece_size()
        self.bos_token = self.sp.id_to_piece(self.bos_token_id)
        self.eos_token = self.sp.id_to_piece(self.eos_token_id)
        self.unk_token = self.sp.id_to_piece(self.unk_token_id)
        self.pad_token = PAD_TOKEN

        # Defaults are those of transformers 4.28 LlamaTokenizer.__init__.
        self.add_bos_token: bool = config.get("add_bos_token", True)
        self.add_eos_token: bool = config.get("add_eos_token", False)
        self.clean_up_tokenization_spaces: bool = config.get("clean_up_tokenization_spaces", False)

        self.special_tokens: dict[str, int] = {
            self.bos_token: self.bos_token_id,
            self.eos_token: self.eos_token_id,
            self.unk_token: self.unk_token_id,
            self.pad_token: self.pad_token_id,
        }
        self.special_ids: frozenset[int] = frozenset(self.special_tokens.values())
        # Longest first, so that a token that is a prefix of another never wins (a trie does the same).
        alternatives = sorted(self.special_tokens, key=len, reverse=True)
        self._special_split = re.compile("(" + "|".join(re.escape(t) for t in alternatives) + ")")

    def __len__(self) -> int:
        return self.pad_token_id + 1

    # ----------------------------------------------------------------------------------------- encoding

    def tokenize(self, text: str) -> list[str]:
        """Token strings (SentencePiece pieces and special tokens) of ``text``, without ``<s>``."""
        chunks = self._special_split.split(text)
        for i, chunk in enumerate(chunks):
            if chunk == self.pad_token:
                if i > 0:
                    chunks[i - 1] = chunks[i - 1].rstrip()
                if i + 1 < len(chunks):
                    chunks[i + 1] = chunks[i + 1].lstrip()
        tokens: list[str] = []
        for chunk in chunks:
            if not chunk:
                continue
            if chunk in self.special_tokens:
                tokens.append(chunk)
            else:
                tokens.extend(self.sp.encode(chunk, out_type=str))
        return tokens

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        return [self.special_tokens[t] if t in self.special_tokens else self.sp.piece_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.pad_token if i == self.pad_token_id else self.sp.id_to_piece(i) for i in ids]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` adds ``<s>`` (and ``</s>`` if the config asks)."""
        ids = self.convert_tokens_to_ids(self.tokenize(text))
        if add_special_tokens:
            prefix = [self.bos_token_id] if self.add_bos_token else []
            suffix = [self.eos_token_id] if self.add_eos_token else []
            ids = prefix + ids + suffix
        return ids

    def batch_encode(
        self,
        texts: Sequence[str],
        padding_side: str = "right",
        max_length: int | None = None,
        add_special_tokens: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` of shape ``[len(texts), longest]``, padded with ``[PAD]``.

        ``max_length`` truncates each sequence on the right before padding, as
        ``tokenizer(..., truncation=True, max_length=...)`` did.
        """
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        rows = [self.encode(t, add_special_tokens=add_special_tokens)[:max_length] for t in texts]
        longest = max((len(r) for r in rows), default=0)
        input_ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(0, len(row)) if padding_side == "right" else slice(longest - len(row), longest)
            input_ids[i, span] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, span] = 1
        return input_ids, attention_mask

    # ----------------------------------------------------------------------------------------- decoding

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """The string transformers 4.28 ``LlamaTokenizer.decode``/``batch_decode`` returned for ``ids``."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        # [PAD] is the only token outside the SentencePiece vocabulary: it is decoded on its own and the
        # pieces are joined with spaces (4.28's spaces_between_special_tokens=True).
        parts: list[str] = []
        run: list[str] = []
        for token in self.convert_ids_to_tokens(ids):
            if token == self.pad_token:
                if run:
                    parts.append(self._pieces_to_string(run))
                    run = []
                parts.append(token)
            else:
                run.append(token)
        if run:
            parts.append(self._pieces_to_string(run))
        text = " ".join(parts)
        return _clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text

    def batch_decode(
        self, sequences: Iterable[Iterable[int]] | torch.Tensor, skip_special_tokens: bool = False
    ) -> list[str]:
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in sequences]

    def _pieces_to_string(self, tokens: list[str]) -> str:
        # 4.28 LlamaTokenizer.convert_tokens_to_string: special tokens are kept verbatim, and a special
        # token that follows normal text (not at position 0) adds a space *before* that text's decoding.
        out = ""
        pending: list[str] = []
        prev_is_special = False
        for i, token in enumerate(tokens):
            if token in self.special_tokens:
                if not prev_is_special and i != 0:
                    out += " "
                out += self.sp.decode(pending) + token
                pending = []
                prev_is_special = True
            else:
                pending.append(token)
                prev_is_special = False
        return out + self.sp.decode(pending)


def _read_tokenizer_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def _clean_up_tokenization(text: str) -> str:
    # transformers' PreTrainedTokenizerBase.clean_up_tokenization, used when the config enables it.
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text
