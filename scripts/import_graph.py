"""The package-level import graph of ``src/salmonn_pl``, and a check that no import runs up the layers.

Layers, bottom to top (a package may import its own layer's package and those below, nothing above;
packages sharing a layer do not import each other)::

    base        settings_check, json_values (plain helpers every layer may use)
    audio       audio/ (reading audio, Whisper log-mel, Kaldi fbank)
    data        data/
    model       model/
    generation  generation/
    uses        eval/, training/, probes/
    top         lit_module, cli, cli_settings, callbacks, probe_cli

    python scripts/import_graph.py              # the graph as mermaid; exit 1 on an upward import
    python scripts/import_graph.py --format text

Every ``import``/``from ... import`` counts, function-local ones included (they still couple the
packages).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "salmonn_pl"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("settings_check", "json_values")),
    ("audio", ("audio",)),
    ("data", ("data",)),
    ("model", ("model",)),
    ("generation", ("generation",)),
    ("uses", ("eval", "training", "probes")),
    ("top", ("lit_module", "cli", "cli_settings", "callbacks", "probe_cli")),
]
# Top-level modules may import one another (the CLI is built from the module); packages of one layer may not.
PEERS_MAY_IMPORT = {"base", "top"}
RANK = {unit: rank for rank, (_, units) in enumerate(LAYERS) for unit in units}
LAYER_OF = {unit: name for name, units in LAYERS for unit in units}


@dataclass(frozen=True)
class Import:
    source: str  # the importing package (or top-level module)
    target: str
    where: str  # path:line


def unit_of(module: str) -> str | None:
    """``salmonn_pl.data.collate`` -> ``data``; ``salmonn_pl.cli`` -> ``cli``; other packages -> None."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2:
        return None
    return parts[1]


def imports(src: Path = SRC) -> list[Import]:
    found = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        source = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if source == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # ``from salmonn_pl import x`` names a unit by its imported name.
                names = [f"{node.module}.{a.name}" for a in node.names] if node.module == PACKAGE else [node.module]
            else:
                continue
            for name in names:
                target = unit_of(name)
                if target is not None and target != source:
                    found.append(Import(source, target, f"{path.relative_to(src.parents[1])}:{node.lineno}"))
    return found


def violations(found: list[Import]) -> list[str]:
    """Imports of a unit above the importer's layer, or of a peer package of the same layer."""
    bad = []
    for imp in found:
        for unit in (imp.source, imp.target):
            if unit not in RANK:
                bad.append(f"{imp.where}: {unit} is in no layer (add it to LAYERS in scripts/import_graph.py)")
        if imp.source not in RANK or imp.target not in RANK:
            continue
        up = RANK[imp.target] > RANK[imp.source]
        peer = RANK[imp.target] == RANK[imp.source] and LAYER_OF[imp.source] not in PEERS_MAY_IMPORT
        if up or peer:
            kind = "up the layers" if up else "between peers of one layer"
            bad.append(f"{imp.where}: {imp.source} ({LAYER_OF[imp.source]}) imports {imp.target} "
                       f"({LAYER_OF[imp.target]}): {kind}")
    return bad


def edges(found: list[Import]) -> Counter:
    return Counter((imp.source, imp.target) for imp in found)


def mermaid(found: list[Import]) -> str:
    lines = ["graph BT"]
    for name, units in LAYERS:
        lines.append(f"  subgraph layer_{name} [{name}]")
        lines += [f"    {unit}" for unit in units]
        lines.append("  end")
    for (source, target), n in sorted(edges(found).items(), key=lambda e: (RANK.get(e[0][0], -1), e[0])):
        lines.append(f"  {source} -->|{n}| {target}")
    return "\n".join(lines)


def text(found: list[Import]) -> str:
    by_source: dict[str, list[str]] = {}
    for (source, target), n in sorted(edges(found).items()):
        by_source.setdefault(source, []).append(f"{target} ({n})")
    lines = []
    for name, units in reversed(LAYERS):
        lines.append(f"{name}:")
        for unit in units:
            lines.append(f"  {unit:<15} -> {', '.join(by_source.get(unit, [])) or '-'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=("mermaid", "text"), default="mermaid")
    parser.add_argument("--src", type=Path, default=SRC, help="the salmonn_pl package directory")
    args = parser.parse_args(argv)
    found = imports(args.src)
    print(mermaid(found) if args.format == "mermaid" else text(found))
    bad = violations(found)
    for line in bad:
        print(f"error: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
