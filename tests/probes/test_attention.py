"""The attention-position probe on the tiny SALMONN: bookkeeping, batching, regions, plots and the CLI."""

import copy
import json

import matplotlib.image
import numpy as np
import pytest
import torch
import yaml
from tests.helpers.golden import SAKURA_MINI

from salmonn_pl.data.collate import AudioBatch, SpeechCollator
from salmonn_pl.data.variants import Variant
from salmonn_pl.generation.decode import GenerationSettings
from salmonn_pl.model.window_qformer import WindowQFormer
from salmonn_pl.probes.attention import (
    AttentionAggregator,
    eager_attention,
    normalise,
    profile_batch,
    token_seconds,
    window_bounds,
)
from salmonn_pl.probes.plots import clip_spans_by_variant, write_plots
from salmonn_pl.probe_cli import main
from salmonn_pl.probes.run import SUMMARY_COLUMNS, log_to_wandb

SR = 16000
TEMPLATE = "USER: <Speech><SpeechHere></Speech> {}\nASSISTANT:"
GREEDY = GenerationSettings(max_new_tokens=4, num_beams=1)


def _example(i: int, seconds: float, question: str, answer: str, **meta) -> dict:
    rng = np.random.default_rng(i)
    return {
        "id": f"q{i}",
        "audio": rng.normal(0.0, 0.1, int(seconds * SR)),
        "prompt": TEMPLATE.format(question),
        "text": answer,
        "meta": {"variant": "original", **meta},
    }


# Different audio lengths, prompt lengths and answer lengths, so that left padding is exercised.
EXAMPLES = [
    _example(0, 1.5, "What animal makes the sound? (a) dog (b) cat", "(b) cat"),
    _example(1, 3.2, "Which emotion does the speaker express in this recording?", "(a) happy and calm"),
    _example(2, 0.7, "Gender?", "(c) male"),
]


def _collate(examples: list[dict]) -> dict:
    return SpeechCollator()(examples)


# ------------------------------------------------------------------------------------------ time axis


def test_token_seconds_are_window_centres(tiny_salmonn):
    connector = tiny_salmonn.connector
    n = connector.tokens_for_frames()
    seconds = token_seconds(connector, n)
    bounds = window_bounds(connector, n // connector.num_query_tokens)
    frame = 30.0 / 1500
    assert seconds.shape == (n,)
    assert torch.allclose(bounds[:, 1] - bounds[:, 0], torch.full((len(bounds),), connector.kernel * frame, dtype=torch.float64))
    assert torch.allclose(bounds[1:, 0] - bounds[:-1, 0], torch.full((len(bounds) - 1,), connector.stride * frame, dtype=torch.float64))
    assert torch.allclose(seconds, bounds.mean(-1).repeat_interleave(connector.num_query_tokens))
    assert 0 < seconds[0] < seconds[-1] < 30.0 and bounds[-1, 1] <= 30.0 + 1e-9


def test_token_seconds_repeat_per_query_and_need_windows():
    connector = WindowQFormer(whisper_width=8, beats_width=None, llm_width=8, num_query_tokens=2)
    seconds = token_seconds(connector, 6)
    assert torch.equal(seconds[0::2], seconds[1::2]) and seconds[2] > seconds[0]
    whole_clip = WindowQFormer(whisper_width=8, beats_width=None, llm_width=8, window_level=False)
    with pytest.raises(ValueError, match="window-level"):
        token_seconds(whole_clip, 1)


# ------------------------------------------------------------------------------- attention extraction


def test_eager_attention_is_switched_back(tiny_salmonn):
    llm = tiny_salmonn.llm.get_base_model()
    qformer = tiny_salmonn.connector.qformer
    before = (llm.config._attn_implementation, qformer.config._attn_implementation)
    with pytest.raises(RuntimeError, match="inside"), eager_attention(tiny_salmonn):
        assert (llm.config._attn_implementation, qformer.config._attn_implementation) == ("eager", "eager")
        raise RuntimeError("inside")
    assert (llm.config._attn_implementation, qformer.config._attn_implementation) == before


def _direct_profile(model, example: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Answer and last-prompt attention of one question read from the training layout of the model
    (``assemble`` with the reference as target, labels marking the answer)."""
    batch = _collate([example])
    with torch.no_grad(), eager_attention(model):
        audio = model.encode_audio(AudioBatch.of(batch))
        inputs = model.assemble(batch["prompt"], audio["audio_tokens"], batch["text"], padding_side="left")
        out = model.llm(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                        position_ids=inputs.position_ids, output_attentions=True, use_cache=False)
    attention = torch.stack([a[0].mean(0) for a in out.attentions])  # [layers, L, L]
    target = (inputs.labels[0] != -100).nonzero()[:, 0]
    answer_positions = target[:-1]  # every answer token but the final </s>
    to_audio = attention[:, :, inputs.audio_mask[0]]
    return to_audio[:, answer_positions].mean(1), to_audio[:, target[0] - 1]


def test_profile_equals_attention_in_the_training_layout(tiny_salmonn):
    profiles = profile_batch(tiny_salmonn, _collate(EXAMPLES[:2]), answers="reference")
    for example, profile in zip(EXAMPLES[:2], profiles):
        answer, last_prompt = _direct_profile(tiny_salmonn, example)
        assert profile.answer_ids == tiny_salmonn.target_ids(example["text"])[:-1]
        assert (profile.answer_mass - answer).abs().max() <= 1e-5
        assert (profile.prompt_mass - last_prompt).abs().max() <= 1e-5


def test_profile_shapes_and_probabilities(tiny_salmonn):
    profile = profile_batch(tiny_salmonn, _collate(EXAMPLES[:1]), answers="reference")[0]
    connector = tiny_salmonn.connector
    n_audio = connector.tokens_for_frames()
    layers = tiny_salmonn.llm.config.num_hidden_layers
    assert profile.answer_mass.shape == profile.prompt_mass.shape == (layers, n_audio)
    assert ((profile.answer_mass >= 0) & (profile.answer_mass <= 1)).all()
    assert (profile.answer_mass.sum(-1) < 1).all()  # the answer also attends to text tokens
    assert torch.allclose(normalise(profile.answer_mass).sum(-1), torch.ones(layers))
    assert profile.qformer_frames.shape == (n_audio // connector.num_query_tokens, connector.kernel)
    assert torch.allclose(profile.qformer_frames.sum(-1), torch.ones(len(profile.qformer_frames)))
    assert profile.audio_seconds == pytest.approx(1.5)


@pytest.mark.parametrize("answers", ["reference", "generated"])
def test_batched_with_left_padding_equals_batch_of_one(tiny_salmonn, answers):
    batched = profile_batch(tiny_salmonn, _collate(EXAMPLES), answers=answers, generation=GREEDY)
    singles = [profile_batch(tiny_salmonn, _collate([e]), answers=answers, generation=GREEDY)[0] for e in EXAMPLES]
    assert len({len(p.answer_ids) for p in batched}) > 1 or answers == "generated"
    for many, one in zip(batched, singles):
        assert many.answer_ids == one.answer_ids
        assert (many.answer_mass - one.answer_mass).abs().max() <= 1e-5
        assert (many.prompt_mass - one.prompt_mass).abs().max() <= 1e-5
        assert (many.qformer_frames - one.qformer_frames).abs().max() <= 1e-5
        assert many.audio_seconds == one.audio_seconds

    together, apart = AttentionAggregator(), AttentionAggregator()
    together.add(batched)
    for profile in singles:
        apart.add([profile])
    a, b = together.variants()["original"], apart.variants()["original"]
    for field in ("answer_mass", "answer_share", "prompt_mass", "prompt_share", "qformer_frames"):
        assert (getattr(a, field) - getattr(b, field)).abs().max() <= 1e-5, field


def test_empty_answer_keeps_the_last_prompt_token(tiny_salmonn):
    examples = [EXAMPLES[0], {**EXAMPLES[1], "text": ""}]
    profiles = profile_batch(tiny_salmonn, _collate(examples), answers="reference")
    alone = profile_batch(tiny_salmonn, _collate(examples[1:]), answers="reference")[0]
    assert profiles[1].answer_ids == [] and profiles[1].answer_mass is None
    assert (profiles[1].prompt_mass - alone.prompt_mass).abs().max() <= 1e-5
    aggregator = AttentionAggregator()
    aggregator.add(profiles)
    summary = aggregator.variants()["original"]
    assert (summary.questions, summary.answered) == (2, 1)
    assert torch.allclose(summary.answer_mass, profiles[0].answer_mass)
    assert aggregator.records[1]["answer"] is None


def test_variant_ablations_act_per_row(tiny_salmonn):
    base = EXAMPLES[0]
    rows = [base] + [{**base, "id": name, "meta": {"variant": name, "variant_params": {"ablation": name}}}
                     for name in ("zero_audio", "no_audio", "zero_whisper")]
    none, zero_audio, zero_whisper = profile_batch(tiny_salmonn, _collate(rows), answers="reference")
    # A text-only row has no audio to attend to and is left out.
    assert [p.id for p in (none, zero_audio, zero_whisper)] == ["q0", "zero_audio", "zero_whisper"]
    # zero_audio zeroes the projected tokens after the Q-Former; zero_whisper changes its input.
    assert torch.allclose(zero_audio.qformer_frames, none.qformer_frames)
    assert not torch.allclose(zero_whisper.qformer_frames, none.qformer_frames)
    assert (zero_audio.prompt_mass - none.prompt_mass).abs().max() > 1e-4
    alone = profile_batch(tiny_salmonn, _collate(rows[1:2]), answers="reference")[0]
    assert (alone.prompt_mass - zero_audio.prompt_mass).abs().max() <= 1e-5
    assert profile_batch(tiny_salmonn, _collate(rows[2:3]), answers="reference") == []

    bad = [{**base, "id": "Animal/single/x.wav", "meta": {"variant": "v", "variant_params": {"ablation": "zero_everything"}}}]
    with pytest.raises(ValueError, match="Animal/single/x.wav.*zero_everything"):
        profile_batch(tiny_salmonn, _collate(bad), answers="reference")


def test_long_audio_continues_the_time_axis_chunk_by_chunk(tiny_salmonn):
    model = copy.deepcopy(tiny_salmonn)
    model.config.max_audio_seconds = 70.0
    examples = [_example(5, 65.0, "Which sound is it?", "(a) tone"), EXAMPLES[0]]
    batch = SpeechCollator(max_seconds=70.0)(examples)
    long, short = profile_batch(model, batch, answers="reference")
    per_chunk = model.connector.tokens_for_frames()
    assert long.prompt_mass.shape[-1] == 3 * per_chunk and short.prompt_mass.shape[-1] == per_chunk
    assert torch.allclose(long.seconds[per_chunk:2 * per_chunk], short.seconds + 30.0)
    assert long.audio_seconds == pytest.approx(65.0)
    assert long.regions(long.prompt_mass.mean(0))["beyond_audio"]["tokens"] == int((long.seconds >= 65.0).sum()) > 0
    alone = profile_batch(model, SpeechCollator(max_seconds=70.0)(examples[:1]), answers="reference")[0]
    assert (alone.answer_mass - long.answer_mass).abs().max() <= 1e-5

    # The variant mean covers the longest question; each time step averages the questions reaching it.
    aggregator = AttentionAggregator()
    aggregator.add([long, short])
    summary = aggregator.variants()["original"]
    assert summary.prompt_mass.shape[-1] == 3 * per_chunk and len(summary.seconds) == 3 * per_chunk
    assert torch.allclose(summary.prompt_mass[:, :per_chunk], (long.prompt_mass[:, :per_chunk] + short.prompt_mass) / 2)
    assert torch.allclose(summary.prompt_mass[:, per_chunk:], long.prompt_mass[:, per_chunk:])


def test_training_mode_is_refused(tiny_salmonn):
    tiny_salmonn.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            profile_batch(tiny_salmonn, _collate(EXAMPLES[:1]), answers="reference")
    finally:
        tiny_salmonn.eval()


# ------------------------------------------------------------------------------------------- regions


def _padded_example(i: int, clip_seconds: float, variant: Variant) -> dict:
    example = _example(i, clip_seconds, "What animal makes the sound?", "(a) dog")
    padded = variant.apply_audio(example["audio"], example["id"])
    # The meta SakuraDataset records for a variant.
    example["meta"] = {"variant": variant.name, **variant.params(), "num_samples": len(example["audio"]),
                       "clip_start_s": padded.clip_start / SR, "longer_than_target": padded.longer_than_target}
    example["audio"] = padded.wav
    return example


def test_regions_follow_where_the_variant_put_the_clip(tiny_salmonn):
    late = Variant(pad_seconds=6.0, pad_fill="noise", pad_position="late")
    examples = [_padded_example(0, 2.0, late), _padded_example(1, 2.0, Variant(pad_seconds=6.0)), EXAMPLES[0]]
    profiles = profile_batch(tiny_salmonn, _collate(examples), answers="reference")
    seconds = profiles[0].seconds

    assert profiles[0].clip_span == pytest.approx((4.0, 6.0)) and profiles[1].clip_span == pytest.approx((0.0, 2.0))
    for profile in profiles[:2]:
        mass = profile.answer_mass.mean(0)
        regions = profile.regions(mass)
        start, end = profile.clip_span
        clip = (seconds >= start) & (seconds < end)
        assert regions["clip"]["tokens"] == int(clip.sum()) > 0
        assert regions["clip"]["mass"] == pytest.approx(float(mass[clip].sum()), rel=1e-6)
        assert regions["padding"]["tokens"] == int(((seconds < 6.0) & ~clip).sum()) > 0
        assert regions["beyond_audio"]["tokens"] == int((seconds >= 6.0).sum())
        assert regions["clip"]["mass"] + regions["padding"]["mass"] == pytest.approx(regions["audio"]["mass"], rel=1e-6)
        assert regions["audio"]["share"] + regions["beyond_audio"]["share"] == pytest.approx(1.0)
    # Without the variant meta only the audio / beyond-audio split is known.
    assert profiles[2].clip_span is None and set(profiles[2].regions(profiles[2].prompt_mass.mean(0))) == {"audio", "beyond_audio"}

    aggregator = AttentionAggregator()
    aggregator.add(profiles)
    report = json.loads(json.dumps(aggregator.report()))
    assert list(report["variants"]) == [late.name, "pad6s-zero-early", "original"]
    late_summary = report["variants"][late.name]
    assert late_summary["regions"]["answer"]["clip"]["mass"] == pytest.approx(
        profiles[0].regions(profiles[0].answer_mass.mean(0))["clip"]["mass"], rel=1e-6)
    frames = profiles[0].frame_profile_in_audio()
    assert torch.allclose(frames, profiles[0].qformer_frames[window_bounds(tiny_salmonn.connector, len(profiles[0].qformer_frames))[:, 1] <= 6.0].mean(0))


# -------------------------------------------------------------------------------------------- outputs


def test_plots_are_written(tiny_salmonn, tmp_path):
    rows = [EXAMPLES[0], {**EXAMPLES[1], "meta": {"variant": "other"}}, {**EXAMPLES[2], "text": "", "meta": {"variant": "empty"}}]
    aggregator = AttentionAggregator()
    aggregator.add(profile_batch(tiny_salmonn, _collate(rows), answers="reference"))
    plots = write_plots(aggregator.variants(), tmp_path)
    assert set(plots) == {"attention_vs_time", "attention_layer_time", "qformer_frames", "qformer_window_map"}
    for path in plots.values():
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 300 and image.shape[1] > 500
        assert image[..., :3].std() > 0.05  # not a blank canvas


class _Recorder:
    def __init__(self):
        self.logged = []

    def log(self, payload):
        self.logged.append(payload)


@pytest.mark.slow
def test_run_over_sakura_mini(tiny_files, tmp_path):
    if not SAKURA_MINI.is_dir():
        pytest.skip(f"{SAKURA_MINI} is not available")
    from salmonn_pl.model.tiny import tiny_qformer_settings

    # The layout of a `salmonn-pl test` config: model.model = the files, model.output_dir, trainer.
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1},
        "model": {"model": {**{k: str(v) for k, v in tiny_files.items()}, "llm_dtype": "float32",
                            "qformer": vars(tiny_qformer_settings())},
                  "generation": {"max_new_tokens": 3, "num_beams": 1},
                  "output_dir": str(tmp_path / "probe")},
        "data": {
            "class_path": "salmonn_pl.data.datamodule.SakuraDataModule",
            "init_args": {"root": str(SAKURA_MINI), "tracks": ["Animal"], "hops": ["single"], "limit": 2,
                          "variants": [{}], "sweep": {"pad_seconds": [15], "pad_position": ["early", "late"]},
                          "batch_size": 3},
        },
        "answers": "generated",
    }
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(config))
    main(["--config", str(tmp_path / "probe.yaml")])
    path = tmp_path / "probe" / "attention_profile.json"

    report = json.loads(path.read_text())
    assert list(report["variants"]) == ["original", "pad15s-zero-early", "pad15s-zero-late"]
    assert all(v["questions"] == 2 for v in report["variants"].values())
    assert len(report["variants"]["original"]["seconds"]) == len(report["variants"]["original"]["last_prompt"]["mass"])
    for record in report["questions"]:
        start, end = record["clip_span_s"]
        if record["variant"] == "pad15s-zero-late":
            assert end == pytest.approx(15.0) and start > 0
        else:
            assert start == 0.0
        assert record["answer"] is None or len(record["answer_ids"]) <= 3
    assert {"clip", "padding", "beyond_audio"} <= set(report["variants"]["pad15s-zero-late"]["regions"]["last_prompt"])
    for name in ("attention_vs_time", "attention_layer_time", "qformer_frames", "qformer_window_map"):
        assert (path.parent / f"{name}.png").stat().st_size > 10_000


def test_wandb_gets_the_plots_and_one_row_per_variant(tiny_salmonn, tmp_path):
    rows = [EXAMPLES[0], {**EXAMPLES[1], "meta": {"variant": "other"}}]
    aggregator = AttentionAggregator()
    aggregator.add(profile_batch(tiny_salmonn, _collate(rows), answers="reference"))
    variants = aggregator.variants()
    plots = write_plots(variants, tmp_path)
    recorder = _Recorder()
    log_to_wandb(recorder, variants, plots)
    (payload,) = recorder.logged
    table = payload["probe/attention_by_variant"]
    assert list(table.columns) == list(SUMMARY_COLUMNS)
    assert [row[0] for row in table.data] == ["original", "other"]
    audio_mass = table.columns.index("answer_audio_mass")
    assert table.data[0][audio_mass] == pytest.approx(float(variants["original"].answer_mass.mean(0).sum()))
    assert {f"probe/plots/{name}" for name in plots} <= set(payload)


def test_clip_spans_mark_where_the_clip_ends_inside_the_padding(tiny_salmonn, tmp_path):
    records = [{"variant": "late", "clip_span_s": [12.0, 15.0]}, {"variant": "late", "clip_span_s": [13.0, 15.0]},
               {"variant": "late", "clip_span_s": [11.0, 15.0]}, {"variant": "original", "clip_span_s": None}]
    assert clip_spans_by_variant(records) == {"late": (12.0, 15.0)}

    aggregator = AttentionAggregator()
    aggregator.add(profile_batch(tiny_salmonn, _collate(EXAMPLES), answers="reference"))
    variants = aggregator.variants()
    name = next(iter(variants))
    plain = write_plots(variants, tmp_path / "plain")["attention_vs_time"]
    marked = write_plots(variants, tmp_path / "marked", clip_spans={name: (0.4, 0.6)})["attention_vs_time"]
    assert not np.array_equal(matplotlib.image.imread(plain), matplotlib.image.imread(marked))
