"""The composed SALMONN model: Whisper + BEATs -> window Q-Former -> LoRA LLM.

Read top to bottom: configuration, construction from the official on-disk files, audio encoding
(with the study's encoder ablations), assembly of the LLM input around ``<SpeechHere>``, and the
training loss. Decoding lives in :mod:`salmonn_pl.generation` (:func:`~salmonn_pl.generation.generate.generate`),
evaluation-speed audio encoding in :mod:`salmonn_pl.model.audio_encoding`.

Two layouts of a batch in the LLM input exist, because the study compares them:

* ``padding_side="right"`` is the official layout. The text after ``<SpeechHere>`` is right-padded
  with ``[PAD]`` *in the middle* of the sequence (between the prompt and the answer), targets are
  right-padded, and the training forward uses positions ``0..L-1`` regardless of padding. Answers
  then depend on which other questions share the batch.
* ``padding_side="left"`` (default) puts every pad before ``<s>`` and numbers positions from the
  first real token, so each row sees exactly what it would see in a batch of one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from salmonn_pl.audio.features import whisper_log_mel
from salmonn_pl.audio.load import CHUNK_SAMPLES, SAMPLE_RATE
from salmonn_pl.data.collate import SPEECH_PLACEHOLDER, AudioBatch
from salmonn_pl.data.variants import Ablation
from salmonn_pl.model.beats import BEATs
from salmonn_pl.model.llm import LoraSettings, embed_tokens, load_llm
from salmonn_pl.model.tokenizer import SalmonnTokenizer
from salmonn_pl.model.weights import WEIGHT_FIELDS, resolve_weights
from salmonn_pl.model.whisper import load_whisper_encoder
from salmonn_pl.model.window_qformer import QFormerSettings, WindowQFormer
from salmonn_pl.settings_check import above, at_least, require

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

PaddingSide = Literal["left", "right"]
# The audio tokens of a batch: [B, n, H]; a list of [n_i, H] when rows differ in length (long audio,
# text-only rows among others: [0, H]); None when every row is text-only.
AudioTokens = torch.Tensor | list[torch.Tensor] | None

@dataclass
class SalmonnConfig:
    """Every option of the official SALMONN model config, plus precision and batching knobs.

    Weights: ``llm_path`` is a Hugging Face causal-LM directory holding the SentencePiece
    ``tokenizer.model`` (Vicuna 13B v1.1 / 7B); ``whisper_path`` a Hugging Face Whisper directory
    (whisper-large-v2); ``beats_path`` an official BEATs checkpoint (``BEATs_iter3_plus_AS2M*.pt``),
    empty for a Whisper-only model; ``ckpt`` the official ``salmonn_v1.pth`` /
    ``salmonn_7b_v0.pth`` or a salmonn-pl checkpoint (trainable weights only), empty for a
    randomly initialised connector. Each is a local path or a name fetched into the Hugging Face
    cache: ``org/repo[@rev]`` (directories), ``hf://org/repo/file[@rev]``, ``https://...[#sha256=hex]``
    (see :mod:`salmonn_pl.model.weights`). ``allow_missing``: load a ``ckpt`` that lacks some of the
    connector / LoRA weights (they stay randomly initialised); otherwise that is an error.
    """

    llm_path: str
    whisper_path: str
    beats_path: str = ""
    ckpt: str = ""
    allow_missing: bool = False
    num_speech_query_token: int = 1
    window_level_qformer: bool = True
    second_per_window: float = 0.333333
    second_stride: float = 0.333333
    qformer: QFormerSettings = field(default_factory=QFormerSettings)
    lora: bool = True
    lora_rank: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    freeze_whisper: bool = True
    freeze_beats: bool = True
    freeze_qformer: bool = False
    freeze_proj: bool = False
    max_txt_len: int = 300
    end_sym: str = "</s>"
    # Precision as separate knobs. llm_dtype: the LLM's weights (the official code loads float16).
    # autocast_dtype: float16/bfloat16 autocast around encoders, Q-Former and LLM (the official GPU
    # path uses float16); "float32"/"none": no autocast, every module computes in its own weight
    # dtype (float32 encoders and Q-Former; with float16 LLM weights this is the study's
    # "fp16 weights, fp32 autocast" setting).
    llm_dtype: Literal["float32", "float16", "bfloat16"] = "float16"
    autocast_dtype: Literal["none", "float32", "float16", "bfloat16"] = "none"
    load_in_8bit: bool = False
    # "per_clip": every clip's BEATs tokens equal a batch of one (default). "official": the
    # official batched path, whose token mask is misaligned (see BEATs.extract_features).
    beats_batching: Literal["per_clip", "official"] = "per_clip"
    # Audio longer than Whisper's 30 s window: encode consecutive 30 s chunks with both encoders and
    # concatenate their audio tokens (88 per chunk by default), up to this many seconds. 30 = official.
    max_audio_seconds: float = 30.0

    def __post_init__(self) -> None:
        check_model_numbers(self)


def check_model_numbers(c: SalmonnConfig) -> None:
    """The numeric architecture options (``model.*``) are in range."""
    for name in ("second_per_window", "second_stride"):
        require(above(getattr(c, name), 0), f"model.{name}", getattr(c, name), "> 0 seconds")
    for name in ("lora_rank", "lora_alpha", "max_txt_len"):
        require(above(getattr(c, name), 0), f"model.{name}", getattr(c, name), "> 0")
    require(at_least(c.lora_dropout, 0) and c.lora_dropout < 1, "model.lora_dropout", c.lora_dropout, "in [0, 1)")
    require(at_least(c.num_speech_query_token, 1), "model.num_speech_query_token", c.num_speech_query_token, ">= 1")
    # Below 30 s it would not shorten what the model hears (a clip is encoded whole up to 30 s).
    require(at_least(c.max_audio_seconds, 30), "model.max_audio_seconds", c.max_audio_seconds,
            ">= 30 (Whisper's window; longer audio is encoded in 30 s chunks)")


@dataclass
class LLMInputs:
    inputs_embeds: torch.Tensor  # [B, L, H]
    attention_mask: torch.Tensor  # [B, L] (1 = real token)
    labels: torch.Tensor | None  # [B, L], -100 = ignored
    position_ids: torch.Tensor | None  # None = 0..L-1 (official training layout)
    audio_mask: torch.Tensor  # [B, L] True where an audio token sits


class Salmonn(nn.Module):
    def __init__(self, config: SalmonnConfig):
        super().__init__()
        # Every name resolves (and downloads) before anything loads, so a missing weight fails at once.
        paths = resolve_weights({f: getattr(config, f) for f in WEIGHT_FIELDS})
        llm_path = Path(paths["llm_path"])
        tokenizer = SalmonnTokenizer(llm_path)
        llm = load_llm(
            llm_path,
            tokenizer,
            torch_dtype=DTYPES[config.llm_dtype],
            lora=LoraSettings(
                rank=config.lora_rank,
                alpha=config.lora_alpha,
                dropout=config.lora_dropout,
                target_modules=tuple(config.lora_target_modules),
            )
            if config.lora
            else None,
            load_in_8bit=config.load_in_8bit,
        )
        whisper = load_whisper_encoder(paths["whisper_path"])
        beats = BEATs.from_checkpoint(paths["beats_path"]) if paths["beats_path"] else None
        self._build(config, tokenizer, llm, whisper, beats)
        if paths["ckpt"]:
            from salmonn_pl.model.checkpoint import load_salmonn_checkpoint

            load_salmonn_checkpoint(self, paths["ckpt"], allow_missing=config.allow_missing)

    @classmethod
    def from_modules(
        cls,
        config: SalmonnConfig,
        tokenizer: SalmonnTokenizer,
        llm: nn.Module,
        whisper: nn.Module,
        beats: BEATs | None = None,
    ) -> Salmonn:
        """A SALMONN around parts that are already built, reading no file.

        For models that exist only in memory, e.g. random weights at the released shapes for
        benchmarks. The parts are used as given: ``llm`` must have at least ``len(tokenizer)``
        embedding rows and already be frozen / LoRA-wrapped as wanted (see
        :func:`~salmonn_pl.model.llm.apply_lora`). The connector is created from ``config`` as in
        ``__init__`` and the encoders are frozen per ``config``; its paths and ``ckpt`` are ignored.
        """
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model._build(config, tokenizer, llm, whisper, beats)
        return model

    def _build(self, config: SalmonnConfig, tokenizer: SalmonnTokenizer, llm: nn.Module, whisper: nn.Module, beats: BEATs | None) -> None:
        """Hold the parts, create the connector that joins them, and freeze per ``config``."""
        self.config = config
        self.tokenizer = tokenizer
        self.llm = llm
        self.whisper = whisper
        self.beats = beats
        self.connector = WindowQFormer(
            whisper_width=whisper.config.d_model,
            beats_width=beats.output_dim if beats is not None else None,
            llm_width=llm.config.hidden_size,
            num_query_tokens=config.num_speech_query_token,
            second_per_window=config.second_per_window,
            second_stride=config.second_stride,
            window_level=config.window_level_qformer,
            qformer=config.qformer,
        )
        self._freeze()

    def _freeze(self) -> None:
        frozen = []
        if self.config.freeze_whisper:
            frozen.append(self.whisper)
        if self.config.freeze_beats and self.beats is not None:
            frozen.append(self.beats)
        if self.config.freeze_qformer:
            frozen += [self.connector.qformer, self.connector.ln_speech, self.connector.ln_audio]
        if self.config.freeze_proj:
            frozen.append(self.connector.proj)
        for module in frozen:
            if module is not None:
                module.requires_grad_(False)
        if self.config.freeze_qformer:
            self.connector.query_tokens.requires_grad_(False)

    def train(self, mode: bool = True) -> Salmonn:
        """Frozen encoders stay in eval mode: BEATs' layer drop and dropouts must not fire in them."""
        super().train(mode)
        for module, frozen in ((self.whisper, self.config.freeze_whisper), (self.beats, self.config.freeze_beats)):
            if module is not None and frozen:
                module.eval()
        return self

    # -- precision -------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.config.autocast_dtype in ("none", "float32"):
            return contextlib.nullcontext()
        device = next(self.parameters()).device
        return torch.autocast(device.type, dtype=DTYPES[self.config.autocast_dtype])

    # -- audio -----------------------------------------------------------------------------
    def encode_audio(self, audio: AudioBatch, ablation: Ablation = "none", output_attentions: bool = False) -> dict:
        """Audio tokens for the LLM, ``[B, n_tokens, llm_width]``, and the intermediate streams.

        Ablations act on the encoder *outputs*, before the connector's LayerNorms:
        ``zero_whisper`` / ``zero_beats`` replace that encoder's last hidden states by zeros (the
        Q-Former then sees the LayerNorm bias, a constant that carries no audio);
        ``zero_audio`` zeroes the projected audio tokens the LLM receives (the sequence keeps its
        length and positions); ``no_audio`` removes them from the prompt altogether (text-only;
        the caller passes ``audio_tokens=None`` to :meth:`assemble`).

        When ``max_audio_seconds`` exceeds 30 and a clip in the batch is longer than 30 s, every clip
        is cut into 30 s chunks and ``audio_tokens`` becomes a list with one ``[n_chunks_i * 88,
        llm_width]`` tensor per clip (see :meth:`encode_long_audio`).
        """
        spectrogram, raw_wav, padding_mask, wav_lengths = audio.tensors()
        if (
            self.config.max_audio_seconds > 30.0
            and raw_wav is not None
            and wav_lengths is not None
            and int(wav_lengths.max()) > CHUNK_SAMPLES
        ):
            return self.encode_long_audio(raw_wav, wav_lengths, ablation, output_attentions)
        with self.autocast():
            whisper_out = self.whisper(spectrogram.to(self.whisper.conv1.weight.dtype)).last_hidden_state
            beats_out = beats_mask = None
            if self.beats is not None and raw_wav is not None:
                if self.config.beats_batching == "official":
                    beats_out, _ = self.beats.extract_features(raw_wav, padding_mask=padding_mask, feature_only=True)
                else:
                    if wav_lengths is None:
                        wav_lengths = torch.full((raw_wav.size(0),), raw_wav.size(1), device=raw_wav.device)
                        if padding_mask is not None:
                            wav_lengths = (~padding_mask).sum(1)
                    beats_out, beats_mask = self.beats.extract_features_per_clip(raw_wav, wav_lengths)
            if ablation == "zero_whisper":
                whisper_out = torch.zeros_like(whisper_out)
            if ablation == "zero_beats" and beats_out is not None:
                beats_out = torch.zeros_like(beats_out)
            out = self.connector(whisper_out, beats_out, beats_mask, output_attentions=output_attentions)
        if ablation == "zero_audio":
            out["audio_tokens"] = torch.zeros_like(out["audio_tokens"])
        out["whisper_out"] = whisper_out
        if beats_out is not None:
            out["beats_out"] = beats_out
        return out

    def encode_long_audio(
        self, raw_wav: torch.Tensor, wav_lengths: torch.Tensor, ablation: Ablation = "none", output_attentions: bool = False
    ) -> dict:
        """Encode each clip as consecutive 30 s chunks (at most ``max_audio_seconds``) and concatenate.

        Every chunk goes through exactly the 30 s path (padded to >= 1 s, Whisper log-mel of 30 s,
        BEATs on the chunk's own samples), so a clip under 30 s gets the same tokens either way.
        """
        limit = int(round(self.config.max_audio_seconds * SAMPLE_RATE))
        chunks, owners = [], []
        for b in range(raw_wav.size(0)):
            n = min(int(wav_lengths[b]), limit)
            for start in range(0, max(n, 1), CHUNK_SAMPLES):
                chunks.append(raw_wav[b, start : min(n, start + CHUNK_SAMPLES)])
                owners.append(b)
        lengths = torch.tensor([max(len(c), SAMPLE_RATE) for c in chunks], device=raw_wav.device)
        padded = raw_wav.new_zeros(len(chunks), int(lengths.max()))
        for i, c in enumerate(chunks):
            padded[i, : len(c)] = c
        spectrogram = whisper_log_mel(padded, lengths)
        mask = torch.arange(padded.size(1), device=padded.device)[None, :] >= lengths[:, None]
        out = self.encode_audio(AudioBatch(spectrogram, padded, mask, lengths), ablation=ablation, output_attentions=output_attentions)
        owners_t = torch.tensor(owners, device=raw_wav.device)
        out["audio_tokens"] = [out["audio_tokens"][owners_t == b].flatten(0, 1) for b in range(raw_wav.size(0))]
        out["chunks_per_clip"] = torch.bincount(owners_t, minlength=raw_wav.size(0))
        return out

    # -- LLM input ---------------------------------------------------------------------------
    def split_prompt(self, prompt: str) -> tuple[list[int], list[int]]:
        if prompt.count(SPEECH_PLACEHOLDER) != 1:
            raise ValueError(f"prompt must contain {SPEECH_PLACEHOLDER} exactly once: {prompt!r}")
        before, after = prompt.split(SPEECH_PLACEHOLDER)
        return self.tokenizer.encode(before), self.tokenizer.encode(after)

    def target_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text + self.config.end_sym)[: self.config.max_txt_len]

    def assemble(
        self,
        prompts: list[str],
        audio_tokens: torch.Tensor | list[torch.Tensor] | None,
        targets: list[str] | None = None,
        padding_side: PaddingSide = "left",
    ) -> LLMInputs:
        """``[<s>, prompt before, audio, prompt after, (target </s>)]`` per row, padded to a batch.

        ``audio_tokens`` is ``[B, n, H]``, or a list of ``[n_i, H]`` when clips have different token
        counts (long audio); ``None`` builds the text-only prompt (no audio tokens at all).
        """
        pad, bos = self.tokenizer.pad_token_id, self.tokenizer.bos_token_id
        if audio_tokens is None:
            n_audio_rows = [0] * len(prompts)
        elif isinstance(audio_tokens, torch.Tensor):
            n_audio_rows = [audio_tokens.size(1)] * len(prompts)
        else:
            n_audio_rows = [t.size(0) for t in audio_tokens]
        parts = [self.split_prompt(p) for p in prompts]
        tgt = [self.target_ids(t) for t in targets] if targets is not None else [[] for _ in prompts]

        rows: list[tuple[list[int], list[int], list[int]]] = []  # ids, mask, labels
        if padding_side == "right":
            # Official layout: prompt-after right-padded in the middle, targets right-padded.
            if len(set(n_audio_rows)) != 1:
                raise ValueError("right padding needs the same number of audio tokens in every row")
            n_audio = n_audio_rows[0]
            max_after = max(len(a) for _, a in parts)
            max_tgt = max(len(t) for t in tgt)
            for (before, after), t in zip(parts, tgt):
                mid = max_after - len(after)
                end = max_tgt - len(t)
                prefix = [bos] + before + [pad] * n_audio + after + [pad] * mid
                ids = prefix + t + [pad] * end
                mask = [1] * (1 + len(before) + n_audio + len(after)) + [0] * mid + [1] * len(t) + [0] * end
                labels = [-100] * len(prefix) + t + [-100] * end
                rows.append((ids, mask, labels))
            # A batch whose prompt-before lengths differ cannot take this layout (the official
            # code would fail in its tokenizer call as well).
            if len({len(r[0]) for r in rows}) != 1:
                raise ValueError(f"right padding needs the same text before {SPEECH_PLACEHOLDER} in every row")
        else:
            seqs = []
            for (before, after), t, n_audio in zip(parts, tgt, n_audio_rows):
                ids = [bos] + before + [pad] * n_audio + after + t
                labels = [-100] * (len(ids) - len(t)) + t
                seqs.append((ids, labels))
            width = max(len(ids) for ids, _ in seqs)
            for ids, labels in seqs:
                n = width - len(ids)
                rows.append(([pad] * n + ids, [0] * n + [1] * len(ids), [-100] * n + labels))

        device = self.connector.proj.weight.device
        ids = torch.tensor([r[0] for r in rows], device=device)
        mask = torch.tensor([r[1] for r in rows], device=device)
        labels = torch.tensor([r[2] for r in rows], device=device) if targets is not None else None

        # Audio slots: the n_audio positions right after <s> + prompt-before in every row.
        audio_mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, (before, _) in enumerate(parts):
            start = (len(rows[i][1]) - sum(rows[i][1])) if padding_side == "left" else 0
            start += 1 + len(before)
            audio_mask[i, start : start + n_audio_rows[i]] = True

        embeds = embed_tokens(self.llm)(ids)
        if any(n_audio_rows):
            flat = audio_tokens.flatten(0, 1) if isinstance(audio_tokens, torch.Tensor) else torch.cat(list(audio_tokens))
            embeds = embeds.masked_scatter(audio_mask.unsqueeze(-1), flat.to(embeds.dtype))
        position_ids = None if padding_side == "right" else (mask.cumsum(-1) - 1).clamp(min=0)
        return LLMInputs(embeds, mask, labels, position_ids, audio_mask)

    # -- training ----------------------------------------------------------------------------
    def llm_logits(self, inputs: LLMInputs, logits_to_keep: int = 0) -> torch.Tensor:
        """LLM logits at every position, or at the last ``logits_to_keep`` ones."""
        with self.autocast():
            return self.llm(
                inputs_embeds=inputs.inputs_embeds,
                attention_mask=inputs.attention_mask,
                position_ids=inputs.position_ids,
                use_cache=False,
                logits_to_keep=logits_to_keep,
            ).logits

    @staticmethod
    def target_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row sum of log p(target token) and the number of target tokens."""
        logits = logits[:, :-1].float()
        labels = labels[:, 1:]
        valid = labels != -100
        logp = -F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
        return (logp * valid).sum(-1), valid.sum(-1)

    def answer_logprobs(self, inputs: LLMInputs, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row sum of log p(target token) and the target count, as :meth:`target_logprobs`.

        Logits are computed only from the first position that predicts a target onwards: a full
        ``[B, L, vocab]`` tensor would dominate memory with a 32k vocabulary.
        """
        labels = inputs.labels if labels is None else labels
        first_target = int((labels != -100).int().argmax(dim=1).min())
        keep = labels.shape[1] - first_target + 1
        return self.target_logprobs(self.llm_logits(inputs, keep), labels[:, -keep:])

    def lm_loss(self, inputs: LLMInputs) -> torch.Tensor:
        """The official loss: token-mean cross-entropy over every target token of the batch."""
        logp, count = self.answer_logprobs(inputs)
        return -logp.sum() / count.sum().clamp(min=1)
