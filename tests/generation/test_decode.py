"""The decoding loop against the official transformers-4.28 generate() outputs, plus its own invariants."""

import functools

import pytest
import torch
import torch.nn.functional as F
from tests.helpers.golden import Golden, assert_close
from transformers import SequenceBiasLogitsProcessor

from salmonn_pl.generation.decode import (
    DecodeStep,
    GenerationSettings,
    ScoreHook,
    generate,
)
from salmonn_pl.model.llm import (
    embed_tokens,
    load_llm,
    load_llm_weights,
    set_pad_rows,
)
from salmonn_pl.model.tokenizer import SalmonnTokenizer

EOS = 2
GREEDY = GenerationSettings(max_new_tokens=10, num_beams=1)
BEAM4 = GenerationSettings(max_new_tokens=10, num_beams=4)


@functools.cache
def _golden_llm_cached(path):
    golden = Golden(path)
    tokenizer = SalmonnTokenizer(golden.file("llama_path"))
    model = load_llm(golden.file("llama_path"), tokenizer, lora=golden.lora_settings())
    set_pad_rows(model, golden["llm.pad_row.embed_tokens"], golden["llm.pad_row.lm_head"])
    load_llm_weights(model, torch.load(golden.file("ckpt"), map_location="cpu", weights_only=True)["model"])
    return model.float().eval(), tokenizer


def _golden_llm(golden: Golden):
    return _golden_llm_cached(golden.path)


def _wav_inputs(golden: Golden, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    return golden[f"wav{i}.inputs_embeds"], golden[f"wav{i}.attention_mask"]


def _left_padded(inputs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(e.shape[1] for e, _ in inputs)
    embeds = torch.zeros(len(inputs), longest, inputs[0][0].shape[-1])
    mask = torch.zeros(len(inputs), longest, dtype=torch.long)
    for row, (e, m) in enumerate(inputs):
        embeds[row, longest - e.shape[1]:] = e[0]
        mask[row, longest - e.shape[1]:] = m[0]
    return embeds, mask


def _eos_bias(bias: float) -> SequenceBiasLogitsProcessor:
    return SequenceBiasLogitsProcessor({(EOS,): bias})


# ------------------------------------------------------------------------------------ official parity


def test_greedy_matches_official(golden: Golden):
    model, _ = _golden_llm(golden)
    for i in range(len(golden.wavs)):
        out = generate(model, *_wav_inputs(golden, i), GREEDY)
        assert out.sequences == [golden[f"wav{i}.gen_greedy_ids"][1:].tolist()], f"wav{i}"
        assert out.sequence_scores is None


def test_beam_search_matches_official(golden: Golden):
    model, _ = _golden_llm(golden)
    for i in range(len(golden.wavs)):
        out = generate(model, *_wav_inputs(golden, i), BEAM4)
        # 4.28's finalize appends </s> only to hypotheses that ended with it; a full-length running
        # beam is returned as is, so the golden row minus the dummy <s> is the whole answer.
        assert out.sequences == [golden[f"wav{i}.gen_beam4_ids"][1:].tolist()], f"wav{i}"
        assert_close(torch.tensor(out.sequence_scores, dtype=torch.float32), golden[f"wav{i}.gen_beam4_sequence_score"],
                     f"wav{i}.gen_beam4_sequence_score")


def test_official_batched_greedy(golden: Golden):
    """SALMONN.generate on a batch: prompt_after right-padded with [PAD] in the middle, stop on row 0's </s>."""
    model, tokenizer = _golden_llm(golden)
    halves = [golden.prompt(i).split("<SpeechHere>") for i in range(len(golden.wavs))]
    before_ids, before_mask = tokenizer.batch_encode([b for b, _ in halves])
    after_ids, after_mask = tokenizer.batch_encode([a for _, a in halves], padding_side="right")
    speech = golden["batch.speech_embeds"]
    batch = speech.shape[0]
    embed = embed_tokens(model)
    with torch.no_grad():
        bos = embed(torch.full((batch, 1), tokenizer.bos_token_id))
        inputs_embeds = torch.cat([bos, embed(before_ids), speech, embed(after_ids)], dim=1)
    attention_mask = torch.cat(
        [torch.ones(batch, 1, dtype=torch.long), before_mask, torch.ones(speech.shape[:2], dtype=torch.long), after_mask],
        dim=1,
    )
    expected = golden["batch.gen_greedy_ids"][:, 1:]
    assert_close(attention_mask, golden["batch.gen_attention_mask"], "batch attention mask")

    settings = GenerationSettings(max_new_tokens=10, num_beams=1, stop_on_first_row_eos=True)
    out = generate(model, inputs_embeds, attention_mask, settings)
    padded = torch.zeros_like(expected)  # finished rows continue with the LLaMA generation pad id 0
    for row, seq in enumerate(out.sequences):
        padded[row, : len(seq)] = torch.tensor(seq)
    assert_close(padded, expected, "batch.gen_greedy_ids[:, 1:]")


def test_left_padded_batch_equals_one_at_a_time(golden: Golden):
    model, _ = _golden_llm(golden)
    n = len(golden.wavs)
    embeds, mask = _left_padded([_wav_inputs(golden, i) for i in range(n)])
    greedy = generate(model, embeds, mask, GREEDY)
    assert greedy.sequences == [golden[f"wav{i}.gen_greedy_ids"][1:].tolist() for i in range(n)]
    beam = generate(model, embeds, mask, BEAM4)
    assert beam.sequences == [golden[f"wav{i}.gen_beam4_ids"][1:].tolist() for i in range(n)]
    for i in range(n):
        assert abs(beam.sequence_scores[i] - golden[f"wav{i}.gen_beam4_sequence_score"].item()) <= 1e-4


# ------------------------------------------------------------------- beam hypotheses that end with </s>


def _teacher_forced_log_probs(model, embeds, mask, tokens: list[int], processors) -> list[float]:
    """Processed log-prob of each token of ``tokens`` given the prompt and the tokens before it."""
    with torch.no_grad():
        full = torch.cat([embeds, embed_tokens(model)(torch.tensor([tokens[:-1]], dtype=torch.long))], dim=1)
        full_mask = torch.cat([mask, torch.ones(1, len(tokens) - 1, dtype=torch.long)], dim=1)
        logits = model(inputs_embeds=full, attention_mask=full_mask).logits[0, -len(tokens):].float()
    values = []
    for t, token in enumerate(tokens):
        seen = torch.tensor([[1] + tokens[:t]])  # the dummy <s> the processors see, then earlier tokens
        scores = F.log_softmax(logits[t : t + 1], dim=-1)
        for p in processors:
            scores = p(seen, scores)
        values.append(scores[0, token].item())
    return values


def _eos_gap(golden: Golden, i: int) -> float:
    """How far </s> lies below the most likely first token after wav ``i``'s prompt, in log-prob.

    It depends on the set's weights (a fraction of a nat in tiny-v1, several nats elsewhere), so the
    </s> biases below are chosen relative to it.
    """
    logp = golden[f"wav{i}.logits_last"][0].float().log_softmax(-1)
    return (logp.max() - logp[EOS]).item()


@pytest.mark.parametrize("length_penalty", [1.0, 2.0])
def test_beam_hypothesis_score_counts_dummy_bos_and_not_eos(golden: Golden, length_penalty: float):
    model, _ = _golden_llm(golden)
    embeds, mask = _wav_inputs(golden, 1)
    ended_with_eos = 0
    # From </s> just below the top token to </s> far above it (which always ends an answer with it).
    for bias in [_eos_gap(golden, 1) + extra for extra in (-0.5, 1.5, 3.5, 5.5, 20.0)]:
        processors = [_eos_bias(bias)]
        settings = GenerationSettings(max_new_tokens=8, num_beams=3, length_penalty=length_penalty)
        out = generate(model, embeds, mask, settings, logits_processors=processors)
        seq = out.sequences[0]
        assert EOS not in seq[:-1]
        ended_with_eos += seq[-1] == EOS
        hyp_len = 1 + len(seq) - (seq[-1] == EOS)  # dummy <s> + tokens, final </s> excluded
        expected = sum(_teacher_forced_log_probs(model, embeds, mask, seq, processors)) / hyp_len**length_penalty
        assert out.sequence_scores[0] == pytest.approx(expected, abs=1e-4)
    assert ended_with_eos >= 1  # the eos bias does produce </s>-terminated answers


def test_batched_beam_search_with_finished_items(golden: Golden):
    model, _ = _golden_llm(golden)
    n = len(golden.wavs)
    settings = GenerationSettings(max_new_tokens=8, num_beams=3)
    # A </s> bias under which the items finish at different steps, so the batch keeps finished items
    # around; where that happens depends on the weights, hence the search.
    gap = min(_eos_gap(golden, i) for i in range(n))
    for bias in [3.5, *(gap + extra for extra in (-1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 5.0))]:
        processors = [_eos_bias(bias)]
        singles = [generate(model, *_wav_inputs(golden, i), settings, logits_processors=processors) for i in range(n)]
        if len({len(s.sequences[0]) for s in singles}) > 1:
            break
    else:
        pytest.fail(f"{golden.name}: no </s> bias makes the items finish at different steps")
    embeds, mask = _left_padded([_wav_inputs(golden, i) for i in range(n)])
    batched = generate(model, embeds, mask, settings, logits_processors=processors)
    assert batched.sequences == [s.sequences[0] for s in singles]
    assert batched.sequence_scores == pytest.approx([s.sequence_scores[0] for s in singles], abs=1e-4)


# -------------------------------------------------------------------------- settings and processors


@pytest.mark.parametrize("min_length", [1, 2, 4])
def test_min_length_counts_the_dummy_bos(golden: Golden, min_length: int):
    model, _ = _golden_llm(golden)
    forced_eos = [_eos_bias(1e4)]
    for num_beams in (1, 2):
        settings = GenerationSettings(max_new_tokens=6, num_beams=num_beams, min_length=min_length)
        out = generate(model, *_wav_inputs(golden, 0), settings, logits_processors=forced_eos)
        seq = out.sequences[0]
        assert seq[-1] == EOS and EOS not in seq[:-1]
        assert len(seq) == min_length  # min_length - 1 new tokens, then </s>


def test_repetition_penalty_changes_a_repetitive_answer(golden: Golden):
    model, _ = _golden_llm(golden)
    answers = [golden[f"wav{i}.gen_greedy_ids"][1:].tolist() for i in range(len(golden.wavs))]
    most_repetitive = min(range(len(answers)), key=lambda i: len(set(answers[i])) / len(answers[i]))
    inputs = _wav_inputs(golden, most_repetitive)
    plain = generate(model, *inputs, GREEDY).sequences[0]
    assert len(set(plain)) < len(plain)
    settings = GenerationSettings(max_new_tokens=10, num_beams=1, repetition_penalty=5.0)
    penalised = generate(model, *inputs, settings).sequences[0]
    assert len(set(penalised)) > len(set(plain))


def test_sampling(golden: Golden):
    model, _ = _golden_llm(golden)
    inputs = _wav_inputs(golden, 1)

    def sample(seed: int, **overrides) -> list[int]:
        settings = GenerationSettings(max_new_tokens=10, num_beams=1, do_sample=True, **overrides)
        return generate(model, *inputs, settings, generator=torch.Generator().manual_seed(seed)).sequences[0]

    assert sample(0, temperature=2.0, top_p=1.0, top_k=0) == sample(0, temperature=2.0, top_p=1.0, top_k=0)
    assert len({tuple(sample(s, temperature=3.0, top_p=1.0, top_k=0)) for s in range(4)}) > 1
    greedy = generate(model, *inputs, GREEDY).sequences[0]
    assert sample(1, top_k=1) == greedy
    assert sample(2, top_p=1e-6) == greedy


def test_beam_sampling_is_reproducible(golden: Golden):
    model, _ = _golden_llm(golden)
    settings = GenerationSettings(max_new_tokens=6, num_beams=3, do_sample=True, temperature=1.5)
    inputs = _wav_inputs(golden, 2)
    runs = [generate(model, *inputs, settings, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert runs[0].sequences == runs[1].sequences
    assert len(runs[0].sequences[0]) >= 1


def test_bad_inputs():
    with pytest.raises(ValueError, match="attention_mask"):
        generate(torch.nn.Identity(), torch.zeros(1, 3, 4), torch.ones(1, 2))
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(torch.nn.Identity(), torch.zeros(1, 3, 4), torch.ones(1, 3), GenerationSettings(max_new_tokens=0))


# -------------------------------------------------------------------------- hooks and hidden states


class _FavourToken(ScoreHook):
    """Adds a large bonus to one token; records what it saw."""

    def __init__(self, token: int):
        self.token = token
        self.hidden_shapes: list[tuple[int, ...]] = []
        self.reorders: list[torch.Tensor] = []

    def __call__(self, step: DecodeStep) -> torch.Tensor:
        self.hidden_shapes.append(tuple(step.hidden.shape))
        scores = step.scores.clone()
        scores[:, self.token] += 1e4
        return scores

    def reorder(self, beam_idx: torch.Tensor) -> None:
        self.reorders.append(beam_idx)


def test_score_hook_steers_greedy_and_beam(golden: Golden):
    model, _ = _golden_llm(golden)
    hidden_size = golden["wav0.llm_last_hidden"].shape[-1]
    for num_beams in (1, 3):
        hook = _FavourToken(token=100)
        settings = GenerationSettings(max_new_tokens=5, num_beams=num_beams)
        out = generate(model, *_wav_inputs(golden, 0), settings, score_hook=hook)
        assert out.sequences == [[100] * 5]
        assert hook.hidden_shapes == [(num_beams, hidden_size)] * 5
        assert len(hook.reorders) == (4 if num_beams > 1 else 0)


def _teacher_forced_hidden(model, embeds, mask, tokens: list[int]) -> torch.Tensor:
    """Last-layer hidden states at the positions that predicted each of ``tokens``."""
    with torch.no_grad():
        full = torch.cat([embeds, embed_tokens(model)(torch.tensor([tokens[:-1]], dtype=torch.long))], dim=1)
        full_mask = torch.cat([mask, torch.ones(1, len(tokens) - 1, dtype=torch.long)], dim=1)
        out = model(inputs_embeds=full, attention_mask=full_mask, output_hidden_states=True)
    return out.hidden_states[-1][0, -len(tokens):]


def test_collected_hidden_states_match_a_full_forward(golden: Golden):
    model, _ = _golden_llm(golden)
    inputs = [_wav_inputs(golden, i) for i in range(len(golden.wavs))]
    embeds, mask = _left_padded(inputs)
    for settings, processors in ((GREEDY, []), (GenerationSettings(max_new_tokens=8, num_beams=3), [_eos_bias(3.5)])):
        out = generate(model, embeds, mask, settings, logits_processors=processors, collect_hidden_states=True)
        for i, (seq, hidden) in enumerate(zip(out.sequences, out.hidden_states)):
            assert hidden.shape == (len(seq), embeds.shape[-1])
            assert_close(hidden, _teacher_forced_hidden(model, *inputs[i], seq), f"wav{i} step hidden states")
