"""Qwen2-Audio family: batched inputs give every question what transformers gives it alone.

The reference for one question is the usage of the transformers docs / model card: the processor's
chat template, ``processor(text=..., audio=...)`` for that question only, ``model.generate``. The
tiny random Qwen2-Audio is written in the official on-disk format and loaded with from_pretrained.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from salmonn_pl.model.qwen2_audio import (
    AUDIO_TOKENS_PER_SECOND,
    SAMPLE_RATE,
    Qwen2Audio,
    audio_token_seconds,
)
from salmonn_pl.model.qwen2_audio_tiny import write_tiny_qwen2_audio
from tests.helpers.golden import SAKURA_MINI

# Clips of different lengths (0.4 s to 10.2 s) from four tracks, with their SAKURA questions.
CLIPS = [
    ("Animal", "frog50.wav"),
    ("Emotion", "1086_IEO_HAP_MD.wav"),
    ("Language", "es_test_0_common_voice_es_26991582.wav"),
    ("Gender", "en_test_0_common_voice_en_23863783.wav"),
]
MAX_NEW_TOKENS = 12


def _sakura_item(track: str, file: str) -> tuple[str, str, np.ndarray]:
    with open(SAKURA_MINI / "data" / track / "metadata.csv", newline="", encoding="utf-8") as f:
        row = next(r for r in csv.DictReader(f) if r["file"] == file)
    audio, rate = sf.read(SAKURA_MINI / "data" / track / "audio" / file, dtype="float32")
    assert rate == SAMPLE_RATE and audio.ndim == 1
    return row["single_instruction"], row["single_answer"], audio


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_qwen2_audio(tmp_path_factory.mktemp("tiny-qwen2-audio"), seed=0)


@pytest.fixture(scope="module")
def qwen(tiny_dir):
    return Qwen2Audio.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def items():
    if not (SAKURA_MINI / "data").is_dir():
        pytest.skip(f"{SAKURA_MINI} not found")
    return [_sakura_item(track, file) for track, file in CLIPS]


@pytest.fixture(scope="module")
def reference(tiny_dir):
    """transformers' own model and processor, loaded separately from the wrapper's."""
    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_dir).eval()
    return model, Qwen2AudioProcessor.from_pretrained(tiny_dir)


def _alone_inputs(processor, question, audio):
    """One question as in the transformers docs: chat template, then processor on that item only."""
    content = [{"type": "text", "text": question}]
    if audio is not None:
        content.insert(0, {"type": "audio", "audio_url": "clip.wav"})
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
    if audio is None:
        return processor(text=text, return_tensors="pt")
    return processor(text=text, audio=[audio], sampling_rate=SAMPLE_RATE, return_tensors="pt")


def _cut_at_end(ids: list[int], ends: set[int]) -> list[int]:
    return next((ids[:i] for i, t in enumerate(ids) if t in ends), ids)


def _generate_alone(reference, question, audio, num_beams):
    model, processor = reference
    inputs = _alone_inputs(processor, question, audio)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, num_beams=num_beams, max_new_tokens=MAX_NEW_TOKENS)
    ends = set(model.generation_config.eos_token_id)
    return _cut_at_end(out[0, inputs["input_ids"].shape[1] :].tolist(), ends)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_batched_generation_matches_each_question_alone(qwen, reference, items, num_beams):
    questions = [q for q, _, _ in items]
    audios = [a for _, _, a in items]
    batched = qwen.generate(questions, audios, num_beams=num_beams, max_new_tokens=MAX_NEW_TOKENS)
    alone = [_generate_alone(reference, q, a, num_beams) for q, a in zip(questions, audios)]
    assert batched.token_ids == alone
    # The comparison has teeth: answers differ between questions and are not one repeated token.
    assert len({tuple(t) for t in alone}) == len(alone)
    assert all(len(set(t)) > 1 for t in alone if len(t) > 2)
    assert batched.texts == qwen.tokenizer.batch_decode(alone, skip_special_tokens=True)


def test_generation_sees_some_answers_end_early(qwen, items):
    """The tiny model ends some answers before max_new_tokens, so the comparison covers the end handling."""
    batched = qwen.generate([q for q, _, _ in items], [a for _, _, a in items], max_new_tokens=MAX_NEW_TOKENS)
    assert any(batched.finished)
    assert all(len(t) < MAX_NEW_TOKENS for t, f in zip(batched.token_ids, batched.finished) if f)


def test_right_padding_would_change_answers(qwen, reference, items):
    """Guard that the batch comparison above can fail: the same batch right-padded answers differently."""
    model, processor = reference
    questions = [q for q, _, _ in items]
    texts = [qwen.prompt(q) for q in questions]
    inputs = processor(
        text=texts, audio=[a for _, _, a in items], sampling_rate=SAMPLE_RATE, padding=True, padding_side="right",
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    ends = set(model.generation_config.eos_token_id)
    right = [_cut_at_end(row, ends) for row in out[:, inputs["input_ids"].shape[1] :].tolist()]
    alone = [_generate_alone(reference, q, a, 1) for q, (_, _, a) in zip(questions, items)]
    assert right != alone


def test_batched_logits_match_alone(qwen, reference, items):
    """Next-token logits after each prompt, batched and left-padded vs alone (float32 reduction order only)."""
    model, processor = reference
    questions = [q for q, _, _ in items]
    batch = qwen.batch(questions, [a for _, _, a in items])
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = qwen.model(**batch.model_inputs(), position_ids=position_ids).logits[:, -1]
        for i, (q, _, a) in enumerate(items):
            alone = model(**_alone_inputs(processor, q, a)).logits[0, -1]
            assert (batched[i] - alone).abs().max().item() < 1e-4


def test_mixed_batch_with_text_only_question(qwen, reference, items):
    """A text-only question (no clip) batched with audio questions answers as alone, and has no audio tokens."""
    (q0, _, a0), (q1, _, _) = items[0], items[1]
    batch = qwen.batch([q0, q1], [a0, None])
    assert len(batch.audio_positions[1]) == 0 and batch.input_features.shape[0] == 1
    batched = qwen.generate([q0, q1], [a0, None], max_new_tokens=MAX_NEW_TOKENS)
    assert batched.token_ids == [_generate_alone(reference, q0, a0, 1), _generate_alone(reference, q1, None, 1)]


def test_prompt_is_the_instruct_chat_template(qwen):
    assert qwen.prompt("Which animal?") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nWhich animal?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    text_only = qwen.prompt("Which animal?", with_audio=False, system="Answer briefly.")
    assert text_only == (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhich animal?<|im_end|>\n<|im_start|>assistant\n"
    )
    batch = qwen.batch(["Which animal?"], None)
    assert len(batch.audio_positions[0]) == 0 and batch.input_features is None
    assert qwen.audio_token_id not in batch.input_ids


def test_audio_token_positions_and_seconds(qwen, reference, items):
    _, processor = reference
    batch = qwen.batch([q for q, _, _ in items], [a for _, _, a in items])
    # Left padding: every prompt ends at the last column, the shorter ones start later.
    assert bool(batch.attention_mask[:, -1].all()) and not bool(batch.attention_mask[:, 0].all())
    bos, eos = qwen.tokenizer.convert_tokens_to_ids(["<|audio_bos|>", "<|audio_eos|>"])
    spans = qwen.audio_spans(batch)
    for row, (q, _, audio), positions, (span_positions, seconds) in zip(batch.input_ids, items, batch.audio_positions, spans):
        alone = _alone_inputs(processor, q, audio)["input_ids"][0]
        expanded = int((alone == processor.audio_token_id).sum())
        assert len(positions) == expanded == qwen.num_audio_tokens(len(audio))
        # One contiguous run between <|audio_bos|> and <|audio_eos|>.
        assert torch.equal(positions, torch.arange(positions[0], positions[0] + expanded))
        assert row[positions[0] - 1] == bos and row[positions[-1] + 1] == eos
        # 40 ms per token from the clip's start; the tokens end within 80 ms of the clip's end (the
        # 10 ms frames are rounded up, the pooling drops an odd last frame pair).
        duration = len(audio) / SAMPLE_RATE
        assert torch.equal(span_positions, positions)
        assert seconds[0, 0] == 0 and torch.allclose(seconds[:, 1] - seconds[:, 0], torch.tensor(1 / AUDIO_TOKENS_PER_SECOND, dtype=torch.float64))
        assert abs(seconds[-1, 1].item() - duration) < 2 / AUDIO_TOKENS_PER_SECOND
    assert audio_token_seconds(750)[-1, 1] == 30.0


def test_answer_log_likelihood_matches_single_forward_loss(qwen, reference, items):
    """Batched option scores equal -(mean cross-entropy × answer tokens) of the model's own loss, one question at a time."""
    model, processor = reference
    questions = [q for q, _, _ in items]
    audios = [a for _, _, a in items]
    answers = [ans for _, ans, _ in items]
    with torch.no_grad():
        scores = qwen.answer_log_likelihood(questions, audios, answers)
    diffs = []
    for (q, answer, audio), score in zip(items, scores):
        inputs = _alone_inputs(processor, q, audio)
        answer_ids = torch.tensor([processor.tokenizer(answer, add_special_tokens=False)["input_ids"]])
        prompt_len = inputs["input_ids"].shape[1]
        inputs["input_ids"] = torch.cat([inputs["input_ids"], answer_ids], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        labels = inputs["input_ids"].clone()
        labels[:, :prompt_len] = -100
        with torch.no_grad():
            loss = model(**inputs, labels=labels).loss
        diffs.append(abs(score.item() + loss.item() * answer_ids.shape[1]))
    assert max(diffs) < 1e-3
    # Different answers to the same question score differently (the score reads the answer).
    with torch.no_grad():
        options = qwen.answer_log_likelihood([questions[0]] * 2, [audios[0]] * 2, ["(a) crow", "(b) cat"])
    assert options[0] != options[1]


def test_lora_on_llm_query_value_only_and_zero_init_keeps_outputs(tiny_dir, items):
    qwen = Qwen2Audio.from_pretrained(tiny_dir)
    question, _, audio = items[0]
    batch = qwen.batch([question], [audio])
    with torch.no_grad():
        before = qwen.model(**batch.model_inputs()).logits
    peft_model = qwen.add_lora(r=4, alpha=8)
    adapted = sorted(n.rsplit(".", 1)[0] for n, _ in qwen.model.named_modules() if n.endswith(".lora_A"))
    assert adapted == [
        f"model.language_model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    ]
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        assert torch.equal(qwen.model(**batch.model_inputs()).logits, before)
        for n, p in qwen.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
        assert not torch.allclose(qwen.model(**batch.model_inputs()).logits, before)


def test_bad_inputs_name_the_problem(qwen, tiny_dir, tmp_path):
    with pytest.raises(ValueError, match=r"audio\[0\]: 31.00 s is longer than .*30 s"):
        qwen.batch(["q"], [np.zeros(31 * SAMPLE_RATE, dtype=np.float32)])
    with pytest.raises(ValueError, match=r"audio\[0\]: expected a 1-D float waveform"):
        qwen.batch(["q"], [np.zeros((2, 16000), dtype=np.float32)])
    with pytest.raises(ValueError, match="2 questions but 1 audios"):
        qwen.batch(["q", "r"], [np.zeros(16000, dtype=np.float32)])
    with pytest.raises(ValueError, match="dtype: 'fp8'"):
        Qwen2Audio.from_pretrained(tiny_dir, dtype="fp8")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Qwen2Audio.from_pretrained(tmp_path)


def _log_likelihood_with_zeroed_audio_by_hand(qwen, question, clip, answer) -> torch.Tensor:
    """log p(answer | prompt) from one forward whose audio-token embeddings were set to zero here."""
    batch = qwen.batch([question], [clip])
    answer_ids = torch.tensor([qwen.answer_token_ids(answer)])
    input_ids = torch.cat([batch.input_ids, answer_ids], dim=1)
    with torch.no_grad():
        embeds = qwen.model.get_input_embeddings()(input_ids)
        embeds[0, batch.audio_positions[0]] = 0.0
        logits = qwen.model(inputs_embeds=embeds, attention_mask=torch.ones_like(input_ids)).logits
    prompt_len = batch.input_ids.shape[1]
    return logits[0, prompt_len - 1 : -1].double().log_softmax(-1).gather(-1, answer_ids[0][:, None]).sum()


def test_zero_audio_gives_the_llm_zero_audio_embeddings(qwen, items):
    """The zero_audio ablation equals a forward whose audio-token embeddings are set to zero by hand;
    the other rows of the batch keep their audio."""
    questions = [q for q, _, _ in items[:2]]
    audios = [a for _, _, a in items[:2]]
    answers = [ans for _, ans, _ in items[:2]]
    with torch.no_grad():
        plain = qwen.answer_log_likelihood(questions, audios, answers)
        zeroed = qwen.answer_log_likelihood(questions, audios, answers, zero_audio=[True, False])
    by_hand = _log_likelihood_with_zeroed_audio_by_hand(qwen, questions[0], audios[0], answers[0])
    assert zeroed[0].item() == pytest.approx(by_hand.item(), abs=1e-4)
    assert abs(zeroed[0].item() - plain[0].item()) > 1e-3  # the ablation changed what the LLM heard
    assert zeroed[1].item() == pytest.approx(plain[1].item(), abs=1e-4)


def test_zero_audio_in_generation_follows_its_row_through_beams(qwen, items):
    questions = [q for q, _, _ in items]
    audios = [a for _, _, a in items]
    flags = [False, True, False, True]
    batched = qwen.generate(questions, audios, num_beams=4, max_new_tokens=MAX_NEW_TOKENS, zero_audio=flags)
    for i, flag in enumerate(flags):
        alone = qwen.generate([questions[i]], [audios[i]], num_beams=4, max_new_tokens=MAX_NEW_TOKENS, zero_audio=[flag])
        assert batched.token_ids[i] == alone.token_ids[0]


def test_caption_stands_where_the_audio_was(qwen):
    prompt = qwen.prompt("Who speaks? (a) a man (b) a woman", caption="The speaker is female.")
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      "Audio 1: The speaker is female.\nWho speaks? (a) a man (b) a woman<|im_end|>\n"
                      "<|im_start|>assistant\n")
    batch = qwen.batch(["Who speaks?"], [None], captions=["The speaker is female."])
    assert batch.input_features is None and len(batch.audio_positions[0]) == 0
    with pytest.raises(ValueError, match="both a clip and a caption"):
        qwen.batch(["q"], [np.zeros(SAMPLE_RATE, dtype=np.float32)], captions=["c"])


def test_option_scoring_through_the_family_is_the_answer_likelihood(qwen, items):
    """score_family_options ranks by the family's own answer log-likelihood (per token, end of turn
    included), and pmi calibration subtracts the text-only likelihood."""
    from salmonn_pl.generation.option_scoring import OptionScoringSettings, score_family_options
    from salmonn_pl.model.family import FamilyQuestion

    question, _, audio = items[0]
    asked = FamilyQuestion(text=question, clip=torch.from_numpy(audio))
    (result,) = score_family_options(qwen, [asked], OptionScoringSettings(calibration="pmi"))
    options = [f"({letter}) {text}" for letter, text in zip("abcd", result.options)]
    with torch.no_grad():
        audio_ll = qwen.answer_log_likelihood([question] * 4, [audio] * 4, options, end_of_answer=True)
        text_ll = qwen.answer_log_likelihood([question] * 4, None, options, end_of_answer=True)
    counts = torch.tensor([len(qwen.answer_token_ids(o)) + 1 for o in options])
    expected = (audio_ll / counts - text_ll / counts).tolist()
    assert result.scores == pytest.approx(expected, abs=1e-4)
    assert result.choice == options[max(range(4), key=lambda i: expected[i])]


def test_the_bundled_tiny_model_is_the_factorys(tiny_dir):
    """assets/tiny-qwen2-audio is write_tiny_qwen2_audio(seed=0): rewriting it gives the same weights."""
    from safetensors.torch import load_file

    from tests.helpers.cli_runs import REPO

    bundled = REPO / "assets" / "tiny-qwen2-audio"
    ours, theirs = load_file(bundled / "model.safetensors"), load_file(tiny_dir / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert (bundled / "tokenizer.json").read_text() == (tiny_dir / "tokenizer.json").read_text()


def test_a_clip_longer_than_the_window_is_heard_in_equal_chunks(tiny_dir, reference, items):
    """70 s: three audio parts of 23.3 s in the turn, as transformers' processor takes three clips;
    the answer is the one it gives that turn alone, and token seconds run on across the chunks."""
    long_qwen = Qwen2Audio.from_pretrained(tiny_dir, max_audio_seconds=90)
    question, _, audio = items[1]
    clip = np.tile(audio, int(np.ceil(70 * SAMPLE_RATE / len(audio))))[: 70 * SAMPLE_RATE]
    batch = long_qwen.batch([question, items[0][0]], [clip, items[0][2]])
    chunks = np.array_split(clip, 3)
    positions, seconds = long_qwen.audio_spans(batch)[0]
    assert len(positions) == sum(Qwen2Audio.num_audio_tokens(len(c)) for c in chunks)
    assert seconds[0, 0] == 0 and 69.9 < seconds[-1, 1] <= 70.0
    assert bool((seconds[1:, 0] >= seconds[:-1, 0]).all())  # in order, across the chunks
    model, processor = reference
    content = [{"type": "audio", "audio_url": f"c{k}.wav"} for k in range(3)] + [{"type": "text", "text": question}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    assert text.count("<|audio_bos|>") == 3 and "Audio 3:" in text
    inputs = processor(text=text, audio=chunks, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    with torch.no_grad():
        alone = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    expected = _cut_at_end(alone[0, inputs["input_ids"].shape[1]:].tolist(), set(model.generation_config.eos_token_id))
    batched = long_qwen.generate([question, items[0][0]], [clip, items[0][2]], max_new_tokens=MAX_NEW_TOKENS)
    assert batched.token_ids[0] == expected
    with pytest.raises(ValueError, match=r"91.00 s is longer than Qwen2-Audio's 90 s model.max_audio_seconds"):
        long_qwen.batch(["q"], [np.zeros(91 * SAMPLE_RATE, dtype=np.float32)])


def test_zero_audio_zeroes_every_chunk_of_a_long_clip(tiny_dir, items):
    long_qwen = Qwen2Audio.from_pretrained(tiny_dir, max_audio_seconds=60)
    question, answer, audio = items[1]
    clip = np.tile(audio, int(np.ceil(45 * SAMPLE_RATE / len(audio))))[: 45 * SAMPLE_RATE]
    with torch.no_grad():
        zeroed = long_qwen.answer_log_likelihood([question], [clip], [answer], zero_audio=[True])
    by_hand = _log_likelihood_with_zeroed_audio_by_hand(long_qwen, question, clip, answer)
    assert zeroed[0].item() == pytest.approx(by_hand.item(), abs=1e-4)
