"""SpeechCollator: the batch contract, checked against the official batch of the golden wavs."""

import numpy as np
import pytest
import torch
from tests.helpers.golden import Golden, assert_close
from torch.utils.data import DataLoader

from salmonn_pl.audio.load import load_audio
from salmonn_pl.data.collate import SpeechCollator


def _examples(golden: Golden) -> list[dict]:
    return [
        {
            "id": w["name"],
            "audio": load_audio(golden.path / w["file"]),
            "prompt": "USER: <Speech><SpeechHere></Speech> " + w["instruction"] + "\nASSISTANT:",
            "text": w["sakura_answer"],
            "meta": {"source": w["sources"]},
        }
        for w in golden.wavs
    ]


def test_batch_matches_official_collation(golden: Golden):
    examples = _examples(golden)
    batch = SpeechCollator()(examples)

    n = len(examples)
    assert batch["raw_wav"].dtype == torch.float64
    assert batch["spectrogram"].dtype == torch.float32 and batch["spectrogram"].shape == (n, 80, 3000)
    assert batch["padding_mask"].dtype == torch.bool and batch["padding_mask"].shape == batch["raw_wav"].shape
    assert batch["wav_lengths"].dtype == torch.int64

    assert_close(batch["padding_mask"].sum(1), golden["batch.padding_mask_num_true"], "batch.padding_mask_num_true")
    for i, example in enumerate(examples):
        length = int(golden[f"wav{i}.num_samples"])
        assert int(batch["wav_lengths"][i]) == length
        assert_close(batch["spectrogram"][i : i + 1], golden[f"wav{i}.input_features"], f"wav{i}.input_features")
        # Official path: zero-padded to >= 1 s, truncated to 30 s, then right-padded with zeros.
        audio = example["audio"][:length]
        np.testing.assert_array_equal(batch["raw_wav"][i, : len(audio)].numpy(), audio)
        assert not batch["raw_wav"][i, len(audio) :].any()
        assert not batch["padding_mask"][i, :length].any() and batch["padding_mask"][i, length:].all()

    assert batch["id"] == [e["id"] for e in examples]
    assert batch["prompt"] == [e["prompt"] for e in examples]
    assert batch["text"] == [e["text"] for e in examples]
    assert batch["meta"] == [e["meta"] for e in examples]


def _example(**overrides) -> dict:
    example = {"id": "x/single/a.wav", "audio": np.zeros(100), "prompt": "<SpeechHere> q", "text": "a", "meta": {}}
    example.update(overrides)
    return example


@pytest.mark.parametrize(
    "example, message",
    [
        ({k: v for k, v in _example().items() if k != "prompt"}, "lacks \\['prompt'\\]"),
        (_example(prompt="no placeholder"), "exactly one <SpeechHere>"),
        (_example(prompt="<SpeechHere><SpeechHere>"), "exactly one <SpeechHere>"),
        (_example(audio=np.zeros((2, 100))), "1-D"),
    ],
)
def test_bad_example_names_its_id(example: dict, message: str):
    with pytest.raises((KeyError, ValueError), match=message) as excinfo:
        SpeechCollator()([example])
    assert "x/single/a.wav" in str(excinfo.value)


def test_empty_batch_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        SpeechCollator()([])


class _RecordsSharedMemory:
    """Collates, then notes in each meta whether the batch tensors were allocated in shared memory."""

    def __init__(self) -> None:
        self.collator = SpeechCollator()

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collator(examples)
        shared = [batch[key].is_shared() for key in ("spectrogram", "raw_wav", "padding_mask")]
        batch["meta"] = [{**meta, "shared": shared} for meta in batch["meta"]]
        return batch


def test_worker_builds_the_same_batch_in_shared_memory(golden: Golden):
    """In a DataLoader worker the big tensors are made in shared memory (no copy on the way back)."""
    examples = _examples(golden)
    in_process = _RecordsSharedMemory()(examples)
    assert in_process["meta"][0]["shared"] == [False, False, False]
    loader = DataLoader(examples, batch_size=len(examples), num_workers=1, collate_fn=_RecordsSharedMemory())
    (from_worker,) = list(loader)
    assert from_worker["meta"][0]["shared"] == [True, True, True]
    for key in ("spectrogram", "raw_wav", "padding_mask", "wav_lengths"):
        assert torch.equal(from_worker[key], in_process[key]), key
