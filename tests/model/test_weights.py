"""Weights named by Hugging Face repo id, ``hf://`` file and URL resolve through huggingface_hub's
cache, work offline once cached, and fail at once, with the fetch command, when they are not."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from huggingface_hub import constants

from tests.helpers.cli_runs import responses, run_test, write_config

from salmonn_pl.model import weights
from tests.helpers.hub_cache import COMMIT, add_to_hub_cache, dir_files
from salmonn_pl.model.weights import WeightsUnavailableError, parse_weight_name, resolve_weight


class CountingServer:
    """A loopback HTTP server for one file; counts the GET requests it answers."""

    def __init__(self, payload: bytes, name: str = "BEATs_tiny.pt"):
        self.payload, self.requests = payload, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.payload)))
                self.end_headers()
                self.wfile.write(outer.payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/share/{name}?sv=2020&sig=abc%3D"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def beats_server(tiny_files):
    server = CountingServer(Path(tiny_files["beats_path"]).read_bytes())
    yield server
    server.close()


def test_names_are_classified_and_an_existing_path_wins(tmp_path, monkeypatch):
    assert parse_weight_name("openai/whisper-large-v2").scheme == "repo"
    named = parse_weight_name("lmsys/vicuna-13b-v1.1@abc123")
    assert (named.scheme, named.value, named.revision) == ("repo", "lmsys/vicuna-13b-v1.1", "abc123")
    file = parse_weight_name("hf://tsinghua-ee/SALMONN/sub/salmonn_v1.pth@v1")
    assert (file.scheme, file.value, file.filename, file.revision) == ("hf_file", "tsinghua-ee/SALMONN", "sub/salmonn_v1.pth", "v1")
    url = parse_weight_name("https://host/a/b.pt?x=1#sha256=" + "AB" * 32)
    assert (url.scheme, url.value, url.sha256) == ("url", "https://host/a/b.pt?x=1", "ab" * 32)
    assert parse_weight_name("/models/vicuna").scheme == "path"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "openai" / "whisper-large-v2").mkdir(parents=True)
    assert parse_weight_name("openai/whisper-large-v2").scheme == "path"
    with pytest.raises(ValueError, match="sha256"):
        parse_weight_name("https://host/b.pt#md5=00")


def test_a_field_gets_the_kind_of_name_it_holds(hf_home):
    with pytest.raises(ValueError, match=r"ckpt: 'tsinghua-ee/SALMONN' names a repository.*hf://tsinghua-ee/SALMONN/<file>"):
        resolve_weight("tsinghua-ee/SALMONN", "ckpt", "file")
    with pytest.raises(ValueError, match="llm_path: .* names one file"):
        resolve_weight("hf://tsinghua-ee/SALMONN/salmonn_v1.pth", "llm_path", "dir")
    with pytest.raises(ValueError, match="plain http is accepted only from this machine"):
        resolve_weight("http://example.com/beats.pt", "beats_path", "file")


def test_url_is_downloaded_once_and_then_served_from_the_cache(hf_home, beats_server, tiny_files):
    digest = hashlib.sha256(beats_server.payload).hexdigest()
    first = resolve_weight(f"{beats_server.url}#sha256={digest}", "beats_path", "file")
    again = resolve_weight(beats_server.url, "beats_path", "file")
    assert first == again and Path(first).name == "BEATs_tiny.pt"
    assert Path(first).read_bytes() == beats_server.payload
    assert Path(first).is_relative_to(hf_home / "assets" / "salmonn-pl" / "urls")
    assert beats_server.requests == 1


def test_url_with_the_wrong_sha256_is_an_error_and_is_not_cached(hf_home, beats_server):
    with pytest.raises(ValueError, match=r"beats_path: the file at http://127\.0\.0\.1.* does not have sha256 0{64}"):
        resolve_weight(f"{beats_server.url}#sha256={'0' * 64}", "beats_path", "file")
    assert not weights.url_cache_path(beats_server.url).exists()
    digest = hashlib.sha256(beats_server.payload).hexdigest()
    assert Path(resolve_weight(f"{beats_server.url}#sha256={digest}", "beats_path", "file")).is_file()
    assert beats_server.requests == 2


def test_names_not_cached_offline_fail_before_anything_loads(hf_home, tiny_files, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    import salmonn_pl.model.salmonn as salmonn_module

    loaded = []
    monkeypatch.setattr(salmonn_module, "load_llm", lambda *a, **k: loaded.append("llm"))
    monkeypatch.setattr(salmonn_module, "SalmonnTokenizer", lambda *a, **k: loaded.append("tokenizer"))
    config = write_config(tmp_path / "offline.yaml", {**tiny_files, "llm_path": "lmsys/vicuna-13b-v1.1"}, tmp_path / "out")
    with pytest.raises(WeightsUnavailableError) as error:
        run_test(config)
    message = str(error.value)
    assert message.startswith("llm_path: 'lmsys/vicuna-13b-v1.1' is not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE is set" in message and "hf download lmsys/vicuna-13b-v1.1" in message
    assert "nor is it a local path" in message
    assert loaded == [] and not (tmp_path / "out" / "predictions.jsonl").exists()

    with pytest.raises(WeightsUnavailableError, match=r"ckpt: 'hf://tsinghua-ee/SALMONN/salmonn_v1.pth@v2'(?s:.*)hf download tsinghua-ee/SALMONN salmonn_v1.pth --revision v2"):
        resolve_weight("hf://tsinghua-ee/SALMONN/salmonn_v1.pth@v2", "ckpt", "file")
    with pytest.raises(WeightsUnavailableError, match=r"beats_path: 'https://valle.blob.core.windows.net/b.pt'(?s:.*)HF_HUB_OFFLINE"):
        resolve_weight("https://valle.blob.core.windows.net/b.pt", "beats_path", "file")


@pytest.mark.slow
def test_a_run_naming_every_weight_offline_equals_the_run_with_local_paths(tiny_files, beats_server, tmp_path, monkeypatch):
    """`salmonn-pl test` with HF_HUB_OFFLINE=1 and HF_HOME at a prepared cache, as on a cluster
    without network: repo ids for the directories, hf:// for the checkpoint, the URL for BEATs."""
    home = tmp_path / "hf-home"
    add_to_hub_cache(home / "hub", "lmsys/vicuna-tiny", dir_files(Path(tiny_files["llm_path"])))
    add_to_hub_cache(home / "hub", "openai/whisper-tiny-test", dir_files(Path(tiny_files["whisper_path"])))
    add_to_hub_cache(home / "hub", "tsinghua-ee/SALMONN-tiny", {"salmonn_v1.pth": Path(tiny_files["ckpt"])})
    # The URL is fetched once (online, into this home's assets cache), then the run is offline.
    monkeypatch.setattr(constants, "HF_ASSETS_CACHE", str(home / "assets"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    resolve_weight(beats_server.url, "beats_path", "file")
    named = {
        "llm_path": "lmsys/vicuna-tiny",
        "whisper_path": f"openai/whisper-tiny-test@{COMMIT}",
        "beats_path": beats_server.url,
        "ckpt": "hf://tsinghua-ee/SALMONN-tiny/salmonn_v1.pth",
    }
    by_name = write_config(tmp_path / "named.yaml", named, tmp_path / "named", limit=2)
    by_path = write_config(tmp_path / "paths.yaml", tiny_files, tmp_path / "paths", limit=2)
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HF_ASSETS_CACHE", None)
    done = subprocess.run([sys.executable, "-m", "salmonn_pl.cli", "test", "--config", str(by_name)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    run_test(by_path)
    assert responses(tmp_path / "named") == responses(tmp_path / "paths") and len(responses(tmp_path / "paths")) == 4
    assert beats_server.requests == 1


def test_prefetch_of_a_config_resolves_each_weight_it_names(hf_home, tiny_files, tmp_path, monkeypatch, capsys):
    add_to_hub_cache(hf_home / "hub", "lmsys/vicuna-tiny", dir_files(Path(tiny_files["llm_path"])))
    add_to_hub_cache(hf_home / "hub", "tsinghua-ee/SALMONN-tiny", {"salmonn_v1.pth": Path(tiny_files["ckpt"])})
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({"model": {"model": {
        "llm_path": "lmsys/vicuna-tiny", "whisper_path": str(tiny_files["whisper_path"]),
        "ckpt": "hf://tsinghua-ee/SALMONN-tiny/salmonn_v1.pth"}}}))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    weights.main(["--config", str(config)])
    printed = capsys.readouterr().out.splitlines()
    snapshots = hf_home / "hub" / "models--lmsys--vicuna-tiny" / "snapshots" / COMMIT
    assert f"{config}: llm_path: lmsys/vicuna-tiny -> {snapshots}" in printed
    assert any(line.endswith(f"models--tsinghua-ee--SALMONN-tiny/snapshots/{COMMIT}/salmonn_v1.pth") for line in printed)
    assert len(printed) == 3
