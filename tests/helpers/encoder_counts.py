"""Counting the rows each audio encoder and the Q-Former see, for the tests of shared encoding."""

from salmonn_pl.model.salmonn import Salmonn


class RowCounter:
    """Wraps a callable and counts its calls and the batch rows of its first tensor argument."""

    def __init__(self, fn):
        self.fn, self.rows, self.calls = fn, 0, 0

    def __call__(self, first, *args, **kwargs):
        self.calls += 1
        self.rows += first.size(0)
        return self.fn(first, *args, **kwargs)


def count_encoder_rows(monkeypatch, model: Salmonn) -> dict[str, RowCounter]:
    """Counters on Whisper, BEATs and the Q-Former of ``model`` (removed by ``monkeypatch`` after the test)."""
    counters = {
        "whisper": RowCounter(model.whisper.forward),
        "beats": RowCounter(model.beats.extract_features_per_clip),
        "qformer": RowCounter(model.connector.forward),
    }
    monkeypatch.setattr(model.whisper, "forward", counters["whisper"])
    monkeypatch.setattr(model.beats, "extract_features_per_clip", counters["beats"])
    monkeypatch.setattr(model.connector, "forward", counters["qformer"])
    return counters
