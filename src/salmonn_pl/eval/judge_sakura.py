"""SAKURA's own LLM judge, exactly: what the release's ``evaluation/llm_judge.py`` sends and reads.

The benchmark scores answers with GPT-4o (``gpt-4o-2024-11-20``) at temperature 0.0 and top-p 0.9,
without a token limit, through the prompts below, and reads the reply with one pattern; its
``calculate_acc.py`` then counts a judgement as correct or incorrect when, lower-cased and
stripped, it is exactly that word, and every other judgement as invalid (still in the total, so
``accuracy = correct / total``). :class:`SakuraJudge` sends byte-identical request bodies for the
same question, golden answer and response, and reads the same verdicts from the same replies;
what the official scripts cannot read is ``unjudged`` here (counted, listed in the predictions with
the raw reply), never guessed. Checked against the requests, replies, judgements and accuracies
recorded from the release's scripts (``../shared/sakura-judge``, tests/eval/test_judge_sakura.py).

The prompts and the reading are the release's; our own judge (:class:`~salmonn_pl.eval.judge_llm.LLMJudge`)
states the same rules in its own words and reads verdicts more strictly.
"""

from __future__ import annotations

import re

from salmonn_pl.eval.judge_llm import CacheMode, ChatReply, OpenAIChatJudge
from salmonn_pl.eval.judge_rule import JudgeItem, Verdict

MODEL = "gpt-4o-2024-11-20"
TEMPERATURE = 0.0
TOP_P = 0.9

# The release's prompts, character for character (trailing spaces and indentation included).
SYSTEM_PROMPT = "\n".join((
    "You are a good judge. You will be given a question with list of possible options, a ground truth answer and a model generated response. ",
    "                       You have to determine whether the model generated answer is correct.",
))

USER_PROMPT_TEMPLATE = "\n".join((
    "",
    "    You will be given a question with list of possible options, a ground truth answer and a model generated response. Determine whether the model generated response is correct based on the following criteria:",
    "    1. Since there is one and only one corect answer, it should be judged incorrect if the model do not choose any option from the option list or it choose more than one option.",
    "    2. If the model choose one option from the option list, it should be judged correct if the chosen option aligns with the ground truth answer, otherwise it should be judged incorrect.",
    "    3. Read the question, options, ground truth answer and model generated response carefully before making a decision.",
    "",
    "    Considering the following examples:",
    "    Question: What is the capital of France? (a) Paris (b) London (c) Berlin (d) Madrid",
    "    Ground truth answer: (a) Paris",
    "    If the model generated response is: \"The capital of France is Tokyo.\", it should be judged incorrect since it does not choose any option from the option list.",
    "    If the model generated response is: \"The capital of France is Paris and London.\", it should be judged incorrect since it chooses more than one option from the option list.",
    "    If the model generated response is: \"The capital of France is London.\", it should be judged incorrect since it chooses one option from the option list but the chosen option does not align with the ground truth answer.",
    "    If the model generated response is: \"The capital of France is Paris.\", it should be judged correct since it chooses one option from the option list and the chosen option aligns with the ground truth answer.",
    "    Another Question: What is the underlying emotion of the speaker? (a) Happy (b) Sad (c) Angry (d) Neutral",
    "    Ground truth answer: (a) Happy",
    "    If the model generated response is: \"The speaker is happy.\", it should be judged correct since it chooses one option from the option list and the chosen option aligns with the ground truth answer.",
    "    If the model generated response is: \"The speaker expresses happiness.\", it should be judged correct since \"happiness\" aligns with the ground truth answer \"happy\", and they are just different part of speech of the same word.",
    "    If the model generated response is: \"Happiness,\" it should be judged correct since it is also a valid derivative of the ground truth answer \"happy\".",
    "    ",
    "    Now here is the question and the model generated response for you to judge:",
    "    Question: [QUESTION]",
    "    Ground truth answer: [GROUND_TRUTH_ANSWER]",
    "    Model generated response: [MODEL_GENERATED_RESPONSE]",
    "",
    "    Carefully make your decision based on the above criteria. Return your judgement with the following format:",
    "    Explanation: <Your explanation on your judgement>",
    "    Judgement: <Your judgement, either \"correct\" or \"incorrect\">",
    "    ",
))

# The reply format the release reads: "Explanation: " up to the first "\nJudgement: ", and the
# judgement up to the first blank line or the end. Derived from the recorded replies: a multi-line
# explanation is kept whole, "Judgment:" and "**Judgement:**" are not read, spaces and quotes
# around the judgement are kept (" incorrect ", "\"correct\""), text after a blank line is dropped.
_OFFICIAL_REPLY = re.compile(r"Explanation: (.*?)\nJudgement: (.*?)(?:\n\n|$)", re.DOTALL)
NO_EXPLANATION = "No extracted explanation"
NO_JUDGEMENT = "No extracted judgement"


def official_judgement(reply: str) -> tuple[str, str]:
    """``(Explanation, Judgement)`` as the release's judge writes them for a reply, with its
    placeholders when the reply does not have the format."""
    match = _OFFICIAL_REPLY.search(reply)
    return (match.group(1), match.group(2)) if match else (NO_EXPLANATION, NO_JUDGEMENT)


def official_verdict(judgement: str) -> Verdict:
    """How the release's ``calculate_acc.py`` counts a judgement: ``correct`` / ``incorrect`` when
    it is that word once lower-cased and stripped; anything else is invalid (``unjudged``)."""
    word = judgement.lower().strip()
    return word if word in ("correct", "incorrect") else "unjudged"  # type: ignore[return-value]


def build_user_prompt(question: str, answer: str, response: str) -> str:
    # Filled in the release's order (question, response, answer): a response that itself contains
    # "[GROUND_TRUTH_ANSWER]" gets the answer there too, as it does in the release.
    return (
        USER_PROMPT_TEMPLATE.replace("[QUESTION]", question)
        .replace("[MODEL_GENERATED_RESPONSE]", response)
        .replace("[GROUND_TRUTH_ANSWER]", answer)
    )


class SakuraJudge(OpenAIChatJudge):
    """The SAKURA paper's judge (GPT-4o with the release's prompts and reading), through any
    OpenAI-compatible endpoint; transport, retries and cache are :class:`OpenAIChatJudge`'s.

    The question, golden answer and response go into the prompt verbatim (the golden answer with
    the release's stray spaces, as in the ``sakura_results`` files), so a run judged here and the
    release's script run on that run's ``sakura_results`` send the same requests.

    Args:
        base_url: the endpoint; None for OpenAI (key in ``api_key_env``), or e.g. a proxy or a
            local server answering as ``model``.
        model: the judge model; the paper's is ``gpt-4o-2024-11-20``.
        api_key_env: environment variable holding the API key.
        concurrency: requests in flight at once.
        max_retries: extra attempts after a timeout, 429, 5xx or malformed reply.
        timeout: seconds before one request is abandoned (and retried).
        cache_dir: where replies with a verdict are cached; None disables the cache.
        cache_mode: ``use``, ``refresh`` (ask again, overwrite the cache) or ``off``.
        backoff_initial: seconds before the first retry; doubled on each further retry.
        backoff_max: longest wait between retries.
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str = MODEL,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 120.0,
        cache_dir: str | None = "~/.cache/salmonn_pl/judge",
        cache_mode: CacheMode = "use",
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        super().__init__(base_url, model, api_key_env, concurrency, max_retries, timeout, cache_dir, cache_mode,
                         backoff_initial, backoff_max)

    @property
    def name(self) -> str:
        return f"sakura:{self.model}"

    def request_for(self, item: JudgeItem) -> dict:
        # Key order and values as the release's openai client sends them; no max_tokens.
        return {
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": build_user_prompt(item.question, item.answer, item.response)},
            ],
            "model": self.model,
            "temperature": TEMPERATURE,
            "top_p": TOP_P,
        }

    def read_reply(self, reply: ChatReply) -> tuple[Verdict, str]:
        # The release reads the message content only (no reasoning fields).
        explanation, judgement = official_judgement(reply.content)
        verdict = official_verdict(judgement)
        if verdict != "unjudged":
            return verdict, explanation
        if judgement == NO_JUDGEMENT:
            why = f'{NO_JUDGEMENT}: the reply has no "Explanation: ...\\nJudgement: ..." (finish_reason={reply.finish_reason})'
        else:
            why = f"invalid judgement {judgement!r}: neither 'correct' nor 'incorrect' (calculate_acc.py counts it invalid)"
        return "unjudged", f"{why}; reply: {reply.content[:2000]}"
