"""The judge presets in configs/judge/ compose with a run config in `salmonn-pl` and are taken by
`salmonn-pl-eval rejudge --judge_config`."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.helpers.eval_records import synthetic_records

from salmonn_pl.cli import build_cli
from salmonn_pl.eval.commands import expand_judge_config, main
from salmonn_pl.eval.judge_llm import LLMJudge
from salmonn_pl.eval.judge_sakura import SakuraJudge
from salmonn_pl.eval.predictions import PREDICTIONS_FILE, read_predictions, write_jsonl

REPO = Path(__file__).resolve().parents[2]
PRESETS = {"sakura_gpt4o.yaml": SakuraJudge, "gpt_oss_20b.yaml": LLMJudge}


class VerdictServer:
    """An OpenAI-compatible endpoint that judges every answer correct and counts the requests."""

    def __init__(self, empty_replies: int = 0):
        self.bodies = []
        self.empty_replies = empty_replies  # the first replies carry no text (a failing server)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                empty = len(server.bodies) <= server.empty_replies
                message = {"role": "assistant", "content": "" if empty else "Explanation: fine\nJudgement: correct"}
                data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                   "choices": [{"index": 0, "finish_reason": "stop", "message": message}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_port}/v1"


@pytest.fixture
def server():
    s = VerdictServer()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_the_sakura_preset_is_the_papers_judge(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    cli = build_cli(["--config", str(REPO / "configs" / "demo.yaml"), "--config", str(REPO / "configs" / "judge" / "sakura_gpt4o.yaml"),
                     "--model.judge.init_args.cache_dir", str(tmp_path / "cache"), "--model.output_dir", str(tmp_path / "out"),
                     "--trainer.logger", "false"], run=False)
    judge = cli.model.judge
    assert isinstance(judge, SakuraJudge)
    assert (judge.base_url, judge.model, judge.cache_mode) == (None, "gpt-4o-2024-11-20", "use")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_composes_with_a_run_config_and_takes_overrides(preset, tmp_path):
    cli = build_cli(["--config", str(REPO / "configs" / "demo.yaml"), "--config", str(REPO / "configs" / "judge" / preset),
                     "--model.judge.init_args.base_url", "http://localhost:8000/v1",
                     "--model.judge.init_args.cache_dir", str(tmp_path / "cache"), "--model.output_dir", str(tmp_path / "out"),
                     "--trainer.logger", "false"], run=False)
    judge = cli.model.judge
    assert type(judge) is PRESETS[preset]
    assert judge.base_url == "http://localhost:8000/v1" and judge.cache_dir == str(tmp_path / "cache")
    if preset == "gpt_oss_20b.yaml":
        assert (judge.model, judge.reasoning_effort) == ("openai/gpt-oss-20b", "low")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_rejudge_takes_each_preset(preset, server, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = synthetic_records(n_clips=1, variants=("original",))
    write_jsonl(run / PREDICTIONS_FILE, records)
    main(["rejudge", "--predictions", str(run), "--output", str(tmp_path / "rejudged"),
          "--judge_config", str(REPO / "configs" / "judge" / preset),
          "--judge.init_args.base_url", server.url, "--judge.init_args.cache_dir", str(tmp_path / "cache")])
    rejudged = read_predictions(tmp_path / "rejudged")
    name = "sakura:gpt-4o-2024-11-20" if preset == "sakura_gpt4o.yaml" else "llm:openai/gpt-oss-20b"
    assert {r["judge"] for r in rejudged} == {name}
    assert {r["judgement"] for r in rejudged} == {"correct"}
    assert len(server.bodies) == len(records)
    assert {b["model"] for b in server.bodies} == {name.split(":", 1)[1]}


def test_a_file_that_is_no_judge_preset_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  decoder: Generate\n")
    with pytest.raises(ValueError, match="bad.yaml: expected model.judge.class_path"):
        expand_judge_config(["rejudge", "--judge_config", str(bad)])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        expand_judge_config([f"--judge_config={tmp_path / 'missing.yaml'}"])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_documented_sakura_command_parses(preset, capsys):
    import yaml

    with pytest.raises(SystemExit) as done:
        build_cli(["test", "--config", str(REPO / "configs" / "sakura_eval.yaml"), "--config", str(REPO / "configs" / "judge" / preset),
                   "--model.judge.init_args.base_url", "http://localhost:8000/v1", "--print_config"])
    assert done.value.code in (0, None)
    judge = yaml.safe_load(capsys.readouterr().out)["model"]["judge"]
    assert judge["class_path"].endswith(PRESETS[preset].__name__)
    assert judge["init_args"]["base_url"] == "http://localhost:8000/v1"


def test_rejudge_only_unjudged_asks_again_what_a_failing_server_left_unjudged(tmp_path):
    records = synthetic_records(n_clips=1, variants=("original",))
    server = VerdictServer(empty_replies=len(records))
    try:
        run = tmp_path / "run"
        run.mkdir()
        write_jsonl(run / PREDICTIONS_FILE, records)
        preset = ["--judge_config", str(REPO / "configs" / "judge" / "gpt_oss_20b.yaml"),
                  "--judge.init_args.base_url", server.url, "--judge.init_args.cache_dir", str(tmp_path / "cache")]
        main(["rejudge", "--predictions", str(run), "--output", str(tmp_path / "first"), *preset])
        assert {r["judgement"] for r in read_predictions(tmp_path / "first")} == {"unjudged"}
        main(["rejudge", "--predictions", str(tmp_path / "first"), "--output", str(tmp_path / "second"),
              "--only_unjudged", "true", *preset])
        assert len(server.bodies) == 2 * len(records)  # nothing was cached from the empty replies
        assert {r["judgement"] for r in read_predictions(tmp_path / "second")} == {"correct"}
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
