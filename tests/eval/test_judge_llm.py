"""The LLM judge against a real HTTP server on loopback speaking the OpenAI chat-completions API."""

import json
import pickle
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from salmonn_pl.eval.judge_llm import (
    ChatReply,
    JudgeConfigurationError,
    JudgeEndpointUnreachable,
    LLMJudge,
    _cache_key,
    parse_judgement,
)
from salmonn_pl.eval.judge_rule import JudgeItem

QUESTION = "What emotion is the speaker expressing in the audio? (a) happy (b) sad (c) angry (d) fear"


class ScriptedChatServer:
    """An OpenAI-compatible ``/v1/chat/completions`` whose misbehaviour is chosen by a tag in the
    judged response, e.g. ``[500x2]`` answers HTTP 500 to the first two attempts.

    When it answers properly, it judges like a careful grader would: correct iff the response
    contains the golden option's text.
    """

    def __init__(self):
        self.attempts: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server.answer(self, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a slow reply
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/v1"

    @property
    def total(self) -> int:
        return sum(self.attempts.values())

    def answer(self, handler, body):
        if handler.headers.get("Authorization") == "Bearer revoked":
            return self._send(handler, 401, {"error": {"message": "invalid api key"}})
        prompt = body["messages"][-1]["content"]
        response = re.search(r"^Model response: (.*)$", prompt, re.MULTILINE).group(1)
        golden = re.search(r"^Ground-truth answer: \([a-z]\) (.*)$", prompt, re.MULTILINE).group(1)
        with self.lock:
            self.attempts[response] += 1
            attempt = self.attempts[response]
        tag = re.search(r"\[(\w+)\]", response)
        tag = tag.group(1) if tag else ""
        failing = re.fullmatch(r"(\w+?)x(\d+)", tag)
        if failing and attempt <= int(failing.group(2)):
            kind = failing.group(1)
            if kind == "slow":
                time.sleep(1.5)
                return self._send(handler, 200, self._completion("Explanation: late\nJudgement: correct"))
            if kind == "html":
                return self._send_raw(handler, 200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
            if kind == "cut":
                return self._send_raw(handler, 200, b'{"id": "x", "choices": [', "application/json")
            if kind == "garbage":
                return self._send(handler, 200, self._completion("I would rather not say."))
            if kind == "empty":  # a 200 reply with nothing in it
                return self._send(handler, 200, self._completion(""))
            if kind == "length":  # cut at the token limit in the middle of the verdict
                return self._send(handler, 200, self._completion("Explanation: thinking\nJudgement: corr", finish="length"))
            if kind == "echo":  # the format repeated instead of a verdict
                return self._send(handler, 200, self._completion("Explanation: x\nJudgement: <correct or incorrect>"))
            return self._send(handler, int(kind[1:]), {"error": {"message": f"scripted {kind}"}},
                              {"Retry-After": "0"} if kind == "e429" else {})
        if tag == "always500":
            return self._send(handler, 500, {"error": {"message": "down"}})
        verdict = "correct" if golden.lower() in response.lower() else "incorrect"
        text = f"Explanation: the response {'names' if verdict == 'correct' else 'does not name'} {golden}.\nJudgement: {verdict}"
        if tag == "garbage":
            return self._send(handler, 200, self._completion("I would rather not say."))
        if tag == "reasoning":
            return self._send(handler, 200, self._completion(None, reasoning=f"Thinking about the format.\n{text}"))
        return self._send(handler, 200, self._completion(text))

    @staticmethod
    def _completion(content, reasoning=None, finish="stop"):
        message = {"role": "assistant", "content": content}
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "judge",
                "choices": [{"index": 0, "finish_reason": finish, "message": message}]}

    def _send(self, handler, status, payload, headers=None):
        self._send_raw(handler, status, json.dumps(payload).encode(), "application/json", headers)

    @staticmethod
    def _send_raw(handler, status, data, content_type, headers=None):
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)


@pytest.fixture
def server():
    s = ScriptedChatServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _judge(server, tmp_path, **kwargs):
    options = dict(base_url=server.url, model="judge", api_key_env="SALMONN_PL_TEST_KEY", concurrency=4, max_retries=3,
                   timeout=0.5, cache_dir=str(tmp_path / "cache"), backoff_initial=0.01, backoff_max=0.05)
    return LLMJudge(**{**options, **kwargs})


def _items(responses):
    return [JudgeItem(QUESTION, "(b) sad", r) for r in responses]


def test_failures_are_retried_nothing_is_lost_and_a_second_run_is_cached(server, tmp_path):
    responses = {
        "The speaker is sad.": ("correct", 1),
        "The speaker is happy.": ("incorrect", 1),
        "sad [slowx1]": ("correct", 2),  # first reply arrives after the client timeout
        "sad [e500x2]": ("correct", 3),
        "sad [e429x1]": ("correct", 2),
        "sad [e503x1]": ("correct", 2),
        "happy [htmlx1]": ("incorrect", 2),  # a proxy's error page with status 200
        "sad [cutx1]": ("correct", 2),  # a body cut in the middle
        "sad [reasoning]": ("correct", 1),  # empty content, text in reasoning_content
        "sad [garbage]": ("unjudged", 1),  # a reply without a judgement
    }
    judge = _judge(server, tmp_path)
    judgements = judge.judge_many(_items(responses))

    assert len(judgements) == len(responses)
    for (response, (verdict, attempts)), judgement in zip(responses.items(), judgements):
        assert judgement.verdict == verdict, (response, judgement)
        assert server.attempts[response] == attempts, response
        assert judgement.judge == "llm:judge"
    assert "I would rather not say." in judgements[-1].explanation  # the raw reply is kept
    assert "names sad" in judgements[0].explanation
    assert judge.requests_sent == server.total

    before = server.total
    again = _judge(server, tmp_path).judge_many(_items(responses))
    # every verdict comes from the cache; only the reply without a verdict is asked again
    assert server.total == before + 1 and server.attempts["sad [garbage]"] == 2
    assert again == judgements


def test_a_request_that_keeps_failing_is_unjudged_and_asked_again_next_time(server, tmp_path):
    items = _items(["sad [always500]", "The speaker is sad."])
    first = _judge(server, tmp_path, max_retries=2).judge_many(items)
    assert [j.verdict for j in first] == ["unjudged", "correct"]
    assert "after 3 attempts" in first[0].explanation and "500" in first[0].explanation
    assert server.attempts["sad [always500]"] == 3

    second = _judge(server, tmp_path, max_retries=2).judge_many(items)
    assert [j.verdict for j in second] == ["unjudged", "correct"]
    assert server.attempts["sad [always500]"] == 6  # failures are not cached
    assert server.attempts["The speaker is sad."] == 1


def test_requests_run_concurrently_and_identical_prompts_are_asked_once(server, tmp_path):
    responses = [f"sad, take {i} [slowx1]" for i in range(4)] + ["sad"] * 3
    judgements = _judge(server, tmp_path, concurrency=4).judge_many(_items(responses))
    assert all(j.verdict == "correct" for j in judgements)
    assert server.max_in_flight >= 2
    assert server.attempts["sad"] == 1


def test_an_endpoint_refusing_the_key_is_a_configuration_error(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SALMONN_PL_TEST_KEY", "revoked")
    with pytest.raises(JudgeConfigurationError, match="401"):
        _judge(server, tmp_path).judge_many(_items(["sad"]))
    assert server.total == 0  # the server rejects before counting; nothing retried in a loop


def test_the_judge_survives_pickling_for_spawned_processes(server, tmp_path):
    judge = pickle.loads(pickle.dumps(_judge(server, tmp_path)))
    assert judge.judge(QUESTION, "(b) sad", "sad").verdict == "correct"


def test_cache_is_keyed_by_model_and_prompt(server, tmp_path):
    _judge(server, tmp_path).judge_many(_items(["sad"]))
    _judge(server, tmp_path, model="other-judge").judge_many(_items(["sad"]))
    assert server.attempts["sad"] == 2
    _judge(server, tmp_path).judge_many([JudgeItem(QUESTION, "(a) happy", "sad")])
    assert server.attempts["sad"] == 3


@pytest.mark.parametrize(
    "reply,expected",
    [
        ("Explanation: names sad.\nJudgement: correct", ("correct", "names sad.")),
        ("Explanation: wrong option\nJudgement: Incorrect.", ("incorrect", "wrong option")),
        ("**Explanation:** picks (b).\n**Judgement:** correct", ("correct", "picks (b).")),
        ("Explanation: x\nJudgment: incorrect", ("incorrect", "x")),
        ('I must answer "Judgement: <correct or incorrect>".\nExplanation: fine\nJudgement: correct', ("correct", "fine")),
        ("Judgement: correct", ("correct", "")),
        ("The response is correct.", None),
        ("Judgement: maybe", None),
        # one unambiguous verdict only: the format echoed, both words, contradictions
        ("Explanation: x\nJudgement: <correct or incorrect>", None),
        ("Explanation: x\nJudgement: correct/incorrect", None),
        ("Explanation: x\nJudgement: correct or incorrect", None),
        ('Explanation: x\nJudgement: either "correct" or "incorrect"', None),
        ("Explanation: x\nJudgement: <correct>", None),
        ("Explanation: a\nJudgement: correct\nExplanation: b\nJudgement: incorrect", None),
        ("Judgement: incorrect\nOn reflection: Judgement: correct", None),
        ("Explanation: x\nJudgement: correct\nJudgement: <correct or incorrect>", None),
        ("Explanation: x\nJudgement: not correct", None),
        ("Explanation: x\nJudgement: partially correct", None),
        ("Explanation: x\nJudgement: correct, but the response also names (a)", None),
        ("Explanation: x\nJudgement: incorrect?", None),  # a question is no verdict
        ("Explanation: x\nJudgement: incorrect.", ("incorrect", "x")),
        ("Explanation: x\nJudgement: The response is correct.", None),
        ("Explanation: x\nJudgement: correctly picks (b)", None),
        ("Explanation: x\nJudgement: maybe\nJudgement: correct", None),
        # decoration around one verdict is fine
        ("**Explanation:** picks (a).\n**Judgement:** Incorrect", ("incorrect", "picks (a).")),
        ("Explanation: x\n**Judgement**: **CORRECT**", ("correct", "x")),
        ("Explanation: x\nJudgement: `incorrect`", ("incorrect", "x")),
        ("Explanation: x\nJudgement: [correct]", ("correct", "x")),
        ("Explanation: x\nJudgement: \"correct\"", ("correct", "x")),
        ("Explanation: x\nJudgement: Incorrect - the response picks (a).", ("incorrect", "x")),
        ("Explanation: x\nJudgement: correct\nJudgement: correct", ("correct", "x")),
        ("Explanation: x\nFinal judgement: incorrect", ("incorrect", "x")),
        ("Explanation: picks (b). Judgement: correct", ("correct", "picks (b).")),
        ("", None),
    ],
)
def test_parse_judgement(reply, expected):
    assert parse_judgement(reply) == expected


def test_empty_cut_off_and_echoed_replies_are_unjudged_not_cached_and_asked_again(server, tmp_path):
    responses = ["sad [emptyx1]", "sad [lengthx1]", "sad [echox1]", "sad [garbagex1]"]
    first = _judge(server, tmp_path).judge_many(_items(responses))
    assert [j.verdict for j in first] == ["unjudged"] * 4
    assert "finish_reason=length" in first[1].explanation and "Judgement: corr" in first[1].explanation
    assert "<correct or incorrect>" in first[2].explanation  # the raw reply is kept
    assert all(server.attempts[r] == 1 for r in responses)

    # the next run (e.g. rejudge --only_unjudged) asks again and gets the verdicts
    second = _judge(server, tmp_path).judge_many(_items(responses))
    assert [j.verdict for j in second] == ["correct"] * 4
    assert all(server.attempts[r] == 2 for r in responses)
    third = _judge(server, tmp_path).judge_many(_items(responses))
    assert third == second and all(server.attempts[r] == 2 for r in responses)


def test_a_cut_off_reply_keeps_a_verdict_on_a_finished_line():
    judge = LLMJudge(base_url="http://127.0.0.1:9/v1", cache_dir=None)
    complete = ChatReply("Explanation: picks (b)\nJudgement: correct\nNote: the", "", "length")
    assert judge.read_reply(complete) == ("correct", "picks (b)")
    cut = ChatReply("Explanation: picks (b)\nJudgement: correct", "", "length")
    assert judge.read_reply(cut)[0] == "unjudged"


def test_a_reply_cached_without_a_verdict_is_asked_again(server, tmp_path):
    # a cache written by an earlier version, which stored every reply
    judge = _judge(server, tmp_path)
    item = _items(["sad"])[0]
    request = judge.request_for(item)
    judge.cache.put(_cache_key(request), "judge", json.dumps(request), ChatReply("", "", "length"))
    assert judge.judge_many([item])[0].verdict == "correct"
    assert server.attempts["sad"] == 1


def test_cache_modes_refresh_and_off(server, tmp_path):
    items = _items(["sad"])
    _judge(server, tmp_path).judge_many(items)
    _judge(server, tmp_path).judge_many(items)
    assert server.attempts["sad"] == 1
    _judge(server, tmp_path, cache_mode="refresh").judge_many(items)
    assert server.attempts["sad"] == 2  # asked again, the cache rewritten
    _judge(server, tmp_path, cache_mode="off").judge_many(items)
    _judge(server, tmp_path, cache_mode="off").judge_many(items)
    assert server.attempts["sad"] == 4
    off = _judge(server, tmp_path / "elsewhere", cache_mode="off")
    assert off.cache is None and not (tmp_path / "elsewhere" / "cache").exists()
    with pytest.raises(ValueError, match="cache_mode"):
        _judge(server, tmp_path, cache_mode="sometimes")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("url", [f"http://127.0.0.1:{_closed_port()}/v1", "http://no-such-judge-host.invalid/v1"])
def test_an_endpoint_where_nothing_listens_stops_at_once_with_its_url(tmp_path, url):
    judge = LLMJudge(base_url=url, model="judge", concurrency=4, max_retries=5, timeout=5.0,
                     cache_dir=str(tmp_path / "cache"), backoff_initial=1.0)
    start = time.monotonic()
    with pytest.raises(JudgeEndpointUnreachable) as raised:
        judge.judge_many(_items([f"answer {i}" for i in range(20)]))
    assert time.monotonic() - start < 5.0
    assert url in str(raised.value)
    assert isinstance(raised.value, JudgeConfigurationError)
    assert judge.requests_sent == 1  # not 6 attempts for each of 20 questions
