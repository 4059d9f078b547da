"""Plots of the attention-position probe (matplotlib, no display needed).

* ``attention_vs_time.png``: attention of the answer tokens and of the last prompt token to each audio
  token vs its time in the audio, one line per variant (raw mass and normalised share, mean over layers);
* ``attention_layer_time.png``: layer x time heatmap of the answer tokens' share, one panel per variant;
* ``qformer_frames.png``: the Q-Former's cross-attention over the frames of a window, one line per variant;
* ``qformer_window_map.png``: window x frame heatmap of the same, one panel per variant.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from salmonn_pl.model.window_qformer import WHISPER_FRAMES_PER_30S
from salmonn_pl.probes.attention import VariantProfile

MS_PER_FRAME = 30_000 / WHISPER_FRAMES_PER_30S
Side = Literal["answer", "last_prompt"]
SIDE_TITLES = {"answer": "answer tokens", "last_prompt": "last prompt token"}


def _color(index: int) -> str:
    # tab20 keeps up to 20 variants (a full padding sweep plus the original) distinguishable.
    from matplotlib import colormaps

    return colormaps["tab20"](index % 20)


LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = "osD^v<>ph*"


def _style(index: int) -> dict:
    """Colour, dash pattern and marker of the ``index``-th series: variants with identical curves
    (e.g. the same clip padded at the same place with zeros and with noise) stay distinguishable."""
    return {"color": _color(index), "linestyle": LINE_STYLES[index % len(LINE_STYLES)],
            "marker": MARKERS[index % len(MARKERS)]}


ClipSpans = Mapping[str, tuple[float, float]]


def clip_spans_by_variant(records: Iterable[Mapping]) -> dict[str, tuple[float, float]]:
    """Median ``(start, end)`` in seconds of where the clip sits in each variant's audio, from the
    probe's per-question records (``clip_span_s``); variants without spans are left out."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for record in records:
        span = record.get("clip_span_s")
        if span:
            spans.setdefault(str(record.get("variant")), []).append((float(span[0]), float(span[1])))
    medians = {}
    for name, values in spans.items():
        starts, ends = sorted(v[0] for v in values), sorted(v[1] for v in values)
        medians[name] = (starts[len(starts) // 2], ends[len(ends) // 2])
    return medians


def _mark_clip(ax, span: tuple[float, float] | None, total: float | None, **style) -> bool:
    """Vertical lines where the clip starts / ends inside padding (nothing for an unpadded clip)."""
    if span is None:
        return False
    start, end = span
    drawn = False
    if start > 0.05:
        ax.axvline(start, linewidth=1.0, **style)
        drawn = True
    if total is None or end < total - 0.05:
        ax.axvline(end, linewidth=1.0, **style)
        drawn = True
    return drawn


def _profile(variant: VariantProfile, side: Side, quantity: Literal["mass", "share"]) -> torch.Tensor:
    """``[layers, n_audio]`` attention of one side of a variant."""
    return {
        ("answer", "mass"): variant.answer_mass,
        ("answer", "share"): variant.answer_share,
        ("last_prompt", "mass"): variant.prompt_mass,
        ("last_prompt", "share"): variant.prompt_share,
    }[(side, quantity)]


def _audio_end(seconds: torch.Tensor) -> float:
    # Token times are window centres, the first one half a window in: first + last centre is where
    # the last window ends.
    return float(seconds[0] + seconds[-1])


def _grid(count: int, max_columns: int = 4) -> tuple[int, int]:
    columns = min(count, max_columns)
    return math.ceil(count / columns), columns


def plot_attention_vs_time(variants: Mapping[str, VariantProfile], path: str | Path,
                           clip_spans: ClipSpans | None = None) -> Path:
    """Mean attention over layers vs seconds: rows answer tokens / last prompt token, columns mass /
    share. Dotted vertical lines in a variant's colour mark where its clip starts / ends inside the padding."""
    figure = Figure(figsize=(13, 7.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2, sharex=True, squeeze=False)
    for row, side in enumerate(("answer", "last_prompt")):
        for column, quantity in enumerate(("mass", "share")):
            ax = axes[row][column]
            for index, (name, variant) in enumerate(variants.items()):
                values = _profile(variant, side, quantity).mean(0)
                if torch.isnan(values).all():
                    continue
                times = variant.seconds[: len(values)]
                ax.plot(times.tolist(), values.tolist(), linewidth=1.4, markersize=3,
                        markevery=max(1, len(values) // 12), **_style(index),
                        label=f"{name} (n={variant.answered if side == 'answer' else variant.questions})")
                _mark_clip(ax, (clip_spans or {}).get(name), _audio_end(times), color=_color(index), linestyle=":")
            what = "attention mass" if quantity == "mass" else "share of audio attention"
            ax.set_title(f"{SIDE_TITLES[side]}: {what}")
            ax.set_ylabel("attention probability" if quantity == "mass" else "share (sums to 1 over audio)")
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("time in audio (s, centre of the audio token's window)")
    handles, labels = axes[1][0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside right center", fontsize="small", title="variant")
    title = "Where the LLM attends in the audio (mean over heads and layers)"
    if clip_spans:
        title += "\ndotted lines: where the clip starts / ends inside the padding"
    figure.suptitle(title)
    return _save(figure, path)


def plot_layer_time_heatmap(
    variants: Mapping[str, VariantProfile], path: str | Path, side: Side = "answer",
    clip_spans: ClipSpans | None = None,
) -> Path:
    """Layer x time heatmap of the share of audio attention, one panel per variant (shared colour scale)."""
    shown = {name: v for name, v in variants.items() if not torch.isnan(_profile(v, side, "share")).all()}
    if not shown:
        shown = dict(variants)
    rows, columns = _grid(len(shown))
    figure = Figure(figsize=(4.2 * columns + 1.2, 3.2 * rows + 0.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False, sharex=True, sharey=True)
    maps = {name: _profile(v, side, "share") for name, v in shown.items()}
    vmin, vmax = _value_range(maps.values())
    image = None
    for ax, (name, share) in zip(axes.flat, maps.items()):
        layers = share.size(0)
        image = ax.imshow(
            share.numpy(), aspect="auto", origin="lower", cmap="viridis", vmin=vmin, vmax=vmax,
            extent=(0.0, _audio_end(shown[name].seconds[: share.size(1)]), -0.5, layers - 0.5), interpolation="nearest",
        )
        ax.set_title(name, fontsize="medium")
        ax.set_yticks(range(0, layers, max(1, layers // 8)))
        _mark_clip(ax, (clip_spans or {}).get(name), _audio_end(shown[name].seconds[: share.size(1)]),
                   color="white", linestyle="--")
    _label_panels(axes, len(maps), "time in audio (s)", "LLM layer")
    if image is not None:
        figure.colorbar(image, ax=axes, label="share of audio attention", shrink=0.9)
    figure.suptitle(f"Share of audio attention per layer and time ({SIDE_TITLES[side]}, mean over heads)")
    return _save(figure, path)


def plot_qformer_frames(variants: Mapping[str, VariantProfile], path: str | Path) -> Path:
    """Q-Former cross-attention over the frames of a window (mean over windows inside the audio)."""
    figure = Figure(figsize=(9, 5), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    kernel = 0
    for index, (name, variant) in enumerate(variants.items()):
        in_audio = variant.frame_profile_in_audio
        profile = in_audio if in_audio is not None else variant.frame_profile
        if profile is None:
            continue
        kernel = profile.numel()
        offsets = [(f + 0.5) * MS_PER_FRAME for f in range(kernel)]
        label = name if in_audio is not None else f"{name} (all windows)"
        ax.plot(offsets, profile.tolist(), markersize=4, **_style(index), label=label)
    if kernel:
        ax.axhline(1.0 / kernel, color="0.4", linestyle="--", linewidth=1, label="uniform")
    ax.set_xlabel("frame centre within the window (ms from the window's start)")
    ax.set_ylabel("cross-attention (sums to 1 over the window)")
    ax.set_title("Q-Former: which frames of a window its query attends to\n"
                 "(mean over layers, heads, queries and the windows inside the audio)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save(figure, path)


def plot_qformer_window_map(variants: Mapping[str, VariantProfile], path: str | Path) -> Path:
    """Window x frame heatmap of the Q-Former cross-attention, one panel per variant that has one."""
    variants = {name: v for name, v in variants.items() if v.qformer_frames is not None}
    rows, columns = _grid(len(variants))
    figure = Figure(figsize=(3.6 * columns + 1.2, 3.4 * rows + 0.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False, sharex=True, sharey=True)
    vmin, vmax = _value_range(v.qformer_frames for v in variants.values())
    image = None
    for ax, (name, variant) in zip(axes.flat, variants.items()):
        frames = variant.qformer_frames  # [n_windows, kernel]
        kernel = frames.size(1)
        image = ax.imshow(
            frames.numpy(), aspect="auto", origin="lower", cmap="magma", vmin=vmin, vmax=vmax,
            extent=(0.0, kernel * MS_PER_FRAME, 0.0, _audio_end(variant.seconds)), interpolation="nearest",
        )
        ax.set_title(name, fontsize="medium")
    _label_panels(axes, len(variants), "time within window (ms)", "window position in audio (s)")
    if image is not None:
        figure.colorbar(image, ax=axes, label="cross-attention", shrink=0.9)
    figure.suptitle("Q-Former cross-attention over each window's frames (mean over layers, heads, queries)")
    return _save(figure, path)


def write_plots(variants: Mapping[str, VariantProfile], output_dir: str | Path,
                clip_spans: ClipSpans | None = None) -> dict[str, Path]:
    """Every probe plot into ``output_dir``; returns them by name (no plots for an empty probe).
    ``clip_spans`` (:func:`clip_spans_by_variant`) marks where each variant's clip sits in time."""
    if not variants:
        return {}
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "attention_vs_time": plot_attention_vs_time(variants, output_dir / "attention_vs_time.png", clip_spans),
        "attention_layer_time": plot_layer_time_heatmap(variants, output_dir / "attention_layer_time.png",
                                                        clip_spans=clip_spans),
    }
    # Long-audio runs carry no Q-Former weights (see QuestionProfile.qformer_frames).
    if any(v.qformer_frames is not None for v in variants.values()):
        plots["qformer_frames"] = plot_qformer_frames(variants, output_dir / "qformer_frames.png")
        plots["qformer_window_map"] = plot_qformer_window_map(variants, output_dir / "qformer_window_map.png")
    return plots


def _label_panels(axes, used: int, xlabel: str, ylabel: str) -> None:
    """Hide the unused panels of a grid; label the x axis of every panel with no panel below it."""
    columns = axes.shape[1]
    for index, ax in enumerate(axes.flat):
        if index >= used:
            ax.set_visible(False)
            continue
        if index + columns >= used:  # nothing drawn below this panel
            ax.set_xlabel(xlabel)
            ax.tick_params(labelbottom=True)
        if index % columns == 0:
            ax.set_ylabel(ylabel)


def _value_range(maps: Iterable[torch.Tensor]) -> tuple[float, float]:
    # One colour scale for all panels, stretched over the values present: near-uniform attention
    # (the usual case inside a window) would otherwise show as a flat colour.
    finite = torch.cat([m[~torch.isnan(m)].flatten() for m in maps])
    if not finite.numel():
        return 0.0, 1.0
    return float(finite.min()), float(finite.max())


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    figure.savefig(path, dpi=110)
    return path
