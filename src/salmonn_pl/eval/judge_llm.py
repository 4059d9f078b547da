"""LLM judge of SAKURA answers through any OpenAI-compatible chat endpoint (vLLM, OpenAI, ...).

The judge states SAKURA's judging rules, asks at temperature 0 for an ``Explanation:`` and a
``Judgement:`` line, and reads them back. Requests run concurrently in a thread pool; timeouts,
429s, 5xx answers and malformed bodies are retried with exponential backoff. Every reply that came
back is cached on disk under a hash of the judge model and the full request, so judging the same
answers again costs no requests. A reply without a readable judgement is ``unjudged`` (the raw
reply is kept in the explanation); a request that keeps failing is ``unjudged`` and not cached, so
the next run asks again. There is no fallback guess.

Reasoning models served by vLLM (e.g. GPT-OSS) may leave ``content`` empty and put their text in
``reasoning_content`` (or ``reasoning``); the judgement is then read from there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import openai
from openai import OpenAI

from salmonn_pl.eval.judge_rule import Judge, Judgement, JudgeItem

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You grade answers to multiple-choice listening questions. You receive a question with its "
    "options, the correct answer and a model's response, and decide whether the response is correct."
)

USER_PROMPT = """Grade the model's response to the multiple-choice question below.

Rules:
1. Exactly one option is right. A response that picks none of the listed options, or picks more than one of them, is incorrect.
2. A response that picks exactly one option is correct when that option is the ground-truth answer, and incorrect otherwise.
3. The response may pick an option by its letter, by its text, or by another part of speech of the option's word: for the option "happy", "happiness" and "happily" pick that option.
4. Read the question, the options, the ground-truth answer and the response carefully before you decide.

For example, with the question "How does the speaker feel? (a) Happy (b) Sad (c) Angry (d) Neutral" and the ground-truth answer "(a) Happy":
- "The speaker sounds happy." is correct: one option, the right one.
- "The speaker expresses happiness." is correct: "happiness" is the noun of the right option.
- "The speaker is sad." is incorrect: one option, but the wrong one.
- "The speaker is happy or sad." is incorrect: it picks two options.
- "The speaker is excited." is incorrect: it picks no listed option.

Question: {question}
Ground-truth answer: {answer}
Model response: {response}

Reply in exactly this format:
Explanation: <why, in one or two sentences>
Judgement: <correct or incorrect>"""

_JUDGEMENT = re.compile(r"judge?ment\W{0,6}(correct|incorrect)\b", re.IGNORECASE)
_EXPLANATION = re.compile(r"explanation\W{0,4}", re.IGNORECASE)


def parse_judgement(text: str) -> tuple[str, str] | None:
    """``(verdict, explanation)`` from an ``Explanation: ... Judgement: ...`` reply, or None.

    The last judgement line wins, because reasoning text may quote the format before answering;
    the explanation is the text between the last ``Explanation:`` before it and the judgement.
    """
    matches = list(_JUDGEMENT.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    head = text[: last.start()]
    starts = list(_EXPLANATION.finditer(head))
    explanation = head[starts[-1].end() :].strip(" \n*_") if starts else ""
    return last.group(1).lower(), explanation


class JudgeConfigurationError(RuntimeError):
    """The endpoint refuses every request (bad key, unknown model or URL): retrying cannot help."""


class _MalformedReply(Exception):
    pass


@dataclass(frozen=True)
class _Reply:
    content: str
    reasoning: str
    finish_reason: str | None


class ReplyCache:
    """Replies on disk (SQLite), keyed by a hash of the judge model and the full request."""

    def __init__(self, cache_dir: str | Path) -> None:
        path = Path(cache_dir).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "judge_replies.sqlite3"
        # One connection shared by the pool's threads; SQLite serialises writers across processes.
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT, request TEXT, content TEXT, "
            "reasoning TEXT, finish_reason TEXT, created REAL)"
        )
        self._db.commit()
        self._lock = threading.Lock()

    def get(self, key: str) -> _Reply | None:
        with self._lock:
            row = self._db.execute("SELECT content, reasoning, finish_reason FROM replies WHERE key = ?", (key,)).fetchone()
        return _Reply(*row) if row else None

    def put(self, key: str, model: str, request: str, reply: _Reply) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, model, request, reply.content, reply.reasoning, reply.finish_reason, time.time()),
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]


_RETRYABLE = (
    openai.APITimeoutError,  # before APIConnectionError: it is a subclass
    openai.APIConnectionError,
    openai.RateLimitError,
    openai.InternalServerError,
    _MalformedReply,
    json.JSONDecodeError,
)
_FATAL_STATUS = (401, 403, 404)
_RETRYABLE_STATUS = (408, 409)


class LLMJudge(Judge):
    """Judge through an OpenAI-compatible chat-completions endpoint.

    Args:
        base_url: the endpoint, e.g. ``http://localhost:8000/v1`` for vLLM; None for OpenAI.
        model: the judge model name the endpoint serves (e.g. ``openai/gpt-oss-20b``, ``gpt-4o-2024-11-20``).
        api_key_env: environment variable holding the API key (a local server accepts any key).
        concurrency: requests in flight at once.
        max_retries: extra attempts after a timeout, 429, 5xx or malformed reply.
        timeout: seconds before one request is abandoned (and retried).
        cache_dir: where replies are cached; None disables the cache.
        max_tokens: reply budget; reasoning models need room to think before answering.
        top_p: nucleus sampling; irrelevant at temperature 0 but part of the request.
        reasoning_effort: passed to reasoning models that accept it (e.g. ``low`` for GPT-OSS).
        backoff_initial: seconds before the first retry; doubled on each further retry.
        backoff_max: longest wait between retries.
    """

    def __init__(
        self,
        base_url: str | None = "http://localhost:8000/v1",
        model: str = "openai/gpt-oss-20b",
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 120.0,
        cache_dir: str | None = "~/.cache/salmonn_pl/judge",
        max_tokens: int = 2048,
        top_p: float = 1.0,
        reasoning_effort: str | None = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        if base_url is None and os.environ.get(api_key_env) is None:
            raise JudgeConfigurationError(f"LLMJudge: set the API key in the environment variable {api_key_env}")
        self.base_url, self.model, self.api_key_env = base_url, model, api_key_env
        self.concurrency, self.max_retries, self.timeout = concurrency, max_retries, timeout
        self.max_tokens, self.top_p, self.reasoning_effort = max_tokens, top_p, reasoning_effort
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.cache_dir = cache_dir
        self.requests_sent = 0
        self._connect()

    def _connect(self) -> None:
        # Local OpenAI-compatible servers accept any key.
        api_key = os.environ.get(self.api_key_env) or "EMPTY"
        # Retries are ours (client retries off) so that malformed 200 replies are covered too.
        self._client = OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=self.timeout)
        self.cache = ReplyCache(self.cache_dir) if self.cache_dir else None
        self._count_lock = threading.Lock()

    def __getstate__(self) -> dict:
        # Clients, database connections and locks do not cross process boundaries (DDP spawn).
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "cache", "_count_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._connect()

    @property
    def name(self) -> str:
        return f"llm:{self.model}"

    def request_for(self, item: JudgeItem) -> dict:
        question = item.question
        if item.options_text and item.options_text not in question:
            question = f"{question}\n(The options shown to the model were: {item.options_text})"
        prompt = USER_PROMPT.format(question=question, answer=item.answer.strip(), response=item.response)
        request = {
            "model": self.model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
            "temperature": 0.0,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
        }
        if self.reasoning_effort is not None:
            request["reasoning_effort"] = self.reasoning_effort
        return request

    def judge_many(self, items: Sequence[JudgeItem]) -> list[Judgement]:
        requests = [self.request_for(item) for item in items]
        keys = [_cache_key(r) for r in requests]
        replies: dict[str, _Reply | str] = {}
        if self.cache is not None:
            for key in set(keys):
                cached = self.cache.get(key)
                if cached is not None:
                    replies[key] = cached
        missing = {key: request for key, request in zip(keys, requests) if key not in replies}
        if missing:
            with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
                for key, reply in zip(missing, pool.map(self._ask, missing.values())):
                    replies[key] = reply
        return [self._judgement(replies[key]) for key in keys]

    def _ask(self, request: dict) -> _Reply | str:
        """The reply, or a failure description after the last retry."""
        key = _cache_key(request)
        error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self._backoff(attempt, error))
            with self._count_lock:
                self.requests_sent += 1
            try:
                reply = self._send(request)
            except _RETRYABLE as err:
                error = err
                log.warning("judge request failed (attempt %d/%d): %s", attempt + 1, self.max_retries + 1, _describe(err))
                continue
            except openai.APIStatusError as err:
                if err.status_code in _FATAL_STATUS:
                    raise JudgeConfigurationError(f"{self.base_url} refuses the judge request: {_describe(err)}") from err
                if err.status_code in _RETRYABLE_STATUS:
                    error = err
                    continue
                return f"judge request rejected: {_describe(err)}"
            if self.cache is not None:
                self.cache.put(key, self.model, json.dumps(request, sort_keys=True), reply)
            return reply
        return f"judge request failed after {self.max_retries + 1} attempts: {_describe(error)}"

    def _send(self, request: dict) -> _Reply:
        body = dict(request)
        extra = {"reasoning_effort": body.pop("reasoning_effort")} if "reasoning_effort" in body else None
        completion = self._client.chat.completions.create(**body, extra_body=extra)
        if isinstance(completion, str) or not getattr(completion, "choices", None):
            raise _MalformedReply(f"reply without choices: {str(completion)[:200]!r}")
        choice = completion.choices[0]
        message = choice.message
        extra_fields = message.model_extra or {}
        reasoning = extra_fields.get("reasoning_content") or extra_fields.get("reasoning") or ""
        return _Reply(message.content or "", reasoning if isinstance(reasoning, str) else str(reasoning), choice.finish_reason)

    def _backoff(self, attempt: int, error: Exception | None) -> float:
        delay = self.backoff_initial * 2 ** (attempt - 1)
        if isinstance(error, openai.APIStatusError):
            retry_after = error.response.headers.get("retry-after")
            try:
                delay = max(delay, float(retry_after)) if retry_after else delay
            except ValueError:
                pass
        return min(delay, self.backoff_max)

    def _judgement(self, reply: _Reply | str) -> Judgement:
        if isinstance(reply, str):
            return Judgement("unjudged", reply, self.name)
        for text in (reply.content, reply.reasoning):
            parsed = parse_judgement(text) if text else None
            if parsed:
                return Judgement(parsed[0], parsed[1], self.name)  # type: ignore[arg-type]
        raw = reply.content or reply.reasoning
        return Judgement("unjudged", f"unparseable judge reply (finish_reason={reply.finish_reason}): {raw[:2000]}", self.name)


def _cache_key(request: dict) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _describe(error: Exception | None) -> str:
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {str(error)[:300]}"
    return f"{type(error).__name__}: {str(error)[:300]}"
