"""The rule judge on the response styles audio-language models really write."""

import csv

import pytest
from tests.helpers.golden import SAKURA_MINI

from salmonn_pl.data.multiple_choice import parse_options
from salmonn_pl.eval.judge_rule import RuleJudge, answer_letter, word_roots

# Questions and golden answers as they appear in the SAKURA release.
EMOTION = "What emotion is the speaker expressing in the audio? (a) happy (b) sad (c) angry (d) fear"
EMOTION_CAP = "How does the speaker feel? (a) Happy (b) Sad (c) Angry (d) Disgust"
GENDER = "What is the speaker's gender in this audio? (a) Male (b) Female"
GENDER_MULTI = "Which of the following historical figures is the same gender as the speaker? (a) Winston Churchill (b) Billie Jean King"
ANIMAL = "From the audio file, which animal from the provided list do you identify as the source of the sound? (a) dog (b) sheep (c) cat (d) rooster"
ANIMAL_SOUND = "Which of the listed sounds resembles the vocalization? (a) Croaking (b) Barking (c) Chirping (d) Meowing"
ANIMAL_TAIL = "Which behaviour is most representative of this animal? (a) Flapping its wings (b) Hiding in shells (c) Jumping between branches (d) Wagging its tail"
LANGUAGE = "Determine the language of the provided speech. (a) Italian (b) German (c) Japanese (d) French"
COUNTRY = "Which country has the language of the audio as an official language? (a) Austria (b) Brazil (c) Japan (d) Canada"
ISO = "From the given ISO language codes, which one represents the language being spoken? (a) it (b) zh (c) es (d) en"
TRANSLATE = "Which of the provided words best translates 'adventure' into that language? (a) aventure (b) habitude (c) \u5192\u9669 (d) \u65e0\u804a"
SENTENCE = (
    "Which sentence best matches the emotional state of the speaker? (a) This situation is really starting to piss me off! "
    "(b) I\u2019m just so happy I could burst! (c) I feel so empty, like nothing matters anymore. "
    "(d) I feel like I\u2019m in danger, and I don\u2019t know what to do."
)

CASES = [
    # letter forms
    (LANGUAGE, "(c) Japanese", "(c) Japanese", "correct"),
    (LANGUAGE, "(c) Japanese", "c) Japanese", "correct"),
    (LANGUAGE, "(c) Japanese", "(c)", "correct"),
    (LANGUAGE, "(c) Japanese", "C.", "correct"),
    (LANGUAGE, "(c) Japanese", "C", "correct"),
    (LANGUAGE, "(c) Japanese", "Answer: c", "correct"),
    (LANGUAGE, "(c) Japanese", "The answer is (C).", "correct"),
    (LANGUAGE, "(c) Japanese", "The correct option is c.", "correct"),
    (LANGUAGE, "(a) Italian", "(c) Japanese", "incorrect"),
    (LANGUAGE, "(a) Italian", "B. German", "incorrect"),
    (ANIMAL, " (c) cat", "The answer is (c) cat", "correct"),
    (GENDER, "(a) Male", "(b) Female", "incorrect"),
    (GENDER, "(b) Female", "(b) Male", "unjudged"),  # letter and text disagree
    (LANGUAGE, "(a) Italian", "(c) Italian", "unjudged"),
    (LANGUAGE, "(a) Italian", "(a) or (b)", "unjudged"),
    (EMOTION, "(a) happy", "(a) happy (b) sad (c) angry (d) fear", "unjudged"),  # repeats the list
    # option text
    (LANGUAGE, "(a) Italian", "Italian", "correct"),
    (LANGUAGE, "(a) Italian", "italian.", "correct"),
    (LANGUAGE, "(a) Italian", "The speaker is speaking Italian.", "correct"),
    (LANGUAGE, "(b) German", "The language spoken is German.", "correct"),
    (EMOTION_CAP, "(a) Happy", "The speaker is happy.", "correct"),
    (EMOTION, "(a) happy", "The speaker's emotion is happy.", "correct"),
    (EMOTION, "(a) happy", "The speaker\u2019s emotion is happy.", "correct"),
    (EMOTION, "(a) happy", "The speaker expresses happiness.", "correct"),
    (EMOTION, "(a) happy", "Happiness", "correct"),
    (EMOTION, "(c) angry", "The speaker speaks angrily.", "correct"),
    (EMOTION, "(c) angry", "The speaker is expressing anger.", "correct"),
    (EMOTION, "(d) fear", "The speaker sounds fearful.", "correct"),
    (EMOTION, "(b) sad", "The speaker sounds sad and tired.", "correct"),
    (EMOTION, "(a) happy", "The speaker sounds sad.", "incorrect"),
    (EMOTION, "(b) sad", "The speaker's voice conveys sadness.", "correct"),
    (GENDER, "(a) Male", "The speaker is male.", "correct"),
    (GENDER, "(a) Male", "The speaker is a female.", "incorrect"),
    (GENDER, "(b) Female", "female", "correct"),
    (GENDER_MULTI, "(b) Billie Jean King", "Billie Jean King", "correct"),
    (GENDER_MULTI, "(b) Billie Jean King", "The speaker has the same gender as Winston Churchill.", "incorrect"),
    (ANIMAL, " (c) cat", "The sound is a cat meowing.", "correct"),
    (ANIMAL, "(a) dog", "The sound is a dog barking", "correct"),
    (ANIMAL, "(a) dog", "Dogs.", "correct"),
    (ANIMAL_SOUND, "(b) Barking", "The sound is a dog barking", "correct"),
    (ANIMAL_SOUND, "(d) Meowing", "The animal meows.", "correct"),
    (ANIMAL_TAIL, "(d) Wagging its tail", "It usually wags its tail.", "correct"),
    (SENTENCE, "(a) This situation is really starting to piss me off!", "This situation is really starting to piss me off!", "correct"),
    (SENTENCE, "(a) This situation is really starting to piss me off!", "The sentence \"I'm just so happy I could burst\" matches best.", "incorrect"),
    (COUNTRY, "(a) Austria", "The language spoken is German, so the country is Austria.", "correct"),
    (COUNTRY, "(a) Austria", "The language spoken is Portuguese, so the country is Brazil.", "incorrect"),
    (TRANSLATE, "(c) \u5192\u9669", "The word is \u5192\u9669.", "correct"),
    (TRANSLATE, "(c) \u5192\u9669", "\u7b54\u6848\u662f\u5192\u9669\u3002", "correct"),
    (TRANSLATE, "(c) \u5192\u9669", "Aventure.", "incorrect"),
    # derivatives are morphological only: a language is not its country
    (COUNTRY, "(a) Austria", "The speaker speaks Japanese.", "unjudged"),
    (ISO, "(d) en", "en", "correct"),
    (ISO, "(d) en", "The language code is en.", "correct"),
    (ISO, "(a) it", "It is (a).", "correct"),
    (ISO, "(a) it", "It is English, so the code is en.", "incorrect"),
    # several options, negations, refusals, paraphrases
    (ANIMAL, "(a) dog", "It could be a dog or a cat.", "unjudged"),
    (EMOTION, "(a) happy", "The speaker is both happy and sad.", "unjudged"),
    (ANIMAL, "(a) dog", "It is a dog, not a cat.", "correct"),
    (ANIMAL, "(c) cat", "It is not a dog, it is a cat.", "correct"),
    (EMOTION, "(a) happy", "The speaker is not happy.", "unjudged"),
    (EMOTION, "(b) sad", "The speaker is not happy but sad.", "correct"),
    (EMOTION, "(a) happy", "The speaker is neither happy nor sad.", "unjudged"),
    (EMOTION, "(a) happy", "I cannot determine the emotion of the speaker from the audio.", "incorrect"),
    (EMOTION, "(a) happy", "I'm sorry, but I can't identify emotions from audio.", "incorrect"),
    (GENDER, "(a) Male", "It is difficult to determine the gender of the speaker.", "incorrect"),
    (GENDER, "(a) Male", "I cannot be sure, but the speaker sounds male.", "correct"),
    (EMOTION, "(a) happy", "The speaker sounds joyful and excited.", "unjudged"),
    (LANGUAGE, "(a) Italian", "The speaker is talking about the weather.", "unjudged"),
    (LANGUAGE, "(a) Italian", "", "unjudged"),
    # an option the question does not offer is no option: incorrect (SAKURA's first criterion)
    (EMOTION, "(a) happy", "(e)", "incorrect"),
    (EMOTION, "(a) happy", "E", "incorrect"),
    (EMOTION, "(a) happy", "E.", "incorrect"),
    (EMOTION, "(a) happy", "The answer is (e).", "incorrect"),
    (EMOTION, "(a) happy", "(e) none of the above", "incorrect"),
    (GENDER, "(a) Male", "(c)", "incorrect"),
    (ANIMAL, "(a) dog", "The sound is from a crow.", "incorrect"),
    (ANIMAL, "(a) dog", "Frogs.", "incorrect"),
    (LANGUAGE, "(a) Italian", "Spanish", "incorrect"),
    (LANGUAGE, "(a) Italian", "The speaker is speaking English.", "incorrect"),
    (EMOTION, "(a) happy", "The speaker sounds surprised.", "incorrect"),
    # ... but what may still be an option, or contradicts itself, stays unjudged
    (EMOTION, "(a) happy", "(e) happy", "unjudged"),
    (ANIMAL, "(a) dog", "It is not a crow.", "unjudged"),
    (ANIMAL, "(a) dog", "Female", "unjudged"),  # another kind of label: not the benchmark's own miss
    (ANIMAL, "(a) dog", "A chicken.", "unjudged"),  # a hen is a chicken
    (EMOTION, "(a) happy", "None of the options fit.", "unjudged"),
    (EMOTION, "(a) happy", "(i) the tone is calm", "unjudged"),  # not an option letter
    (COUNTRY, "(a) Austria", "Spanish", "unjudged"),  # a language among countries
    # the "no options" probe: only the golden answer is known
    ("What emotion is the speaker expressing in the audio?", "(a) happy", "The speaker is happy.", "correct"),
    ("What emotion is the speaker expressing in the audio?", "(a) happy", "The speaker is angry.", "unjudged"),
]


@pytest.mark.parametrize("question,answer,response,expected", CASES, ids=[f"{i:02d}-{c[2][:30]}" for i, c in enumerate(CASES)])
def test_rule_judge_table(question, answer, response, expected):
    judgement = RuleJudge().judge(question, answer, response)
    assert judgement.verdict == expected, judgement.explanation
    assert judgement.judge == "rule"
    assert judgement.explanation


def test_table_has_enough_cases():
    assert len(CASES) >= 40


def test_options_text_is_used_when_the_question_lists_none():
    judge = RuleJudge()
    stripped = "What emotion is the speaker expressing in the audio?"
    assert judge.judge(stripped, "(a) happy", "The speaker is angry.", options_text=EMOTION).verdict == "incorrect"
    assert judge.judge(stripped, "(a) happy", "happy or sad", options_text=EMOTION).verdict == "unjudged"


def test_word_roots_are_morphological():
    assert word_roots("happiness") & word_roots("happy")
    assert word_roots("wagging") & word_roots("wags")
    assert not word_roots("germany") & word_roots("german")
    assert not word_roots("female") & word_roots("male")
    assert not word_roots("france") & word_roots("french")


def test_golden_answer_outside_the_options_is_reported_not_guessed():
    mismatch = RuleJudge().judge(EMOTION, "(a) joyful", "happy")
    assert mismatch.verdict == "unjudged" and "does not match option (a)" in mismatch.explanation
    missing = RuleJudge().judge(EMOTION, "joyful", "happy")
    assert missing.verdict == "unjudged" and "not one of the options" in missing.explanation
    with pytest.raises(ValueError, match="does not match option"):
        answer_letter("(a) joyful", parse_options(EMOTION))


@pytest.mark.skipif(not SAKURA_MINI.is_dir(), reason=f"no SAKURA sample at {SAKURA_MINI}")
def test_every_sakura_mini_question_parses_and_its_golden_answer_is_judged_correct():
    judged = 0
    for metadata in sorted(SAKURA_MINI.glob("data/*/metadata.csv")):
        with metadata.open(newline="") as f:
            for row in csv.DictReader(f):
                for hop in ("single", "multi"):
                    question, answer = row[f"{hop}_instruction"], row[f"{hop}_answer"]
                    options = parse_options(question)
                    assert len(options) in (2, 4), f"{metadata}: {question}"
                    letter = answer_letter(answer, options)
                    assert letter is not None, f"{metadata}: {answer!r}"
                    judge = RuleJudge()
                    # the golden answer itself, its bare text and its bare letter are correct
                    assert judge.judge(question, answer, answer).verdict == "correct", (metadata, answer)
                    assert judge.judge(question, answer, options[letter]).verdict == "correct", (metadata, answer)
                    assert judge.judge(question, answer, f"({letter})").verdict == "correct"
                    # any other option's text is not
                    for other, text in options.items():
                        if other != letter:
                            assert judge.judge(question, answer, text).verdict != "correct", (metadata, text)
                    judged += 1
    assert judged == 4 * 24 * 2
