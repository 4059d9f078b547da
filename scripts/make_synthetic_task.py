"""Write the synthetic audio multiple-choice task of the learning demo (see README, "Learning demo").

    python scripts/make_synthetic_task.py                          # outputs/synthetic-task, balanced
    python scripts/make_synthetic_task.py --out_dir outputs/synthetic-task-prior --text_prior 0.6

Train/val go to official SALMONN annotation files, test to a SAKURA-layout track ``data/Synthetic``;
with ``text_prior`` that fraction of the TRAIN answers is ``prior_class`` (or option (a)), while val
and test stay balanced, and a second test track ``data/SyntheticPrior`` follows the train prior:
text-only accuracy there shows how much of the prior a model has learnt. The same arguments always
write the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from jsonargparse import CLI

from salmonn_pl.data.synthetic import (
    TRACK,
    _write_sakura_track,
    make_split,
    write_synthetic_task,
)

PRIOR_TRACK = f"{TRACK}Prior"
# Offset of the prior track's seed: its clips must not repeat train clips.
PRIOR_TRACK_SEED_OFFSET = 1000


def main(
    out_dir: Path = Path("outputs/synthetic-task"),
    n_train: int = 300,
    n_val: int = 24,
    n_test: int = 60,
    seed: int = 0,
    text_prior: float | None = None,
    prior: Literal["class", "position"] = "class",
    prior_class: str = "click train",
) -> None:
    """Write the task; ``n_*`` count clips, each giving a single-hop and a multi-hop question."""
    paths = write_synthetic_task(out_dir, n_train, n_val, n_test, seed, text_prior, prior, prior_class)
    print(f"wrote {paths.train_annotation}, {paths.val_annotation} and the test track {paths.metadata_csv.parent}")
    if text_prior is not None:
        # Drawn like a train split (so it carries the prior) but from other seeds than the train clips.
        clips = make_split("train", n_test, seed + PRIOR_TRACK_SEED_OFFSET, text_prior, prior, prior_class)
        csv_path, _ = _write_sakura_track(clips, Path(out_dir) / "data" / PRIOR_TRACK)
        print(f"wrote the test track {csv_path.parent}, whose answers follow the train prior")


if __name__ == "__main__":
    CLI(main)
