"""The package as a whole: every module imports on its own, and the command's entry point is
callable in-process."""

import importlib
import pkgutil

import pytest

import pipeline
from pipeline.cli import main

MODULES = sorted(m.name for m in pkgutil.walk_packages(pipeline.__path__, "pipeline."))


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    assert importlib.import_module(name).__name__ == name


def test_main_returns_exit_codes_in_process(capsys, tmp_path):
    """main(argv) -> int: 0 on success, 2 on a usage mistake or bad input, one error line each."""
    assert main(["--help"]) == 0 and "aepipe train builtin:digits" in capsys.readouterr().out
    assert main(["encodee"]) == 2
    assert capsys.readouterr().err.startswith("aepipe: error: No such command")
    assert main(["info", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aepipe: error:") and "no such file" in err and err.count("\n") == 1


# The layers, top to bottom: a module imports modules of its own layer or of layers below it,
# never above. Imports inside functions count too.
LAYERS = {
    "api": {"pipeline"},  # the package's own names (load_codes, AutoencoderFeatures, AepipeError)
    "cli": {"pipeline.cli"},
    "flows": {"pipeline.demo", "pipeline.tune"},  # commands that run other jobs: the demo, tuning's trials
    "jobs": {"pipeline.batch.encode", "pipeline.batch.decode", "pipeline.batch.reconstruct", "pipeline.batch.append",
             "pipeline.train", "pipeline.report", "pipeline.submit"},
    "engine": {"pipeline.batch", "pipeline.batch.engine", "pipeline.batch.actors", "pipeline.batch.rows",
               "pipeline.runtime"},
    "parts": {"pipeline.stores", "pipeline.stores.read", "pipeline.stores.write", "pipeline.stores.raydata",
              "pipeline.stores.bitstreams", "pipeline.bitstream", "pipeline.models", "pipeline.pca",
              "pipeline.run", "pipeline.normalize", "pipeline.scores", "pipeline.remote", "pipeline.checks",
              "pipeline.sources", "pipeline.sources.arrays", "pipeline.sources.csv", "pipeline.sources.images",
              "pipeline.sources.parquet", "pipeline.evaluate", "pipeline.features"},
    "base": {"pipeline.errors", "pipeline.version"},
}
RANK = {m: i for i, mods in enumerate(LAYERS.values()) for m in mods}


def package_imports(root=None) -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in its file (functions included)."""
    import ast
    from pathlib import Path

    root = Path(root or pipeline.__path__[0])
    files = {".".join(("pipeline", *f.relative_to(root).with_suffix("").parts)).removesuffix(".__init__"): f
             for f in root.rglob("*.py")}
    graph = {}
    for name, f in files.items():
        found = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                          for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("pipeline")}
        graph[name] = found - {name}
    return graph


def layer_problems(graph) -> list[str]:
    problems = [f"{m} is in no layer" for m in graph if m not in RANK]
    for m, deps in graph.items():
        for d in deps:
            if m in RANK and d in RANK and RANK[d] < RANK[m]:
                problems.append(f"{m} imports {d}, a layer above it")
            elif RANK.get(m) == RANK.get(d) == RANK["pipeline.batch.encode"]:
                problems.append(f"{m} imports {d}: jobs stand on the engine, not on each other")
    return problems


def cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, found = {}, {}, [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                comp.append(stack.pop())
                if comp[-1] == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_imports_go_down_the_layers_and_never_round():
    graph = package_imports()
    assert set(graph) == set(MODULES) | {"pipeline"}
    assert layer_problems(graph) == []
    assert cycles(graph) == []
    assert {d for d in graph["pipeline.train"] if RANK.get(d) == RANK["pipeline.batch.encode"]} == set()  # no batch job


def test_the_layer_check_catches_an_upward_import_and_a_cycle():
    graph = package_imports()
    graph["pipeline.stores.read"] = graph["pipeline.stores.read"] | {"pipeline.batch.rows"}
    assert "pipeline.stores.read imports pipeline.batch.rows, a layer above it" in layer_problems(graph)
    assert any("pipeline.stores.read" in c and "pipeline.batch.rows" in c for c in cycles(graph))
    graph["pipeline.batch.decode"] = graph["pipeline.batch.decode"] | {"pipeline.batch.reconstruct"}
    assert "pipeline.batch.decode imports pipeline.batch.reconstruct: jobs stand on the engine, not on each other" \
        in layer_problems(graph)
