"""report.md's "The study's questions, family by family": one compact table per question, one row per run."""

from salmonn_pl.data.variants import Variant
from salmonn_pl.eval.report import STUDY_SECTION, Run, render_report

GS, GM, AS = ("Gender", "single"), ("Gender", "multi"), ("Animal", "single")


def _records(outcomes: dict[tuple[str, str], str], **settings) -> list[dict]:
    """One record per letter of ``outcomes[(track, hop)]`` (c = correct, i = incorrect) of the variant
    ``Variant(**settings)``."""
    variant = Variant(**settings)
    return [
        {"id": f"{track}/{hop}/clip{n}.wav", "variant": variant.name, "track": track, "hop": hop,
         "judgement": {"c": "correct", "i": "incorrect"}[letter], "meta": {"variant_params": variant.params()}}
        for (track, hop), letters in outcomes.items() for n, letter in enumerate(letters)
    ]


def _pad(position: str) -> dict:
    return {"pad_seconds": 15.0, "pad_fill": "zero", "pad_position": position}


def salmonn_run() -> Run:
    """Accuracy averaged over gender-single and gender-multi: original 75, padded early / middle /
    late 62.5 / 37.5 / 12.5, zero_whisper 37.5, zero_beats 62.5, no_audio 25, options stripped 75,
    caption 87.5."""
    records = [
        *_records({GS: "cccc", GM: "ccii"}, name="original"),
        *_records({GS: "ccci", GM: "ccii"}, **_pad("early")),
        *_records({GS: "ccii", GM: "ciii"}, **_pad("middle")),
        *_records({GS: "ciii", GM: "iiii"}, **_pad("late")),
        *_records({GS: "ccii", GM: "ciii"}, name="zero_whisper", ablation="zero_whisper"),
        *_records({GS: "ccci", GM: "ccii"}, name="zero_beats", ablation="zero_beats"),
        *_records({GS: "ciii", GM: "ciii"}, name="no_audio", ablation="no_audio"),
        *_records({GS: "ccci", GM: "ccci"}, name="no_options", strip_options=True),
        *_records({GS: "cccc", GM: "ccci"}, name="text_caption", text_caption=True),
    ]
    return Run("salmonn", records, model_family="SALMONN")


def qwen_runs(tmp_path) -> list[Run]:
    """Qwen2-Audio: original 50 over the gender columns (its animal-single column, which no other
    cell has, is left out of the averages), padded early / late 50 / 25 (no middle), caption 75, and
    a second run evaluated with ``model.ablation: no_audio`` at 12.5. No encoder ablations."""
    heard = Run("qwen", [*_records({GS: "ccci", GM: "ciii", AS: "iiii"}, name="original"),
                         *_records({GS: "ccii", GM: "ccii"}, **_pad("early")),
                         *_records({GS: "ciii", GM: "ciii"}, **_pad("late")),
                         *_records({GS: "cccc", GM: "ccii"}, name="text_caption", text_caption=True)],
                model_family="Qwen2-Audio")
    (tmp_path / "config.yaml").write_text("model:\n  ablation: no_audio\n")
    text_only = Run("qwen_text", _records({GS: "ciii", GM: "iiii"}, name="original"), directory=tmp_path,
                    model_family="Qwen2-Audio")
    return [heard, text_only]


def _section(report: str) -> str:
    start = report.index(STUDY_SECTION)
    return report[start:report.index("\n## ", start + 1)]


def test_each_question_has_its_table_with_one_row_per_run_and_family(tmp_path):
    report = render_report([salmonn_run(), *qwen_runs(tmp_path)])
    assert report.index("## Accuracy (%)") < report.index(STUDY_SECTION) < report.index("## Questions")
    section = _section(report)
    average = "run — accuracy (%): average (gender-multi, gender-single)"
    assert f"| {average} | padding | original | early | middle | late | spread (%p) |" in section
    assert "| salmonn (SALMONN) | 15s zero | 75.0 | 62.5 | 37.5 | 12.5 | 50.0 |" in section
    assert "| qwen (Qwen2-Audio) | 15s zero | 50.0 | 50.0 | – | 25.0 | 25.0 |" in section

    header = "| original | zero_whisper | drop (%p) | zero_beats | drop (%p) | no_audio | drop (%p) |"
    assert f"| {average} {header}" in section
    assert "| salmonn (SALMONN) | 75.0 | 37.5 | +37.5 | 62.5 | +12.5 | 25.0 | +50.0 |" in section
    # Qwen2-Audio has no BEATs / Whisper ablation; its no_audio comes from the run-level ablated run.
    assert "| qwen (Qwen2-Audio) | 50.0 | – | – | – | – | 12.5 | +37.5 |" in section
    assert "qwen_text" not in section  # folded into the row of the same model

    assert f"| {average} | original | no audio | options stripped | audio gain (%p) |" in section
    assert "| salmonn (SALMONN) | 75.0 | 25.0 | 75.0 | +50.0 |" in section
    assert "| qwen (Qwen2-Audio) | 50.0 | 12.5 | – | +37.5 |" in section

    assert f"| {average} | compared | audio | caption | gap (%p) |" in section
    assert "| salmonn (SALMONN) | original vs text_caption | 75.0 | 87.5 | +12.5 |" in section
    assert "| qwen (Qwen2-Audio) | original vs text_caption | 50.0 | 75.0 | +25.0 |" in section


def test_a_table_is_absent_when_the_runs_lack_its_variants(tmp_path):
    heard = qwen_runs(tmp_path)[0]
    section = _section(render_report([heard]))
    assert "### Position effect" in section and "### Hearing vs reasoning" in section
    assert "### Encoder ablations" not in section and "### Text prior" not in section

    only_original = Run("plain", _records({GS: "ccci", GM: "ciii"}, name="original"), model_family="SALMONN")
    assert STUDY_SECTION not in render_report([only_original])


def test_a_run_level_ablation_without_its_audio_run_keeps_a_row_of_its_own(tmp_path):
    text_only = qwen_runs(tmp_path)[1]
    section = _section(render_report([salmonn_run(), text_only]))
    assert "| qwen_text (Qwen2-Audio) | – | – | – | – | – | 12.5 | – |" in section
    assert "| qwen_text (Qwen2-Audio) | – | 12.5 | – | – |" in section
