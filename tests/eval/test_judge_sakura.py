"""SakuraJudge against what the SAKURA release's own judge sent, wrote and printed
(../shared/sakura-judge): byte-identical requests, the same judgements, the same accuracies."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.helpers.golden import SHARED

from salmonn_pl.eval.evaluator import judge_records
from salmonn_pl.eval.judge_rule import JudgeItem
from salmonn_pl.eval.judge_sakura import SakuraJudge, official_judgement, official_verdict
from salmonn_pl.eval.metrics import count_slices
from salmonn_pl.eval.predictions import make_record, sakura_key, write_sakura_results

RECORDED = SHARED / "sakura-judge"
pytestmark = pytest.mark.skipif(not RECORDED.is_dir(), reason=f"no recorded SAKURA judge at {RECORDED}")


def _recorded_requests() -> list[dict]:
    return [json.loads(line) for line in (RECORDED / "official_requests.jsonl").read_text(encoding="utf-8").splitlines()]


def _inputs() -> list[tuple[str, str, dict]]:
    """(result file stem, key, entry) for the 40 inputs, in the order the release's judge ran them."""
    inputs = []
    for path in sorted((RECORDED / "responses").glob("*.json")):
        for key, entry in json.loads(path.read_text(encoding="utf-8"))["results"].items():
            inputs.append((path.stem, key, entry))
    return inputs


def _wire(body: dict) -> bytes:
    # How the openai client serialises a request body (compact UTF-8 JSON, keys in order).
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class ReplayServer:
    """An OpenAI-compatible endpoint that answers each recorded request with its recorded reply
    and keeps the raw bodies it received."""

    def __init__(self, recorded: list[dict]):
        self.replies = {json.dumps(r["request"], sort_keys=True): r["reply"] for r in recorded}
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with server.lock:
                    server.bodies.append(raw)
                reply = server.replies.get(json.dumps(json.loads(raw), sort_keys=True))
                if reply is None:
                    status, payload = 400, {"error": {"message": "not a recorded request"}}
                else:
                    status, payload = 200, {"id": "x", "object": "chat.completion", "created": 0, "model": "gpt-4o-2024-11-20",
                                            "choices": [{"index": 0, "finish_reason": "stop",
                                                         "message": {"role": "assistant", "content": reply}}]}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/v1"


@pytest.fixture
def server():
    s = ReplayServer(_recorded_requests())
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _judge(server, tmp_path, **kwargs) -> SakuraJudge:
    return SakuraJudge(**{"base_url": server.url, "cache_dir": str(tmp_path / "cache"), "concurrency": 4,
                          "max_retries": 1, "timeout": 10.0, **kwargs})


def test_request_bodies_are_the_releases_byte_for_byte(server, tmp_path):
    recorded = _recorded_requests()
    inputs = _inputs()
    assert len(inputs) == len(recorded) == 40
    judge = _judge(server, tmp_path, cache_mode="off", concurrency=1)
    for (_, _, entry), official in zip(inputs, recorded):
        ours = judge.request_for(JudgeItem(entry["instruction"], entry["label"], entry["response"]))
        assert ours == official["request"]
        assert json.dumps(ours, ensure_ascii=False) == json.dumps(official["request"], ensure_ascii=False)  # key order
        assert "max_tokens" not in ours and (ours["model"], ours["temperature"], ours["top_p"]) == ("gpt-4o-2024-11-20", 0.0, 0.9)

    # what reaches the endpoint, through the openai client, in order
    judge.judge_many([JudgeItem(e["instruction"], e["label"], e["response"]) for _, _, e in inputs])
    assert server.bodies == [_wire(r["request"]) for r in recorded]


def test_verdicts_and_texts_are_the_releases(server, tmp_path):
    inputs = _inputs()
    judgements = _judge(server, tmp_path).judge_many([JudgeItem(e["instruction"], e["label"], e["response"]) for _, _, e in inputs])
    recorded = _recorded_requests()
    checked = 0
    for (stem, key, _), judgement, official in zip(inputs, judgements, recorded):
        written = json.loads((RECORDED / "official_judgements" / f"{stem}_judgements.json").read_text(encoding="utf-8"))
        entry = written["results"][key]
        # the release's reading of the reply, string for string
        assert official_judgement(official["reply"]) == (entry["Explanation"], entry["Judgement"])
        assert judgement.verdict == official_verdict(entry["Judgement"]), (key, official["reply"])
        assert judgement.judge == "sakura:gpt-4o-2024-11-20"
        if judgement.verdict == "unjudged":
            assert official["reply"] in judgement.explanation  # listed with the raw reply, never guessed
        else:
            assert judgement.explanation == entry["Explanation"]
        checked += 1
    assert checked == 40
    verdicts = [j.verdict for j in judgements]
    assert verdicts.count("correct") == 8 and verdicts.count("incorrect") == 12 and verdicts.count("unjudged") == 20

    # replies with a verdict are cached, the others asked again
    before = len(server.bodies)
    _judge(server, tmp_path).judge_many([JudgeItem(e["instruction"], e["label"], e["response"]) for _, _, e in inputs])
    assert len(server.bodies) - before == 20


def _official_accuracy_report() -> dict[str, dict]:
    """calculate_acc.py's printout per judgements file: invalid keys and the counts it printed."""
    report: dict[str, dict] = {}
    current = None
    for line in (RECORDED / "official_calculate_acc.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("== "):
            current = report.setdefault(line[3:].replace("_judgements.json", ""), {"invalid": []})
        elif line.startswith("Invalid judgement for key: "):
            current["invalid"].append(line.split(": ", 1)[1])
        elif ": " in line:
            name, value = line.split(": ", 1)
            current[name] = value
    return report


def test_accuracies_follow_from_our_counts_as_calculate_acc_prints_them(server, tmp_path):
    records = []
    for stem, key, entry in _inputs():
        track, _, hop = stem.split("_")
        meta = {"track": track, "hop": hop, "file": Path(key).name, "instruction": entry["instruction"],
                "answer": entry["label"].strip(), "answer_verbatim": entry["label"], "variant": "original"}
        records.append(make_record(f"{track}/{hop}/{Path(key).name}", meta, entry["response"]))
    judged = judge_records(_judge(server, tmp_path), records)
    report = _official_accuracy_report()
    counts = {f"{c.key.track}_salmonn_{c.key.hop}": c for c in count_slices(judged)}
    assert sorted(counts) == sorted(report) and len(report) == 8
    for stem, official in report.items():
        ours = counts[stem]
        assert f"{ours.correct}" == official["Correct count"]
        assert f"{ours.incorrect}" == official["Incorrect count"]
        assert f"{ours.questions}" == official["Total count"]
        assert f"{ours.accuracy:.2f}%" == official["Accuracy"]  # invalid judgements count in the total
        unjudged = [sakura_key(r) for r in judged if r["judgement"] == "unjudged" and f"{r['track']}_salmonn_{r['hop']}" == stem]
        assert unjudged == official["invalid"]

    # the run's own sakura_results files are the release judge's inputs, byte for byte in content
    written = write_sakura_results(judged, tmp_path / "sakura_results")
    for path in written:
        ours = json.loads(path.read_text(encoding="utf-8"))
        assert ours == json.loads((RECORDED / "responses" / path.name).read_text(encoding="utf-8"))


def test_the_release_reading_of_edge_replies():
    assert official_judgement("Explanation: a\nb\nJudgement: correct\n\nmore") == ("a\nb", "correct")
    assert official_judgement("Explanation: a\nJudgment: correct")[1] == "No extracted judgement"
    assert official_verdict(" Incorrect\n") == "incorrect"
    assert official_verdict("Correct.") == official_verdict('"correct"') == "unjudged"
    assert official_verdict("No extracted judgement") == "unjudged"
