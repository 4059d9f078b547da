"""LLM judges of SAKURA answers through any OpenAI-compatible chat endpoint (vLLM, OpenAI, ...).

:class:`OpenAIChatJudge` holds what such judges share: requests run concurrently in a thread pool;
timeouts, 429s, 5xx answers and malformed bodies are retried with exponential backoff; an endpoint
that refuses the key or where nothing listens stops the run with one error naming the URL.
Replies that gave a verdict are cached on disk under a hash of the judge model and the full
request, so judging the same answers again costs no requests; empty, cut-off or unreadable replies
and failed requests are ``unjudged`` (the raw reply kept in the explanation) and not cached, so
the next run asks again. ``cache_mode`` (``use`` / ``refresh`` / ``off``) bypasses the cache.
There is no fallback guess.

:class:`LLMJudge` is ours: it states SAKURA's judging rules, asks at temperature 0 for an
``Explanation:`` and a ``Judgement:`` line, and accepts exactly one unambiguous verdict (see
:func:`parse_judgement`). The benchmark's own judge is ``salmonn_pl.eval.judge_sakura.SakuraJudge``.

Reasoning models served by vLLM (e.g. GPT-OSS) may leave ``content`` empty and put their text in
``reasoning_content`` (or ``reasoning``); the judgement is then read from there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Sequence
from abc import abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import openai
from openai import OpenAI
from openai.types.chat import ChatCompletion

from salmonn_pl.eval.judge_rule import Judge, Judgement, JudgeItem, Verdict

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

# A judgement label ("Judgement:", "**Judgment:**", "Final judgement:") and the rest of its line.
_JUDGEMENT = re.compile(r"(?:final\s+)?judge?ment\s*[*_`]*\s*[:\uff1a](?P<value>[^\n]*)", re.IGNORECASE)
_EXPLANATION = re.compile(r"explanation\s*[*_`]*\s*[:\uff1a]", re.IGNORECASE)
# Decoration around a verdict word: markdown, quotes, brackets, final punctuation.
_DECORATION = " \t*_`\"'\u201c\u201d\u2018\u2019[]()<>.!,;:"
# Words after a verdict that could turn it around or hedge it ("correct, but ...", "incorrect or not").
_HEDGES = re.compile(r"correct|\bwrong\b|\bright\b|\bnot\b|n't\b|\bno\b|\bor\b|\bbut\b|\bhowever\b|\bthough\b|/")

_ECHO, _UNREADABLE = "echo", "unreadable"


def _read_value(value: str) -> str:
    """``correct``, ``incorrect``, ``echo`` (the format repeated: both words or a ``<...>``
    placeholder) or ``unreadable`` for the text after one judgement label."""
    words = re.findall(r"[a-z]+", value.lower())
    if "<" in value or ("correct" in words and "incorrect" in words):
        return _ECHO
    bare = value.strip(_DECORATION).lower()
    if bare in ("correct", "incorrect"):
        return bare
    # "Correct - the response picks (b)": a verdict word, a separator, then words that neither
    # repeat nor hedge a verdict.
    match = re.fullmatch(r"(correct|incorrect)\s*[-\u2013\u2014:,(.]\s*(.*)", bare, re.DOTALL)
    if match and not _HEDGES.search(match.group(2)):
        return match.group(1)
    return _UNREADABLE


def parse_judgement(text: str) -> tuple[str, str] | None:
    """``(verdict, explanation)`` from an ``Explanation: ... Judgement: ...`` reply, or None.

    Exactly one verdict counts. Judgement lines that repeat the requested format (``Judgement:
    <correct or incorrect>``, "correct or incorrect", "correct/incorrect") are skipped, since
    reasoning text may quote the format before answering. The reply is unreadable (None) when it
    has no verdict line, when its verdict lines disagree, when any judgement line is neither a
    verdict nor the format ("not correct", "partially correct", "maybe"), or when its last
    judgement line is not a verdict. The explanation is the text between the last
    ``Explanation:`` before the last verdict and that verdict.
    """
    lines = [(m, _read_value(m.group("value"))) for m in _JUDGEMENT.finditer(text)]
    verdicts = {kind for _, kind in lines if kind in ("correct", "incorrect")}
    if len(verdicts) != 1 or any(kind == _UNREADABLE for _, kind in lines) or lines[-1][1] == _ECHO:
        return None
    last = lines[-1][0]
    starts = list(_EXPLANATION.finditer(text, 0, last.start()))
    if not starts:
        return verdicts.pop(), ""
    # The explanation runs up to the first judgement label after it.
    end = next(m.start() for m, _ in lines if m.start() >= starts[-1].end())
    return verdicts.pop(), text[starts[-1].end() : end].strip(" \n*_")


class JudgeConfigurationError(RuntimeError):
    """The endpoint refuses every request (bad key, unknown model or URL): retrying cannot help."""


class JudgeEndpointUnreachable(JudgeConfigurationError):
    """Nothing answers at the endpoint (connection refused, unknown host): retrying cannot help."""


class _MalformedReply(Exception):
    pass


@dataclass(frozen=True)
class ChatReply:
    """What the endpoint answered: the message text, a reasoning model's thoughts, why it stopped."""

    content: str
    reasoning: str
    finish_reason: str | None


_Reply = ChatReply  # the name earlier versions used


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

    def get(self, key: str) -> ChatReply | None:
        with self._lock:
            row = self._db.execute("SELECT content, reasoning, finish_reason FROM replies WHERE key = ?", (key,)).fetchone()
        return ChatReply(*row) if row else None

    def put(self, key: str, model: str, request: str, reply: ChatReply) -> None:
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

CacheMode = Literal["use", "refresh", "off"]


def _unreachable(error: Exception) -> bool:
    """Whether a connection error means nobody listens there (refused, unknown host), as opposed
    to a timeout or a connection dropped mid-reply (worth retrying)."""
    if isinstance(error, openai.APITimeoutError) or not isinstance(error, openai.APIConnectionError):
        return False
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, (ConnectionRefusedError, socket.gaierror)) or type(cause).__name__ == "ConnectError":
            return True
        cause = cause.__cause__ or cause.__context__
    return False


class OpenAIChatJudge(Judge):
    """What every judge behind an OpenAI-compatible chat-completions endpoint shares: transport,
    retries, the reply cache. A subclass says what to send (:meth:`request_for`) and how to read
    the reply (:meth:`read_reply`).

    Transport: the request dict is POSTed as it is (its keys in their order) through the openai
    client, which serialises it as compact UTF-8 JSON. Retries: timeouts, 429, 5xx and malformed
    bodies, with exponential backoff; 401/403/404 and an endpoint where nothing listens stop the
    run at once with one error naming the URL (the first request is sent alone, so a dead
    endpoint costs one attempt). Cache: only replies that gave a verdict are stored, so an empty,
    cut-off or unreadable reply is asked again next time; a cached reply is used only if it still
    reads as a verdict.

    Args:
        base_url: the endpoint, e.g. ``http://localhost:8000/v1`` for vLLM; None for OpenAI.
        model: the judge model name the endpoint serves.
        api_key_env: environment variable holding the API key (a local server accepts any key).
        concurrency: requests in flight at once.
        max_retries: extra attempts after a timeout, 429, 5xx or malformed reply.
        timeout: seconds before one request is abandoned (and retried).
        cache_dir: where replies are cached; None disables the cache.
        cache_mode: ``use`` (read and write the cache), ``refresh`` (ask every question again and
            overwrite the cached replies) or ``off`` (neither read nor write).
        backoff_initial: seconds before the first retry; doubled on each further retry.
        backoff_max: longest wait between retries.
    """

    def __init__(
        self,
        base_url: str | None,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 120.0,
        cache_dir: str | None = "~/.cache/salmonn_pl/judge",
        cache_mode: CacheMode = "use",
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        if base_url is None and os.environ.get(api_key_env) is None:
            raise JudgeConfigurationError(f"{type(self).__name__}: set the API key in the environment variable {api_key_env}")
        if cache_mode not in ("use", "refresh", "off"):
            raise ValueError(f"{type(self).__name__}: cache_mode must be 'use', 'refresh' or 'off', got {cache_mode!r}")
        self.base_url, self.model, self.api_key_env = base_url, model, api_key_env
        self.concurrency, self.max_retries, self.timeout = concurrency, max_retries, timeout
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.cache_dir, self.cache_mode = cache_dir, cache_mode
        self.requests_sent = 0
        self._connect()

    def _connect(self) -> None:
        # Local OpenAI-compatible servers accept any key.
        api_key = os.environ.get(self.api_key_env) or "EMPTY"
        # Retries are ours (client retries off) so that malformed 200 replies are covered too.
        self._client = OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=self.timeout)
        self.cache = ReplyCache(self.cache_dir) if self.cache_dir and self.cache_mode != "off" else None
        self._count_lock = threading.Lock()

    def __getstate__(self) -> dict:
        # Clients, database connections and locks do not cross process boundaries (DDP spawn).
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "cache", "_count_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._connect()

    @property
    def endpoint(self) -> str:
        return self.base_url or "https://api.openai.com/v1"

    @abstractmethod
    def request_for(self, item: JudgeItem) -> dict:
        """The chat-completions request body for one answer, keys in the order they are sent."""

    @abstractmethod
    def read_reply(self, reply: ChatReply) -> tuple[Verdict, str]:
        """The verdict and explanation in a reply; ``unjudged`` (with the raw reply) when there is none."""

    def judge_many(self, items: Sequence[JudgeItem]) -> list[Judgement]:
        requests = [self.request_for(item) for item in items]
        keys = [_cache_key(r) for r in requests]
        read: dict[str, tuple[Verdict, str]] = {}
        if self.cache is not None and self.cache_mode == "use":
            for key in set(keys):
                cached = self.cache.get(key)
                verdict = self.read_reply(cached) if cached is not None else None
                # A reply cached before only verdicts were cached, or read differently now, is asked again.
                if verdict is not None and verdict[0] != "unjudged":
                    read[key] = verdict
        missing = {key: request for key, request in zip(keys, requests) if key not in read}
        for key, reply in self._ask_all(missing):
            read[key] = self._read_and_cache(key, missing[key], reply)
        return [Judgement(read[key][0], read[key][1], self.name) for key in keys]

    def _read_and_cache(self, key: str, request: dict, reply: ChatReply | str) -> tuple[Verdict, str]:
        if isinstance(reply, str):  # the request failed: nothing to read, nothing to cache
            return "unjudged", reply
        verdict, explanation = self.read_reply(reply)
        if verdict != "unjudged" and self.cache is not None:
            self.cache.put(key, self.model, json.dumps(request, sort_keys=True), reply)
        return verdict, explanation

    def _ask_all(self, requests: dict[str, dict]) -> list[tuple[str, ChatReply | str]]:
        """Replies (or failure descriptions) for the requests. The first is sent alone so that an
        endpoint refusing or not answering stops the run after one attempt."""
        pending = list(requests.items())
        if not pending:
            return []
        first_key, first = pending[0]
        answered = [(first_key, self._ask(first))]
        if len(pending) > 1:
            with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
                futures = [(key, pool.submit(self._ask, request)) for key, request in pending[1:]]
                try:
                    answered += [(key, future.result()) for key, future in futures]
                except JudgeConfigurationError:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        return answered

    def _ask(self, request: dict) -> ChatReply | str:
        """The reply, or a failure description after the last retry."""
        error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self._backoff(attempt, error))
            with self._count_lock:
                self.requests_sent += 1
            try:
                return self._send(request)
            except _RETRYABLE as err:
                if _unreachable(err):
                    raise JudgeEndpointUnreachable(
                        f"{type(self).__name__}: nothing answers at {self.endpoint} ({_describe_cause(err)}); "
                        f"start the server or fix base_url"
                    ) from err
                error = err
                log.warning("judge request failed (attempt %d/%d): %s", attempt + 1, self.max_retries + 1, _describe(err))
                continue
            except openai.APIStatusError as err:
                if err.status_code in _FATAL_STATUS:
                    raise JudgeConfigurationError(f"{self.endpoint} refuses the judge request: {_describe(err)}") from err
                if err.status_code in _RETRYABLE_STATUS:
                    error = err
                    continue
                return f"judge request rejected: {_describe(err)}"
        return f"judge request failed after {self.max_retries + 1} attempts: {_describe(error)}"

    def _send(self, request: dict) -> ChatReply:
        # ``post`` sends the body as given (keys in order), which ``chat.completions.create`` would reorder.
        completion = self._client.post("/chat/completions", body=request, cast_to=ChatCompletion)
        if isinstance(completion, str) or not getattr(completion, "choices", None):
            raise _MalformedReply(f"reply without choices: {str(completion)[:200]!r}")
        choice = completion.choices[0]
        message = choice.message
        extra_fields = message.model_extra or {}
        reasoning = extra_fields.get("reasoning_content") or extra_fields.get("reasoning") or ""
        return ChatReply(message.content or "", reasoning if isinstance(reasoning, str) else str(reasoning), choice.finish_reason)

    def _backoff(self, attempt: int, error: Exception | None) -> float:
        delay = self.backoff_initial * 2 ** (attempt - 1)
        if isinstance(error, openai.APIStatusError):
            retry_after = error.response.headers.get("retry-after")
            try:
                delay = max(delay, float(retry_after)) if retry_after else delay
            except ValueError:
                pass
        return min(delay, self.backoff_max)


class LLMJudge(OpenAIChatJudge):
    """Our LLM judge (prompt above, strict reading of the verdict) through an OpenAI-compatible
    chat-completions endpoint. For the benchmark's own judge, see ``SakuraJudge``.

    Args:
        base_url: the endpoint, e.g. ``http://localhost:8000/v1`` for vLLM; None for OpenAI.
        model: the judge model name the endpoint serves (e.g. ``openai/gpt-oss-20b``, ``gpt-4o-2024-11-20``).
        api_key_env: environment variable holding the API key (a local server accepts any key).
        concurrency: requests in flight at once.
        max_retries: extra attempts after a timeout, 429, 5xx or malformed reply.
        timeout: seconds before one request is abandoned (and retried).
        cache_dir: where replies are cached; None disables the cache.
        cache_mode: ``use``, ``refresh`` (ask again, overwrite the cache) or ``off``.
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
        cache_mode: CacheMode = "use",
        max_tokens: int = 2048,
        top_p: float = 1.0,
        reasoning_effort: str | None = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        self.max_tokens, self.top_p, self.reasoning_effort = max_tokens, top_p, reasoning_effort
        super().__init__(base_url, model, api_key_env, concurrency, max_retries, timeout, cache_dir, cache_mode,
                         backoff_initial, backoff_max)

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

    def read_reply(self, reply: ChatReply) -> tuple[Verdict, str]:
        """The content's verdict; the reasoning's only when the content has no judgement line at all.
        A reply cut at the token limit loses its last, possibly unfinished, line."""
        for text in (reply.content, reply.reasoning):
            if reply.finish_reason == "length" and text and not text.endswith("\n"):
                text = text.rsplit("\n", 1)[0] if "\n" in text else ""
            if not text or not _JUDGEMENT.search(text):
                continue
            parsed = parse_judgement(text)
            if parsed:
                return parsed[0], parsed[1]  # type: ignore[return-value]
            break
        raw = reply.content or reply.reasoning
        return "unjudged", f"unreadable judge reply (finish_reason={reply.finish_reason}): {raw[:2000]}"


def _cache_key(request: dict) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _describe(error: Exception | None) -> str:
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {str(error)[:300]}"
    return f"{type(error).__name__}: {str(error)[:300]}"


def _describe_cause(error: BaseException) -> str:
    """The innermost cause's message, e.g. ``[Errno 111] Connection refused``."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return f"{type(error).__name__}: {str(error)[:200]}"
