"""A ``salmonn-pl test`` run shares each clip's encoding between its questions and variants, and
answers exactly as encoding every row on its own does."""

from pathlib import Path

import pytest
import yaml
from tests.helpers.cli_runs import responses, run_test, write_config
from tests.helpers.golden import SAKURA_MINI
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from salmonn_pl.data.collate import AudioBatch
from salmonn_pl.lit_module import SalmonnModule
from salmonn_pl.model.audio_encoding import USES_WHISPER, encode_audio_per_ablation

BATCH_SIZE = 8
VARIANTS = [
    {},
    {"ablation": "zero_beats"},
    {"ablation": "zero_whisper"},
    {"pad_seconds": 10, "pad_fill": "noise", "pad_position": "late"},
]


def _sakura_mini_config(tiny_files: dict, path: Path, output_dir: Path) -> Path:
    write_config(path, tiny_files, output_dir, batch_size=BATCH_SIZE)
    config = yaml.safe_load(path.read_text())
    config["data"]["init_args"].update(root=str(SAKURA_MINI), tracks=["Animal", "Gender"], limit=2, variants=VARIANTS)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _encode_row_by_row(self: SalmonnModule, batch: dict, ablation=None):
    """The encoding before sharing: every row its own pass through the encoders."""
    return encode_audio_per_ablation(self.salmonn, AudioBatch.of(batch), self.row_ablations(batch, ablation))


@pytest.mark.slow
@pytest.mark.skipif(not SAKURA_MINI.is_dir(), reason=f"no sakura-mini at {SAKURA_MINI}")
def test_shared_encoding_gives_the_answers_of_row_by_row_encoding(tiny_files, tmp_path, monkeypatch):
    whisper_rows = []
    forward = WhisperEncoder.forward

    def counting_forward(self, input_features, *args, **kwargs):
        whisper_rows.append(input_features.size(0))
        return forward(self, input_features, *args, **kwargs)

    monkeypatch.setattr(WhisperEncoder, "forward", counting_forward)
    cli = run_test(_sakura_mini_config(tiny_files, tmp_path / "shared.yaml", tmp_path / "shared"))
    shared_rows, whisper_rows[:] = sum(whisper_rows), []

    monkeypatch.setattr(SalmonnModule, "encode", _encode_row_by_row)
    run_test(_sakura_mini_config(tiny_files, tmp_path / "rows.yaml", tmp_path / "rows"))
    row_by_row_rows = sum(whisper_rows)

    shared, row_by_row = responses(tmp_path / "shared"), responses(tmp_path / "rows")
    assert len(shared) == 2 * 2 * 2 * len(VARIANTS) and shared == row_by_row

    # Whisper ran once per distinct audio of each batch among the rows that keep its output.
    dataset = cli.datamodule.dataset
    metas = [dataset[i]["meta"] for i in range(len(dataset))]
    batches = [metas[i : i + BATCH_SIZE] for i in range(0, len(metas), BATCH_SIZE)]
    distinct = sum(len({m["audio_key"] for m in batch if m["variant_params"]["ablation"] in USES_WHISPER}) for batch in batches)
    assert row_by_row_rows == len(metas) == 32  # zero_whisper rows ran Whisper too, for nothing
    assert shared_rows == distinct == 8  # each batch holds one clip: its released and its padded audio
