"""Greedy answers of ``salmonn-pl test`` do not depend on the batch with left padding (fp32), and do
with the official right padding.

Why right padding changes answers: the official layout pads the prompt *in the middle*, after the
text that follows ``<SpeechHere>``. The pads are masked as keys, but the first answer token is
predicted from the last position of the row, which for every prompt shorter than the longest of
its batch is a ``[PAD]`` query. The longest prompt has no pads and keeps its batch-of-one answer.
"""

from pathlib import Path

import pytest
import torch
from tests.helpers.cli_runs import responses, run_test, write_config

from salmonn_pl.cli import build_cli
from salmonn_pl.data.collate import AudioBatch
from salmonn_pl.generation.decode import CachedLM
from salmonn_pl.lit_module import select_rows
from salmonn_pl.generation.generate import generate

pytestmark = pytest.mark.slow  # every test reads the runs of one module fixture (4 CLI runs)

LIMIT = 6  # clips per hop: 12 questions in batches of 4


@pytest.fixture(scope="module")
def runs(tiny_files, tmp_path_factory):
    """Output directories of the same questions run at batch size 1 and 4, left and right padded."""
    root = tmp_path_factory.mktemp("batch-invariance")
    out = {}
    for side, batch_size in (("left", 1), ("left", 4), ("right", 1), ("right", 4)):
        name = f"{side}-b{batch_size}"
        config = write_config(root / f"{name}.yaml", tiny_files, root / name, batch_size=batch_size, limit=LIMIT,
                              padding_side=side)
        run_test(config)
        out[name] = root / name
    return out


def test_left_padding_gives_the_batch_of_one_answers(runs):
    single, batched = responses(runs["left-b1"]), responses(runs["left-b4"])
    assert len(single) == 2 * LIMIT
    assert batched == single


def test_right_padding_at_batch_size_one_is_the_same_layout(runs):
    assert responses(runs["right-b1"]) == responses(runs["left-b1"])


def _dataloader_batches(config: Path) -> tuple:
    cli = build_cli(["--config", str(config)], run=False)
    cli.model.configure_model()
    cli.model.salmonn.eval()
    cli.datamodule.setup("test")
    return cli.model, list(cli.datamodule.test_dataloader())


@pytest.fixture(scope="module")
def module_and_batches(tiny_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("batches")
    return _dataloader_batches(write_config(root / "c.yaml", tiny_files, root / "out", batch_size=4, limit=LIMIT))


def _after_speech_lengths(module, batch) -> list[int]:
    return [len(module.salmonn.split_prompt(p)[1]) for p in batch["prompt"]]


def test_right_padding_changes_the_answers_of_shorter_prompts(runs, module_and_batches):
    module, batches = module_and_batches
    single, right = responses(runs["left-b1"]), responses(runs["right-b4"])
    changed, shorter = set(), set()
    for batch in batches:
        lengths = _after_speech_lengths(module, batch)
        for example_id, meta, length in zip(batch["id"], batch["meta"], lengths):
            key = (example_id, meta["variant"])
            if length < max(lengths):
                shorter.add(key)
            if right[key] != single[key]:
                changed.add(key)
    assert shorter, "the test needs a batch whose prompts differ in length"
    # Only prompts that got [PAD]s at their end can change; the longest prompt of each batch has none.
    # (The fitted demo model is confident enough that its answers may survive the shifted logits
    # shown by test_first_answer_token_logits_in_a_batch; the random model below is not.)
    assert changed <= shorter
    print(f"right padding changed {len(changed)} of {len(shorter)} answers of shorter prompts")


def test_right_padding_changes_answers_of_a_random_model(tiny_salmonn):
    """The official layout changes greedy answers of shorter prompts; left padding changes none."""
    import numpy as np

    from salmonn_pl.data.collate import SpeechCollator
    from salmonn_pl.generation.decode import GenerationSettings

    template = "USER: <Speech><SpeechHere></Speech> {}\nASSISTANT:"
    questions = [
        "What animal makes the sound in the audio? (a) dog (b) cat (c) cow (d) pig",
        "Which emotion? (a) happy (b) sad",
        "Listen to the clip and choose the language spoken by the speaker. (a) German (b) French (c) Korean (d) Japanese",
        "Gender? (a) male (b) female",
    ]
    rng = np.random.default_rng(0)
    batch = SpeechCollator()([
        {"id": str(i), "audio": 0.1 * rng.standard_normal(16000 * (i + 1)), "prompt": template.format(q), "text": "", "meta": {}}
        for i, q in enumerate(questions)
    ])
    settings = GenerationSettings(max_new_tokens=8, num_beams=1)
    with torch.no_grad():
        tokens = tiny_salmonn.encode_audio(AudioBatch.of(batch))["audio_tokens"]
        alone = [generate(tiny_salmonn, [p], tokens[i : i + 1], settings).sequences[0] for i, p in enumerate(batch["prompt"])]
        left = generate(tiny_salmonn, batch["prompt"], tokens, settings, padding_side="left").sequences
        right = generate(tiny_salmonn, batch["prompt"], tokens, settings, padding_side="right").sequences
    assert left == alone
    longest = max(range(len(questions)), key=lambda i: len(questions[i]))
    assert right[longest] == alone[longest]
    assert any(right[i] != alone[i] for i in range(len(questions)) if i != longest)


@torch.no_grad()
def _first_step_logits(module, batch: dict, side: str) -> torch.Tensor:
    """Next-token logits of the first answer token, as generation computes them."""
    salmonn = module.salmonn
    inputs = salmonn.assemble(batch["prompt"], module.encode(batch), padding_side=side)
    return CachedLM(salmonn.llm, need_hidden=False).prefill(inputs.inputs_embeds, inputs.attention_mask)[0]


def test_first_answer_token_logits_in_a_batch(module_and_batches):
    module, batches = module_and_batches
    batch = next(b for b in batches if len(set(_after_speech_lengths(module, b))) > 1)
    alone = torch.cat([_first_step_logits(module, select_rows(batch, [i]), "left") for i in range(len(batch["id"]))])
    left = (_first_step_logits(module, batch, "left") - alone).abs().amax(-1)
    right = (_first_step_logits(module, batch, "right") - alone).abs().amax(-1)
    lengths = _after_speech_lengths(module, batch)
    longest = torch.tensor([n == max(lengths) for n in lengths])
    print(f"max |batch - alone| per row: left {left.tolist()}, right {right.tolist()}")
    assert left.max() <= 1e-4
    assert right[longest].max() <= 1e-4
    assert right[~longest].min() > 1e-2
