"""Data for activation tuning: a handful of long, audio-grounded responses (SALMONN's few-shot activation).

After instruction tuning SALMONN answers every prompt with the short outputs of its training tasks
(task over-fitting). The SALMONN paper restores its other abilities two ways: lowering the LoRA
scaling factor at test time (``SalmonnModule(lora_scale=...)``, see ``configs/lora_scale_sweep.yaml``),
and *activation tuning*: a short fine-tune on a few examples whose answers are long and diverse
(stories written about an audio clip). ``configs/activation.yaml`` runs that fine-tune on the set
written here.

The stories are built from each clip's label in a SAKURA-layout folder (``data/<Track>/``), from a
few templates, so that the set is reproducible without an external LLM; a researcher with real
stories writes them with :func:`write_activation_set` directly.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from salmonn_pl.audio.load import SAMPLE_RATE
from salmonn_pl.data.annotations import Annotation, write_annotations
from salmonn_pl.data.sakura import SakuraQuestion, load_question_audio, read_sakura

# The official SALMONN task name and instruction for audio-based storytelling.
STORY_TASK = "audio_story_telling"
STORY_INSTRUCTION = "Based on the audio, write a story in detail. Your story should be highly related to the audio."
STORY_PROMPT = f"<Speech><SpeechHere></Speech> {STORY_INSTRUCTION}"

_EMOTION_ADJECTIVES = {"disgust": "disgusted", "fear": "fearful", "surprise": "surprised", "neutral": "calm"}

_STORIES = (
    ("The recording opens with {subject}, and everything in the story grows from that sound. "
     "Early one morning, before the town had fully woken up, Mara stepped outside and heard it: {subject}, "
     "clear and close, as if it were calling to her alone. She followed the sound past the bakery and the "
     "quiet square, down to the old path by the river. Each time it came again she walked a little faster, "
     "curious about what she would find. When she finally turned the last corner, she understood why the "
     "sound had carried so far, and she stayed there listening until the sun was high. Years later, whenever "
     "she heard {subject} again, she remembered that morning and smiled."),
    ("In this audio we hear {subject}. Imagine a small house at the edge of a forest on a rainy afternoon. "
     "Tom was reading by the window when {subject} broke the silence. He put his book down and listened. "
     "The sound came again, stronger this time, and he realised it was coming from the garden. He pulled on "
     "his boots, opened the creaking door and walked into the rain. What he found there changed his plans for "
     "the whole week: he spent every evening afterwards waiting for {subject}, writing down each time it "
     "returned, until his notebook was full of stories about it."),
    ("This clip is built around {subject}. The story begins in a busy market, where hundreds of voices and "
     "footsteps blend into one. Yet through all that noise, Lena noticed {subject}. It did not belong to the "
     "crowd, and that made it impossible to ignore. She left her basket with a friend and wandered between the "
     "stalls, trying to find where it came from. A fruit seller pointed her to a narrow alley. There, away "
     "from the crowd, the sound was the only thing she could hear. She stood still for a long moment, and when "
     "she returned to the market she told everyone about {subject} she had found hiding in the middle of the city."),
)


def _with_article(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def subject_phrase(track: str, label: str) -> str:
    """What the clip sounds like, as a noun phrase: ``"a cat"``, ``"a speaker who sounds angry"``."""
    if track == "Animal":
        return f"the sound of {_with_article(label)}"
    if track == "Emotion":
        return f"a speaker who sounds {_EMOTION_ADJECTIVES.get(label, label)}"
    if track == "Gender":
        return f"the voice of {_with_article(label)} speaker"
    if track == "Language":
        return f"someone speaking {label}"
    return f"the sound of {_with_article(label)}"


def template_story(track: str, label: str, rng: random.Random) -> str:
    """A long story (about 120 words) about a clip of ``label`` from ``track``."""
    return rng.choice(_STORIES).format(subject=subject_phrase(track, label))


def pick_clips(questions: Sequence[SakuraQuestion], n: int) -> list[SakuraQuestion]:
    """``n`` clips spread over tracks and labels: round-robin over tracks, unseen labels first."""
    by_track: dict[str, list[SakuraQuestion]] = {}
    for question in questions:
        by_track.setdefault(question.track, []).append(question)
    for track, items in by_track.items():
        seen: set[str] = set()
        first, rest = [], []
        for item in items:
            (rest if item.label in seen else first).append(item)
            seen.add(item.label)
        by_track[track] = first + rest
    picked: list[SakuraQuestion] = []
    while len(picked) < n and any(by_track.values()):
        for items in by_track.values():
            if items and len(picked) < n:
                picked.append(items.pop(0))
    return picked


@dataclass(frozen=True)
class ActivationSet:
    annotation: Path
    prompt_path: Path
    n_examples: int


def write_activation_set(out_dir: str | Path, examples: Sequence[tuple[SakuraQuestion, str]]) -> ActivationSet:
    """Write ``(clip, long response)`` pairs as an official annotation file with its prompt file.

    Layout: ``activation.json`` (task ``audio_story_telling``), ``prompts.json`` and ``audio/`` (each
    clip re-encoded as 16 kHz PCM), paths relative to ``out_dir``.
    """
    root = Path(out_dir)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    annotations = []
    for question, response in examples:
        relative = f"audio/{question.track}_{Path(question.file).stem}.wav"
        sf.write(str(root / relative), load_question_audio(question), SAMPLE_RATE, subtype="PCM_16")
        extra = {"id": f"{question.track}/{question.file}", "track": question.track, "label": question.label}
        annotations.append(Annotation(path=relative, text=response, task=STORY_TASK, extra=extra))
    annotation = write_annotations(root / "activation.json", annotations)
    prompt_path = root / "prompts.json"
    prompt_path.write_text(json.dumps({STORY_TASK: [STORY_PROMPT]}, indent=2) + "\n", encoding="utf-8")
    return ActivationSet(annotation, prompt_path, len(annotations))


def write_template_activation_set(
    sakura_root: str | Path, out_dir: str | Path, n: int = 12, tracks: Sequence[str] | None = None, seed: int = 0
) -> ActivationSet:
    """Pick ``n`` clips of a SAKURA-layout folder and write them with template stories (see the module docstring)."""
    root = Path(sakura_root)
    if tracks is None:
        tracks = sorted(p.name for p in (root / "data").iterdir() if p.is_dir()) if (root / "data").is_dir() else []
    if not tracks:
        raise ValueError(f"{root}: no tracks found under {root / 'data'} (expected data/<Track>/metadata.csv)")
    questions, _ = read_sakura(root, tracks=list(tracks), hops=("single",))
    clips = pick_clips(questions, n)
    if len(clips) < n:
        raise ValueError(f"{root}: only {len(clips)} clips in tracks {list(tracks)}, {n} requested")
    rng = random.Random(seed)
    return write_activation_set(out_dir, [(clip, template_story(clip.track, clip.label, rng)) for clip in clips])
