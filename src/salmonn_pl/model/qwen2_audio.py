"""Qwen2-Audio as a second model family for the SAKURA study.

What the study needs from a model, on top of transformers' ``Qwen2AudioForConditionalGeneration`` and
``Qwen2AudioProcessor`` loaded from a directory in the official format (``Qwen/Qwen2-Audio-7B-Instruct``
or ``write_tiny_qwen2_audio``):

1. a prompt in the family's own chat template, for a question with a clip or text only,
2. the batch: Whisper log-mel features of 16 kHz clips (the processor's feature extractor: 128 mel bins,
   100 frames per second, padded to its 30 s window, which is also the limit of the encoder), the
   template's single ``<|AUDIO|>`` expanded by the processor into one token per 40 ms, left padding,
3. where the audio sits in the token sequence and which seconds of the clip each audio token covers,
4. batched generation (greedy or beam search) that gives every question the answer it gets alone,
5. the log-likelihood of a given answer text after the prompt, to score options,
6. LoRA on the LLM's query and value projections through peft.

The merge of audio embeddings into the text embeddings, the encoder and the LLM are transformers' own
code: this module only prepares what goes in and reads what comes out.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Sequence

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from salmonn_pl.model.family import AnswerAttention, AudioLLM, DecodingRequest, FamilyQuestion
from salmonn_pl.model.weights import resolve_weight
from salmonn_pl.settings_check import above, at_least, require

SAMPLE_RATE = 16_000
# The encoder's 1500 positions after the stride-2 convolution hold 3000 mel frames of 10 ms: 30 s.
MAX_AUDIO_SECONDS = 30.0
# 100 mel frames per second -> stride-2 convolution -> stride-2 average pooling: 25 tokens per second.
AUDIO_TOKENS_PER_SECOND = 25

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

Waveform = np.ndarray | torch.Tensor
# The audio part of a user turn in the chat template; SAKURA's caption control puts its caption there.
AUDIO_SPAN = "<|audio_bos|><|AUDIO|><|audio_eos|>"


@dataclass
class Qwen2AudioBatch:
    """Left-padded model inputs for a batch of questions, and where each question's audio tokens are."""

    input_ids: torch.Tensor  # (batch, tokens), left padded
    attention_mask: torch.Tensor  # (batch, tokens), 0 on the padding
    input_features: torch.Tensor | None  # (clips, 128, 3000) log-mel, one row per question that has audio
    feature_attention_mask: torch.Tensor | None  # (clips, 3000), 1 on the clip's frames
    audio_positions: list[torch.Tensor]  # per question: indices into input_ids of its <|AUDIO|> tokens
    audio_seconds: list[torch.Tensor]  # per question: (tokens, 2) start and end second of the clip each covers
    chunks: list[int]  # per question: audio parts its clip was given as (0: no clip), one feature row each

    def model_inputs(self) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.input_features is not None:
            inputs["input_features"] = self.input_features
            inputs["feature_attention_mask"] = self.feature_attention_mask
        return inputs

    def to(self, device: torch.device | str) -> Qwen2AudioBatch:
        def move(t):
            return None if t is None else t.to(device)

        return Qwen2AudioBatch(
            move(self.input_ids),
            move(self.attention_mask),
            move(self.input_features),
            move(self.feature_attention_mask),
            [p.to(device) for p in self.audio_positions],
            self.audio_seconds,
            self.chunks,
        )


@dataclass
class Qwen2AudioGeneration:
    """Generated answers: new token ids (up to, without, the first end-of-turn token) and their text."""

    token_ids: list[list[int]]
    texts: list[str]
    finished: list[bool]  # whether an end token stopped the answer (False: max_new_tokens cut it)


def audio_token_seconds(num_tokens: int, offset: float = 0.0) -> torch.Tensor:
    """(num_tokens, 2) start and end second covered by each audio token (40 ms each) of a clip, or of
    a chunk of one that starts ``offset`` seconds into it."""
    starts = offset + torch.arange(num_tokens, dtype=torch.float64) / AUDIO_TOKENS_PER_SECOND
    return torch.stack([starts, starts + 1.0 / AUDIO_TOKENS_PER_SECOND], dim=1)


def split_into_windows(clip: np.ndarray) -> list[np.ndarray]:
    """A clip longer than the encoder's 30 s window as the fewest chunks of equal length that fit it
    (equal, so that no chunk is a sliver the encoder makes no token of); shorter clips stay whole."""
    window = int(MAX_AUDIO_SECONDS * SAMPLE_RATE)
    count = -(-len(clip) // window)
    return [part for part in np.array_split(clip, count)] if count > 1 else [clip]


def _as_waveform(audio: Waveform, index: int, max_seconds: float = MAX_AUDIO_SECONDS) -> np.ndarray:
    """A 1-D float32 numpy clip; the study's clips are 16 kHz mono, longer than ``max_seconds`` is an error."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio)
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(
            f"audio[{index}]: expected a 1-D float waveform at {SAMPLE_RATE} Hz, got dtype {audio.dtype} and shape {audio.shape}"
        )
    if audio.size == 0:
        raise ValueError(f"audio[{index}]: empty waveform")
    seconds = audio.size / SAMPLE_RATE
    if seconds > max_seconds:
        # The feature extractor would silently cut the clip to its first 30 s.
        window = "audio window" if max_seconds == MAX_AUDIO_SECONDS else "model.max_audio_seconds"
        raise ValueError(
            f"audio[{index}]: {seconds:.2f} s is longer than Qwen2-Audio's {max_seconds:g} s {window} "
            f"({int(max_seconds * SAMPLE_RATE)} samples at {SAMPLE_RATE} Hz)"
        )
    return audio.astype(np.float32, copy=False)


def _chunk_token_seconds(parts: Sequence[np.ndarray]) -> torch.Tensor:
    """(tokens, 2) seconds of the clip covered by each audio token of its chunks, in order."""
    spans, offset = [], 0
    for part in parts:
        spans.append(audio_token_seconds(Qwen2Audio.num_audio_tokens(len(part)), offset / SAMPLE_RATE))
        offset += len(part)
    return torch.cat(spans) if spans else torch.zeros(0, 2, dtype=torch.float64)


class AfterPrompt(LogitsProcessor):
    """A logits processor that sees the last prompt token and the answer so far, not the whole prompt:
    what it sees under SALMONN's decoder (a start token and the answer), so that length- and
    phrase-based processors count the same tokens for every family."""

    def __init__(self, processor: LogitsProcessor, prompt_length: int) -> None:
        self.processor, self.start = processor, prompt_length - 1

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.processor(input_ids[:, self.start :], scores)


class Qwen2Audio(AudioLLM):
    """A Qwen2-Audio checkpoint with the processor it was released with."""

    family = "Qwen2-Audio"
    max_audio_seconds = MAX_AUDIO_SECONDS

    def __init__(self, model: Qwen2AudioForConditionalGeneration, processor: Qwen2AudioProcessor,
                 system: str | None = None, max_audio_seconds: float = MAX_AUDIO_SECONDS):
        super().__init__()
        self.model = model
        self.processor = processor
        self.system = system  # the system turn of every prompt (None: the template's default)
        # Clips up to this long are heard, in 30 s chunks given as consecutive audio parts of the turn.
        self.max_audio_seconds = max_audio_seconds
        self.tokenizer = processor.tokenizer
        self.audio_token_id = processor.audio_token_id
        if model.config.audio_token_id != self.audio_token_id:
            raise ValueError(
                f"config.json audio_token_index {model.config.audio_token_id} is not the processor's "
                f"{processor.audio_token} id {self.audio_token_id}"
            )
        # Ends of an answer: the checkpoint's generation eos ids (Instruct: <|im_end|> and <|endoftext|>).
        eos = model.generation_config.eos_token_id
        self.eos_token_ids = set([eos] if isinstance(eos, int) else (eos or []))
        self.pad_token_id = self.tokenizer.pad_token_id

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str = "float32", device: str = "cpu",
                        system: str | None = None, max_audio_seconds: float = MAX_AUDIO_SECONDS) -> Qwen2Audio:
        if dtype not in DTYPES:
            raise ValueError(f"dtype: {dtype!r} is not one of {sorted(DTYPES)}")
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json, not a Qwen2-Audio directory")
        model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=DTYPES[dtype]).to(device).eval()
        processor = Qwen2AudioProcessor.from_pretrained(path)
        return cls(model, processor, system=system, max_audio_seconds=max_audio_seconds).eval()

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ---- 1. prompt -------------------------------------------------------------------------------
    def prompt(self, question: str, with_audio: bool = True, system: str | None = None, caption: str | None = None,
               chunks: int = 1) -> str:
        """The chat-template text of one user turn (clip first, as in the model card) and the assistant cue.

        ``system=None`` keeps the template's default system turn ("You are a helpful assistant.").
        ``caption`` (SAKURA's text control) stands where the clip's audio tokens would, and the turn has no audio.
        ``chunks``: a clip longer than 30 s is given as that many consecutive audio parts ("Audio 1: ...
        Audio 2: ...", as the template writes several clips).
        """
        if caption is not None:
            text = self.prompt(question, with_audio=True, system=system)
            if text.count(AUDIO_SPAN) != 1:
                raise ValueError(f"the chat template's audio part {AUDIO_SPAN!r} is not in its prompt {text!r}")
            return text.replace(AUDIO_SPAN, caption)
        content = [{"type": "text", "text": question}]
        if with_audio:
            # The template only looks at the key; the clip itself goes to the processor.
            content[:0] = [{"type": "audio", "audio_url": f"clip{k}"} for k in range(chunks)]
        conversation = [{"role": "user", "content": content}]
        if system is not None:
            conversation.insert(0, {"role": "system", "content": system})
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    # ---- 2. batch --------------------------------------------------------------------------------
    def audio_features(self, audios: Sequence[Waveform]) -> dict[str, torch.Tensor]:
        """Log-mel features of 16 kHz clips, padded to the 30 s window, and their frame masks."""
        clips = [_as_waveform(a, i) for i, a in enumerate(audios)]
        features = self.processor.feature_extractor(
            clips, sampling_rate=SAMPLE_RATE, padding="max_length", return_attention_mask=True, return_tensors="pt"
        )
        return {"input_features": features["input_features"], "feature_attention_mask": features["attention_mask"]}

    def batch(
        self,
        questions: Sequence[str],
        audios: Sequence[Waveform | None] | None = None,
        system: str | None = None,
        captions: Sequence[str | None] | None = None,
    ) -> Qwen2AudioBatch:
        """Tokenised, left-padded prompts; ``audios[i] = None`` (or ``audios=None``) asks text only,
        ``captions[i]`` puts a caption where the audio would be (the row must then have no audio)."""
        audios = list(audios) if audios is not None else [None] * len(questions)
        captions = list(captions) if captions is not None else [None] * len(questions)
        if len(audios) != len(questions) or len(captions) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(audios)} audios and {len(captions)} captions")
        if any(a is not None and c is not None for a, c in zip(audios, captions)):
            raise ValueError("a question has both a clip and a caption; the caption replaces the clip")
        system = self.system if system is None else system
        chunked = [split_into_windows(_as_waveform(a, i, self.max_audio_seconds)) if a is not None else []
                   for i, a in enumerate(audios)]
        texts = [self.prompt(q, with_audio=a is not None, system=system, caption=c, chunks=len(parts))
                 for q, a, c, parts in zip(questions, audios, captions, chunked)]
        clips = [part for parts in chunked for part in parts]
        inputs = self.processor(
            text=texts,
            audio=clips or None,
            sampling_rate=SAMPLE_RATE,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        positions = [torch.nonzero(row == self.audio_token_id).flatten() for row in inputs["input_ids"]]
        seconds = [_chunk_token_seconds(parts) for parts in chunked]
        for i, (p, t) in enumerate(zip(positions, seconds)):
            if len(p) != len(t):
                raise RuntimeError(f"question {i}: the processor placed {len(p)} audio tokens, {len(t)} expected")
        batch = Qwen2AudioBatch(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            input_features=inputs.get("input_features") if clips else None,
            feature_attention_mask=inputs.get("feature_attention_mask") if clips else None,
            audio_positions=positions,
            audio_seconds=seconds,
            chunks=[len(parts) for parts in chunked],
        )
        return batch.to(self.device)

    # ---- 3. audio tokens -------------------------------------------------------------------------
    @staticmethod
    def num_audio_tokens(num_samples: int) -> int:
        """Audio tokens for a clip of ``num_samples`` at 16 kHz (at most 750, for 30 s)."""
        frames = min(-(-num_samples // 160), int(MAX_AUDIO_SECONDS * 100))  # 10 ms hop, the frame mask's count
        after_conv = (frames - 1) // 2 + 1
        return (after_conv - 2) // 2 + 1

    def audio_spans(self, batch: Qwen2AudioBatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per question: the audio token positions and the (start, end) seconds each one covers."""
        return list(zip(batch.audio_positions, batch.audio_seconds))

    # ---- 4. generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        questions: Sequence[str],
        audios: Sequence[Waveform | None] | None = None,
        num_beams: int = 1,
        max_new_tokens: int = 64,
        repetition_penalty: float = 1.0,
        length_penalty: float = 1.0,
        system: str | None = None,
        captions: Sequence[str | None] | None = None,
        zero_audio: Sequence[bool] | None = None,
        logits_processors: Sequence[LogitsProcessor] = (),
        **sampling,
    ) -> Qwen2AudioGeneration:
        """Decoding of a left-padded batch with transformers' generate: deterministic (greedy for
        ``num_beams=1``) unless ``sampling`` sets ``do_sample=True`` (with ``temperature``, ``top_p``,
        ``top_k``, ``min_new_tokens``).

        The checkpoint's own sampling settings (generation_config) are switched off so that an answer
        depends on its question and the given settings only.
        """
        batch = self.batch(questions, audios, system=system, captions=captions)
        knobs = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None} | sampling
        with self.zeroed_audio(zero_audio, batch):
            output = self.model.generate(
                **batch.model_inputs(),
                num_beams=num_beams,
                max_new_tokens=max_new_tokens,
                repetition_penalty=repetition_penalty,
                length_penalty=length_penalty,
                logits_processor=LogitsProcessorList([AfterPrompt(p, batch.input_ids.shape[1]) for p in logits_processors])
                if logits_processors else None,
                **knobs,
            )
        new_tokens = output[:, batch.input_ids.shape[1] :].tolist()
        token_ids, finished = [], []
        for row in new_tokens:
            end = next((i for i, t in enumerate(row) if t in self.eos_token_ids), None)
            token_ids.append(row if end is None else row[:end])
            finished.append(end is not None)
        texts = self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)
        return Qwen2AudioGeneration(token_ids=token_ids, texts=texts, finished=finished)

    @contextlib.contextmanager
    def zeroed_audio(self, zero_audio: Sequence[bool] | None, batch: Qwen2AudioBatch):
        """Within the block, the projected audio embeddings of the questions of ``batch`` flagged in
        ``zero_audio`` are zeros (the ``zero_audio`` ablation: the LLM gets as many audio tokens, all
        zero), every chunk of a long clip."""
        flags = [bool(z) for z, chunks in zip(zero_audio or (), batch.chunks) for _ in range(chunks)]
        if not any(flags):
            yield
            return
        zero = torch.tensor(flags)

        def hook(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
            # One row per clip; generate repeats each clip's row per beam (or sample), consecutively.
            rows = zero.repeat_interleave(output.shape[0] // len(zero)).to(output.device)
            return output.masked_fill(rows[:, None, None], 0.0)

        handle = self.model.model.multi_modal_projector.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def generate_answers(
        self,
        questions: Sequence[FamilyQuestion],
        request: DecodingRequest,
        logits_processors: Sequence[LogitsProcessor] = (),
    ) -> list[str]:
        sampling = {"min_new_tokens": request.min_new_tokens or None}
        if request.do_sample:
            sampling |= {"do_sample": True, "temperature": request.temperature, "top_p": request.top_p,
                         "top_k": request.top_k}
        result = self.generate(
            [q.text for q in questions],
            [q.clip for q in questions],
            num_beams=request.num_beams,
            max_new_tokens=request.max_new_tokens,
            repetition_penalty=request.repetition_penalty,
            length_penalty=request.length_penalty,
            captions=[q.caption for q in questions],
            zero_audio=[q.zero_audio for q in questions],
            logits_processors=logits_processors,
            **sampling,
        )
        return [text.strip() for text in result.texts]

    # ---- 5. answer log-likelihood ----------------------------------------------------------------
    def answer_token_ids(self, answer: str) -> list[int]:
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"answer {answer!r} has no tokens")
        return ids

    def answer_log_likelihood(
        self,
        questions: Sequence[str],
        audios: Sequence[Waveform | None] | None,
        answers: Sequence[str],
        system: str | None = None,
        captions: Sequence[str | None] | None = None,
        zero_audio: Sequence[bool] | None = None,
        end_of_answer: bool = False,
    ) -> torch.Tensor:
        """(batch,) float64 sum of log p(answer token | prompt, earlier answer tokens) from one forward;
        with ``end_of_answer`` the ``<|im_end|>`` that closes the model's turn is scored as well.

        The answer is tokenised on its own and appended after the assistant cue (the prompt ends with a
        newline, where Qwen2's pre-tokenizer splits anyway), so the scored tokens are exactly the
        answer's: [left padding | prompt | answer | right padding].
        """
        return self._answer_scores(questions, audios, answers, system, captions, zero_audio, end_of_answer)[0]

    def _answer_scores(self, questions, audios, answers, system, captions, zero_audio, end_of_answer):
        """:meth:`answer_log_likelihood` and the number of answer tokens it scored per row."""
        if len(answers) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
        end = [self.end_of_turn_id] if end_of_answer else []
        answer_ids = [self.answer_token_ids(a) + end for a in answers]
        batch, inputs, tail, tail_mask = self._teacher_forced(questions, audios, answer_ids, system, captions)
        prompt_len = batch.input_ids.shape[1]
        with self.zeroed_audio(zero_audio, batch):
            logits = self.model(**inputs).logits
        # The token at position t is predicted by the logits at t - 1.
        log_probs = logits[:, prompt_len - 1 : -1].double().log_softmax(-1)
        picked = log_probs.gather(-1, tail.unsqueeze(-1)).squeeze(-1)
        return (picked * tail_mask).sum(-1), tail_mask.sum(-1)

    def _teacher_forced(self, questions, audios, answer_ids: Sequence[Sequence[int]], system=None, captions=None):
        """``[left padding | prompt | answer | right padding]`` model inputs, positions counting real tokens."""
        batch = self.batch(questions, audios, system=system, captions=captions)
        longest = max((len(a) for a in answer_ids), default=0)
        size = batch.input_ids.shape[0]
        tail = torch.full((size, longest), self.pad_token_id, dtype=torch.long, device=self.device)
        tail_mask = torch.zeros((size, longest), dtype=torch.long, device=self.device)
        for i, ids in enumerate(answer_ids):
            tail[i, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
            tail_mask[i, : len(ids)] = 1
        input_ids = torch.cat([batch.input_ids, tail], dim=1)
        attention_mask = torch.cat([batch.attention_mask, tail_mask], dim=1)
        # Positions count real tokens only, as generate does for left padding.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        inputs = batch.model_inputs() | {"input_ids": input_ids, "attention_mask": attention_mask,
                                         "position_ids": position_ids}
        return batch, inputs, tail, tail_mask

    def token_vectors(self, kind: str) -> torch.Tensor:
        layer = self.model.get_input_embeddings() if kind == "input" else self.model.get_output_embeddings()
        return layer.weight.detach()

    @torch.no_grad()
    def next_token_logits(self, questions: Sequence[FamilyQuestion], prefixes: Sequence[Sequence[int]]) -> torch.Tensor:
        audios = [q.clip for q in questions]
        batch, inputs, _, _ = self._teacher_forced([q.text for q in questions], audios, [list(p) for p in prefixes],
                                                  captions=[q.caption for q in questions])
        with self.zeroed_audio([q.zero_audio for q in questions], batch):
            logits = self.model(**inputs, use_cache=False).logits
        # Row k's next token follows its prompt and its own prefix (the prefixes are right-padded).
        last = torch.tensor([batch.input_ids.shape[1] - 1 + len(p) for p in prefixes], device=logits.device)
        return logits[torch.arange(len(prefixes), device=logits.device), last]

    @torch.no_grad()
    def answer_attention(self, questions: Sequence[FamilyQuestion], answers: Sequence[Sequence[int]]) -> AnswerAttention:
        if any(len(a) == 0 for a in answers):
            answers = [list(a) or [self.end_of_turn_id] for a in answers]  # an empty answer: its end of turn
        audios = [q.clip for q in questions]
        batch, inputs, _, _ = self._teacher_forced([q.text for q in questions], audios, answers,
                                                  captions=[q.caption for q in questions])
        llm = self.model.model.language_model
        previous = llm.config._attn_implementation
        llm.set_attn_implementation("eager")  # SDPA returns no attention weights
        try:
            with self.zeroed_audio([q.zero_audio for q in questions], batch):
                out = self.model(**inputs, output_attentions=True, use_cache=False, logits_to_keep=1)
        finally:
            llm.set_attn_implementation(previous)
        attention = torch.stack([layer.float().mean(1) for layer in out.attentions])
        return AnswerAttention(
            attention=attention,
            prompt_length=batch.input_ids.shape[1],
            answer_lengths=[len(a) for a in answers],
            audio_positions=batch.audio_positions,
            audio_seconds=batch.audio_seconds,
        )

    @property
    def end_of_turn_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids("<|im_end|>")

    @property
    def end_of_answer_id(self) -> int:
        return self.end_of_turn_id

    def prompt_token_ids(self, questions: Sequence[FamilyQuestion]) -> list[list[int]]:
        texts = [self.prompt(q.text, with_audio=False, system=self.system, caption=q.caption) for q in questions]
        return [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]

    def answer_log_likelihoods(
        self, questions: Sequence[FamilyQuestion], answers: Sequence[str], end_of_answer: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._answer_scores(
            [q.text for q in questions], [q.clip for q in questions], answers, None,
            [q.caption for q in questions], [q.zero_audio for q in questions], end_of_answer,
        )

    # ---- 6. LoRA ---------------------------------------------------------------------------------
    def add_lora(self, r: int = 8, alpha: int = 16, dropout: float = 0.0, targets: Sequence[str] = ("q_proj", "v_proj")):
        """LoRA adapters (B = 0: the model's outputs are unchanged) on the LLM's projections only.

        The audio encoder's attention has projections of the same names; the pattern keeps them out.
        Returns the peft model (save_pretrained writes the adapter); ``self.model`` holds the adapted layers.
        """
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=rf".*language_model\.layers\.\d+\.self_attn\.({'|'.join(targets)})",
        )
        return get_peft_model(self.model, config)


@dataclass
class QwenLoRASettings:
    """LoRA adapters on the LLM's projections named in ``target_modules`` (none on the audio encoder)."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        require(above(self.rank, 0), "model.adapters.rank", self.rank, "> 0")
        require(above(self.alpha, 0), "model.adapters.alpha", self.alpha, "> 0")
        require(at_least(self.dropout, 0) and self.dropout < 1, "model.adapters.dropout", self.dropout, "in [0, 1)")


@dataclass
class Qwen2AudioConfig:
    """A Qwen2-Audio checkpoint as ``model.model`` of a ``salmonn-pl`` config.

    ``qwen2_audio_path``: a directory in the official format or a hub name
    (``Qwen/Qwen2-Audio-7B-Instruct``, resolved like SALMONN's weights, see
    :mod:`salmonn_pl.model.weights`). ``system_prompt``: ``None`` keeps the chat template's own
    ("You are a helpful assistant."). ``adapters``: LoRA on the LLM (``None``: none); ``finetuned``: a
    ``salmonn-pl fit`` checkpoint (``.ckpt``, a path or a name like SALMONN's ``ckpt``) whose adapters
    are loaded into them (every adapter weight must be in it). ``max_audio_seconds``: the longest clip
    heard; beyond the encoder's 30 s window a clip is split into equal chunks of at most 30 s, given as
    consecutive audio parts of the turn ("Audio 1: ... Audio 2: ..."), the way the model takes several
    clips (the data module keeps as much audio, see ``salmonn-pl``'s link). It means what SALMONN's
    does; every other field name differs from :class:`~salmonn_pl.model.salmonn.SalmonnConfig`'s, so
    that a config swapping the family (``class_path``) carries no other SALMONN setting over.
    """

    model_class: ClassVar[type[AudioLLM]] = Qwen2Audio

    qwen2_audio_path: str
    dtype: Literal["float32", "float16", "bfloat16"] = "bfloat16"
    system_prompt: str | None = None
    adapters: QwenLoRASettings | None = None
    finetuned: str = ""
    max_audio_seconds: float = MAX_AUDIO_SECONDS

    def __post_init__(self) -> None:
        require(at_least(self.max_audio_seconds, MAX_AUDIO_SECONDS), "model.max_audio_seconds", self.max_audio_seconds,
                f">= {MAX_AUDIO_SECONDS:g} (the encoder's window; longer clips are heard in 30 s chunks)")

    def build(self) -> Qwen2Audio:
        path = resolve_weight(self.qwen2_audio_path, "model.qwen2_audio_path", "dir")
        model = Qwen2Audio.from_pretrained(path, dtype=self.dtype, system=self.system_prompt,
                                           max_audio_seconds=self.max_audio_seconds)
        if self.adapters is not None:
            a = self.adapters
            model.add_lora(a.rank, a.alpha, a.dropout, tuple(a.target_modules))
        if self.finetuned:
            if self.adapters is None:
                raise ValueError(f"model.finetuned {self.finetuned!r}: a checkpoint of adapters needs model.adapters "
                                 "(their rank and target modules) set as when it was trained")
            load_adapters(model, resolve_weight(self.finetuned, "model.finetuned", "file"))
        return model


def load_adapters(model: Qwen2Audio, path: str) -> None:
    """The LoRA weights of a ``salmonn-pl fit`` checkpoint into ``model``: exactly its trainable weights."""
    state = torch.load(path, map_location="cpu", weights_only=False).get("state_dict", {})
    prefix = "family_model."
    weights = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    wanted = {n for n, p in model.named_parameters() if p.requires_grad}
    missing, unknown = sorted(wanted - set(weights)), sorted(set(weights) - wanted)
    if missing or unknown:
        raise ValueError(f"model.finetuned {path}: does not hold this model's adapters (check model.adapters' rank "
                         f"and target_modules): {len(missing)} missing, e.g. {missing[:2]}; {len(unknown)} unknown, "
                         f"e.g. {unknown[:2]}")
    model.load_state_dict(weights, strict=False)
