"""Synthetic prediction records shared by the evaluation tests."""

import random

from salmonn_pl.eval.metrics import HOPS, TRACKS

OPTIONS = {"Animal": ["dog", "cat", "cow", "pig"], "Emotion": ["happy", "sad", "angry", "fear"],
           "Gender": ["Male", "Female"], "Language": ["Italian", "German", "French", "English"]}


def synthetic_records(n_clips: int = 5, variants=("original", "pad30s-zero-late"), seed: int = 0) -> list[dict]:
    """Judged records over every track and hop; answers are right about half the time."""
    rng = random.Random(seed)
    records = []
    for variant in variants:
        for track in TRACKS:
            for hop in HOPS:
                for clip in range(n_clips):
                    options = OPTIONS[track]
                    golden = rng.randrange(len(options))
                    picked = golden if rng.random() < 0.5 else rng.randrange(len(options))
                    letters = "abcd"
                    question = f"Which {track.lower()}? " + " ".join(f"({letters[i]}) {o}" for i, o in enumerate(options))
                    response = f"The answer is {options[picked]}." if rng.random() < 0.9 else "I cannot tell."
                    records.append({
                        "id": f"{track}/{hop}/clip{clip}.wav",
                        "variant": variant,
                        "track": track,
                        "hop": hop,
                        "instruction": question,
                        "response": response,
                        "label": f"({letters[golden]}) {options[golden]}",
                        "attribute_label": options[golden],
                        "judgement": rng.choice(["correct", "correct", "incorrect", "unjudged"]),
                        "judge_explanation": "synthetic",
                        "judge": "synthetic",
                        "meta": {"variant_params": {"name": variant}},
                    })
    return records


RESPONSE_STYLES = (
    "({letter}) {text}",
    "The answer is {text}.",
    "I cannot determine it from the audio.",
    "{text} or {other}",
    "Something else entirely.",
)


def synthetic_examples(n_clips: int = 4, variants: dict | None = None, seed: int = 0) -> list[tuple[str, dict, str]]:
    """``(id, meta, response)`` triples shaped like the SAKURA data module's examples, with
    responses in styles the rule judge reads as correct, incorrect or unjudged."""
    variants = variants or {"original": {"pad_seconds": None, "pad_fill": "zero", "pad_position": "early", "ablation": "none"}}
    rng = random.Random(seed)
    examples = []
    for variant, params in variants.items():
        for track in TRACKS:
            for hop in HOPS:
                for clip in range(n_clips):
                    options = OPTIONS[track]
                    letters = "abcd"
                    golden = (clip + len(hop)) % len(options)
                    question = f"Which {track.lower()} is it? " + " ".join(f"({letters[i]}) {o}" for i, o in enumerate(options))
                    picked = golden if rng.random() < 0.55 else rng.randrange(len(options))
                    other = (picked + 1) % len(options)
                    style = rng.choice(RESPONSE_STYLES)
                    response = style.format(letter=letters[picked], text=options[picked], other=options[other])
                    meta = {
                        "track": track, "hop": hop, "file": f"clip{clip}.wav", "label": options[golden],
                        "answer": f"({letters[golden]}) {options[golden]}", "instruction": question, "question": question,
                        "variant_params": dict(params), "variant": variant, "longer_than_target": False,
                    }
                    examples.append((f"{track}/{hop}/clip{clip}.wav", meta, response))
    return examples


def pad_sweep_variants() -> dict:
    """The study's sweep (2 fills x 2 durations x 3 positions), the unpadded original and text only."""
    variants = {
        "original": {"pad_seconds": None, "pad_fill": "zero", "pad_position": "early", "strip_options": False, "ablation": "none"},
        "zero_audio": {"pad_seconds": None, "pad_fill": "zero", "pad_position": "early", "strip_options": False, "ablation": "zero_audio"},
    }
    for seconds in (15.0, 30.0):
        for fill in ("zero", "noise"):
            for position in ("early", "middle", "late"):
                variants[f"pad{seconds:g}s-{fill}-{position}"] = {
                    "pad_seconds": seconds, "pad_fill": fill, "pad_position": position, "strip_options": False, "ablation": "none",
                }
    return variants


def judged_records(n_clips: int = 4, variants: dict | None = None, seed: int = 0) -> list[dict]:
    from salmonn_pl.eval.evaluator import judge_records
    from salmonn_pl.eval.judge_rule import RuleJudge
    from salmonn_pl.eval.predictions import make_record

    records = [make_record(i, meta, response) for i, meta, response in synthetic_examples(n_clips, variants, seed)]
    return judge_records(RuleJudge(), records)
