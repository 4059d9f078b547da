"""Write the few-shot activation-tuning set used by ``configs/activation.yaml``.

    python scripts/activation_data.py --sakura_root ../shared/sakura-mini --out_dir outputs/activation-data

Picks ``n`` clips spread over the tracks of a SAKURA-layout folder and pairs each with a long story
about its label (see :mod:`salmonn_pl.data.activation`).
"""

from __future__ import annotations

from jsonargparse import CLI

from salmonn_pl.data.activation import write_template_activation_set


def main(
    sakura_root: str, out_dir: str = "outputs/activation-data", n: int = 12, tracks: list[str] | None = None, seed: int = 0
) -> None:
    """Write ``activation.json``, ``prompts.json`` and ``audio/`` under ``out_dir``.

    Args:
        sakura_root: folder holding ``data/<Track>/metadata.csv`` and the audio.
        out_dir: where the set is written.
        n: number of examples (the SALMONN paper used a dozen).
        tracks: tracks to draw clips from (default: every track under ``data/``).
        seed: seeds the choice of story template.
    """
    written = write_template_activation_set(sakura_root, out_dir, n=n, tracks=tracks, seed=seed)
    print(f"{written.n_examples} examples -> {written.annotation} (prompts: {written.prompt_path})")


if __name__ == "__main__":
    CLI(main, as_positional=False)
