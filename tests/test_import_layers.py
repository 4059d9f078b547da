"""The packages import only downwards: audio -> data -> model -> generation -> eval/training/probes -> CLI."""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _import_graph():
    """scripts/import_graph.py as a module (registered first: its dataclasses look their module up)."""
    if "import_graph" not in sys.modules:
        spec = importlib.util.spec_from_file_location("import_graph", REPO_ROOT / "scripts" / "import_graph.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["import_graph"] = module
        spec.loader.exec_module(module)
    return sys.modules["import_graph"]


def test_no_import_runs_up_the_layers(capsys):
    assert _import_graph().main([]) == 0, capsys.readouterr().err
    assert "graph BT" in capsys.readouterr().out


def _package(root: Path, files: dict[str, str]) -> Path:
    src = root / "salmonn_pl"
    for name, code in files.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
    return src


@pytest.mark.parametrize(
    "files, message",
    [
        ({"data/load.py": "def f():\n    from salmonn_pl.model.salmonn import Salmonn\n"},
         "data/load.py:2: data (data) imports model (model): up the layers"),
        ({"audio/fbank.py": "import salmonn_pl.data.collate\n"}, "audio/fbank.py:1: audio (audio) imports data"),
        ({"eval/judge.py": "from salmonn_pl.training import objectives\n"},
         "eval/judge.py:1: eval (uses) imports training (uses): between peers of one layer"),
        ({"newpkg/x.py": "from salmonn_pl.data import collate\n"}, "newpkg is in no layer"),
    ],
)
def test_an_upward_import_fails_the_check(tmp_path, capsys, files, message):
    src = _package(tmp_path, {"model/salmonn.py": "from salmonn_pl.data.collate import Example\n", **files})
    assert _import_graph().main(["--src", str(src)]) == 1
    assert message in capsys.readouterr().err


def test_downward_imports_pass(tmp_path, capsys):
    src = _package(tmp_path, {"generation/g.py": "from salmonn_pl.model import salmonn\nimport salmonn_pl.audio.load\n",
                              "cli.py": "from salmonn_pl.lit_module import SalmonnModule\n"})
    assert _import_graph().main(["--src", str(src), "--format", "text"]) == 0
    out = capsys.readouterr().out
    assert "generation      -> audio (1), model (1)" in out and "cli             -> lit_module (1)" in out
