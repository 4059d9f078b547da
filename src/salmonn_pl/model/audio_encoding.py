"""Evaluation-speed audio encoding: every distinct audio of a batch encoded once, and carried to the next batch.

:func:`encode_audio_per_ablation` encodes each row under its own ablation with
:meth:`~salmonn_pl.model.salmonn.Salmonn.encode_audio`, sharing nothing (the training path and the
reference); :func:`encode_audio_shared` gives every row the same tokens while running each encoder
only on the distinct audio whose ablation keeps that encoder's output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from salmonn_pl.audio.features import whisper_log_mel
from salmonn_pl.audio.load import CHUNK_SAMPLES, SAMPLE_RATE
from salmonn_pl.data.collate import AudioBatch, first_row_with_same_audio
from salmonn_pl.data.variants import Ablation
from salmonn_pl.model.salmonn import DTYPES, AudioTokens, Salmonn

# The encoder outputs each ablation keeps (and so the encoders it needs run); the others see zeros.
USES_WHISPER = frozenset({"none", "zero_beats"})
USES_BEATS = frozenset({"none", "zero_whisper"})
USES_QFORMER = USES_WHISPER | USES_BEATS


@dataclass(frozen=True)
class AudioWindow:
    """Up to 30 s of one batch row's audio, one row for the encoders and the Q-Former: the whole clip,
    or (``chunked``) one 30 s chunk of a clip longer than Whisper's window."""

    row: int
    start: int  # first sample in the row
    stop: int  # end sample (exclusive)
    length: int  # samples the encoders see: a chunk shorter than 1 s is zero-padded to 1 s
    chunked: bool  # needs its own log-mel (the batch's spectrogram is of the row's first 30 s)


@dataclass
class CarriedAudioTokens:
    """The audio tokens of an evaluation run's previous batch, for :func:`encode_audio_shared`:
    ``(audio_key, ablation) -> (the audio's samples, its tokens)``. Valid only while the model's
    weights and settings stay as they were (the evaluation module forgets them when it leaves eval mode)."""

    tokens: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def encode_audio_per_ablation(model: Salmonn, audio: AudioBatch, ablations: Sequence[Ablation]) -> AudioTokens:
    """Audio tokens of every row under its own ablation, sharing nothing: the rows of each
    ablation go through :meth:`Salmonn.encode_audio` together, each row its own batch row.

    The training path (each row draws its own Q-Former dropout) and the reference of
    :func:`encode_audio_shared`.
    """
    groups: dict[str, list[int]] = {}
    for row, name in enumerate(ablations):
        groups.setdefault(name, []).append(row)
    per_row: list[torch.Tensor | None] = [None] * len(ablations)
    for name, rows in groups.items():
        if name == "no_audio":
            continue
        if len(rows) == len(ablations):
            return model.encode_audio(audio, ablation=name)["audio_tokens"]
        tokens = model.encode_audio(audio.rows(torch.tensor(rows, dtype=torch.long)), ablation=name)["audio_tokens"]
        for i, row in enumerate(rows):
            per_row[row] = tokens[i]
    return _batch_of_rows(per_row)


def encode_audio_shared(
    model: Salmonn,
    audio_batch: AudioBatch,
    ablations: Sequence[Ablation],
    audio_keys: Sequence[str | None],
    carry: CarriedAudioTokens | None = None,
) -> AudioTokens:
    """Audio tokens of every row under its own ablation, each distinct audio encoded once (inference).

    Rows with the same ``audio_keys`` entry hold the same waveform (``meta["audio_key"]``, see
    :class:`~salmonn_pl.data.datamodule.SakuraDataset`); a ``None`` key shares with no row.
    Whisper runs once per distinct audio among the rows whose ablation keeps its output
    (``none``, ``zero_beats``), BEATs once per distinct audio among those keeping its own
    (``none``, ``zero_whisper``), the Q-Former once per distinct (audio, ablation), and
    ``zero_audio`` runs none of them. Where an ablation zeroes an encoder's output, zeros of the
    shape that encoder would have produced take its place. Each row thus gets the tokens
    :func:`encode_audio_per_ablation` gives it, up to float rounding where an encoder's batch
    differs. Clips longer than 30 s (with ``max_audio_seconds`` above 30) are encoded in 30 s
    chunks as :meth:`Salmonn.encode_long_audio` does, each chunk shared like a clip.

    ``beats_batching="official"`` makes a clip's BEATs features depend on its batch, and so
    does audio longer than 30 s when ``max_audio_seconds`` is 30 (BEATs then outlasts Whisper):
    such batches are encoded by :func:`encode_audio_per_ablation`, sharing nothing.

    ``carry`` holds the tokens of the previous call (the previous batch of a run): an audio
    whose key and samples match is not encoded again, since a clip's questions often straddle
    two batches. The call then replaces its content with this batch's tokens.
    """
    spectrogram, raw_wav, padding_mask, wav_lengths = audio_batch.tensors()
    if not len(ablations) == len(audio_keys) == spectrogram.size(0):
        raise ValueError(
            f"encode_audio_shared: {spectrogram.size(0)} spectrogram rows, {len(ablations)} ablations "
            f"and {len(audio_keys)} audio_keys; one of each per row is needed"
        )
    has_beats = model.beats is not None and raw_wav is not None
    if has_beats and wav_lengths is None:
        if padding_mask is not None:
            wav_lengths = (~padding_mask).sum(1)
        else:
            wav_lengths = torch.full((raw_wav.size(0),), raw_wav.size(1), device=raw_wav.device)
    chunk_long = model.config.max_audio_seconds > 30.0 and raw_wav is not None and wav_lengths is not None
    longer_than_whisper = has_beats and int(wav_lengths.max()) > CHUNK_SAMPLES and not chunk_long
    if (has_beats and model.config.beats_batching == "official") or longer_than_whisper:
        return encode_audio_per_ablation(model, AudioBatch(spectrogram, raw_wav, padding_mask, wav_lengths), ablations)

    same_audio = first_row_with_same_audio(audio_keys)
    signal = raw_wav if raw_wav is not None else spectrogram
    _check_shared_rows(same_audio, audio_keys, signal, wav_lengths)
    needed: dict[int, dict[str, None]] = {}  # first row of a distinct audio -> its rows' ablations
    for row, name in enumerate(ablations):
        if name != "no_audio":
            needed.setdefault(same_audio[row], {})[name] = None
    windows = {audio: _audio_windows(model, audio, wav_lengths, chunk_long) for audio in needed}

    samples = {audio: _row_samples(signal, wav_lengths if raw_wav is not None else None, audio) for audio in needed}
    pairs = [(audio, name) for audio, names in needed.items() for name in names if name in USES_QFORMER]
    tokens_of: dict[tuple[int, str], torch.Tensor] = {}
    if carry is not None:
        for audio, name in pairs:
            carried = carry.tokens.get((audio_keys[audio], name))
            if carried is not None and _same_samples(carried[0], samples[audio]):
                tokens_of[(audio, name)] = carried[1]
    todo = [pair for pair in pairs if pair not in tokens_of]

    def windows_using(encoder_ablations: frozenset[str]) -> list[AudioWindow]:
        users = dict.fromkeys(audio for audio, name in todo if name in encoder_ablations)
        return [window for audio in users for window in windows[audio]]

    with model.autocast():
        speech = _whisper_states(model, windows_using(USES_WHISPER), spectrogram, raw_wav)
        beats = _beats_states(model, windows_using(USES_BEATS), raw_wav) if has_beats else None
        tokens = _qformer_tokens(model, [(name, windows[audio]) for audio, name in todo], speech, beats)
    tokens_of.update(zip(todo, tokens))
    if carry is not None:
        carry.tokens = {
            (audio_keys[audio], name): (samples[audio], tokens_of[(audio, name)])
            for audio, name in pairs
            if audio_keys[audio] is not None
        }
    per_window = model.connector.tokens_for_frames(model.whisper.config.max_source_positions)
    per_row: list[torch.Tensor | None] = []
    for row, name in enumerate(ablations):
        audio = same_audio[row]
        if name == "no_audio":
            per_row.append(None)
        elif name == "zero_audio":
            shape = (per_window * len(windows[audio]), model.connector.proj.out_features)
            per_row.append(torch.zeros(shape, dtype=_token_dtype(model), device=model.connector.proj.weight.device))
        else:
            per_row.append(tokens_of[(audio, name)])
    return _batch_of_rows(per_row)


def _audio_windows(model: Salmonn, row: int, wav_lengths: torch.Tensor | None, chunk_long: bool) -> list[AudioWindow]:
    """The row's clip as one window, or in 30 s chunks when it is longer (as :meth:`Salmonn.encode_long_audio`)."""
    n = int(wav_lengths[row]) if wav_lengths is not None else 0
    if not (chunk_long and n > CHUNK_SAMPLES):
        return [AudioWindow(row, 0, n, n, chunked=False)]
    n = min(n, round(model.config.max_audio_seconds * SAMPLE_RATE))
    stops = [min(n, start + CHUNK_SAMPLES) for start in range(0, n, CHUNK_SAMPLES)]
    return [
        AudioWindow(row, start, stop, max(stop - start, SAMPLE_RATE), chunked=True)
        for start, stop in zip(range(0, n, CHUNK_SAMPLES), stops)
    ]


def _whisper_states(
    model: Salmonn, windows: list[AudioWindow], spectrogram: torch.Tensor, raw_wav: torch.Tensor | None
) -> dict[AudioWindow, torch.Tensor]:
    """Whisper's last hidden states ``[frames, width]`` of each window, in one encoder batch."""
    if not windows:
        return {}
    chunks = [w for w in windows if w.chunked]
    chunk_mels = iter(whisper_log_mel(*_window_wavs(chunks, raw_wav)) if chunks else ())
    mels = torch.stack([next(chunk_mels) if w.chunked else spectrogram[w.row] for w in windows])
    states = model.whisper(mels.to(model.whisper.conv1.weight.dtype)).last_hidden_state
    return dict(zip(windows, states))


def _beats_states(model: Salmonn, windows: list[AudioWindow], raw_wav: torch.Tensor) -> dict[AudioWindow, torch.Tensor]:
    """BEATs features ``[n_tokens, width]`` of each window (its own tokens), in one encoder batch."""
    if not windows:
        return {}
    features, padding = model.beats.extract_features_per_clip(*_window_wavs(windows, raw_wav))
    return {w: features[i, : int((~padding[i]).sum())] for i, w in enumerate(windows)}


def _qformer_tokens(
    model: Salmonn,
    pairs: list[tuple[str, list[AudioWindow]]],
    speech: dict[AudioWindow, torch.Tensor],
    beats: dict[AudioWindow, torch.Tensor] | None,
) -> list[torch.Tensor]:
    """Audio tokens ``[n_windows * tokens_per_window, H]`` of each (ablation, windows) pair, in one
    Q-Former batch; an encoder output the ablation zeroes is zeros of its shape."""
    if not pairs:
        return []
    rows = [(name, window) for name, windows in pairs for window in windows]
    device = model.connector.proj.weight.device
    # Zeros in the dtype the encoder's output has (that of the connector's LayerNorm when it never ran).
    speech_dtype = next(iter(speech.values())).dtype if speech else model.connector.ln_speech.weight.dtype
    silent_speech = torch.zeros(
        model.whisper.config.max_source_positions, model.whisper.config.d_model, dtype=speech_dtype, device=device
    )
    speech_in = torch.stack([speech[w] if name in USES_WHISPER else silent_speech for name, w in rows])
    audio_in = audio_padding = None
    if beats is not None:
        # The connector zeroes BEATs tokens past a clip's count after ln_audio, so a zeroed stream
        # must keep the clip's token count: ln_audio turns zeros into its bias, padding stays 0.
        lengths = torch.tensor([w.length for _, w in rows])
        counts = [
            beats[w].size(0) if name in USES_BEATS else int(n)
            for (name, w), n in zip(rows, model.beats.output_lengths(lengths))
        ]
        beats_dtype = next(iter(beats.values())).dtype if beats else model.connector.ln_audio.weight.dtype
        audio_in = torch.zeros(len(rows), max(counts), model.beats.output_dim, dtype=beats_dtype, device=device)
        for i, (name, w) in enumerate(rows):
            if name in USES_BEATS:
                audio_in[i, : counts[i]] = beats[w]
        audio_padding = torch.arange(max(counts), device=device) >= torch.tensor(counts, device=device)[:, None]
    tokens = model.connector(speech_in, audio_in, audio_padding)["audio_tokens"]
    sizes = [len(windows) for _, windows in pairs]
    return [t.flatten(0, 1) for t in tokens.split(sizes)]


def _token_dtype(model: Salmonn) -> torch.dtype:
    """The dtype of the connector's audio tokens: the autocast dtype, else the projection's."""
    if model.config.autocast_dtype in ("none", "float32"):
        return model.connector.proj.weight.dtype
    return DTYPES[model.config.autocast_dtype]


def _window_wavs(windows: list[AudioWindow], raw_wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows' samples, right-padded with zeros into ``[n, longest]``, and their lengths ``[n]``."""
    lengths = torch.tensor([w.length for w in windows], device=raw_wav.device)
    wavs = raw_wav.new_zeros(len(windows), int(lengths.max()))
    for i, w in enumerate(windows):
        wavs[i, : w.stop - w.start] = raw_wav[w.row, w.start : w.stop]
    return wavs, lengths


def _row_samples(signal: torch.Tensor, wav_lengths: torch.Tensor | None, row: int) -> torch.Tensor:
    """The row's own samples (its waveform up to its length), or its whole spectrogram without waveforms."""
    return signal[row, : int(wav_lengths[row])] if wav_lengths is not None else signal[row]


def _same_samples(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.device == b.device and bool(torch.equal(a, b))


def _check_shared_rows(
    same_audio: list[int], audio_keys: Sequence[str | None], signal: torch.Tensor, wav_lengths: torch.Tensor | None
) -> None:
    """Rows that share an audio key must hold the same samples: tokens computed once serve all of them."""
    rows = [row for row, first in enumerate(same_audio) if first != row]
    if not rows:
        return
    firsts = [same_audio[row] for row in rows]
    differs = (signal[rows] != signal[firsts]).flatten(1).any(1)
    if wav_lengths is not None:
        differs |= wav_lengths[rows].to(differs.device) != wav_lengths[firsts].to(differs.device)
    if differs.any():
        row = rows[int(differs.nonzero()[0])]
        raise ValueError(
            f"batch rows {same_audio[row]} and {row} share meta audio_key {audio_keys[row]!r} but hold different audio"
        )


def _batch_of_rows(per_row: list[torch.Tensor | None]) -> AudioTokens:
    """Per-row tokens (``None`` = text-only) as :data:`AudioTokens`: stacked when every row has the same shape."""
    present = [t for t in per_row if t is not None]
    if not present:
        return None
    if len(present) == len(per_row) and len({t.shape for t in present}) == 1:
        return torch.stack(present)
    empty = present[0].new_zeros(0, present[0].size(-1))
    return [t if t is not None else empty for t in per_row]
