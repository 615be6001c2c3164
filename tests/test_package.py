"""The package as a whole: every module imports on its own, and the command's entry point is
callable in-process."""

import importlib
import pkgutil

import pytest

import aepipe
from aepipe.cli import main

MODULES = sorted(m.name for m in pkgutil.walk_packages(aepipe.__path__, "aepipe."))


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
    # the package's own names (load_codes, AutoencoderFeatures, AepipeError); the transformer trains
    # through the train job, as a user's script would
    "api": {"aepipe", "aepipe.analysis.features"},
    "cli": {"aepipe.cli", "aepipe.cli.__main__", "aepipe.cli.train_commands",
            "aepipe.cli.batch_commands", "aepipe.cli.analysis_commands", "aepipe.cli.cluster_commands",
            "aepipe.cli.options", "aepipe.cli.defaults", "aepipe.cli.output"},
    # a job that runs others (append runs encode; demo, train/encode/decode; tune, train) is handed them
    # by the command line, so no job module imports another
    "jobs": {"aepipe.batch.encode", "aepipe.batch.decode", "aepipe.batch.reconstruct", "aepipe.batch.append",
             "aepipe.training", "aepipe.analysis.report", "aepipe.cluster.submit", "aepipe.analysis.demo",
             "aepipe.cluster.tune", "aepipe.export"},
    # what the jobs stand on; the train job (aepipe.training) on its own loop, drivers and run dir
    "engine": {"aepipe.batch", "aepipe.batch.engine", "aepipe.batch.actors", "aepipe.batch.rows",
               "aepipe.cluster.runtime", "aepipe.training.config", "aepipe.training.state", "aepipe.training.loop",
               "aepipe.training.data", "aepipe.training.local", "aepipe.training.on_ray", "aepipe.training.rundir"},
    "parts": {"aepipe.cluster.ray_workarounds", "aepipe.stores", "aepipe.stores.read", "aepipe.stores.staging", "aepipe.stores.raydata",
              "aepipe.stores.zarr_sink", "aepipe.stores.parquet_sink", "aepipe.stores.png_sink", "aepipe.stores.ids_index", "aepipe.stores.quantize",
              "aepipe.stores.bitstreams", "aepipe.bitstream", "aepipe.models", "aepipe.pca",
              "aepipe.models.base", "aepipe.models.dense", "aepipe.models.vae", "aepipe.models.conv",
              "aepipe.models.recurrent", "aepipe.models.compress", "aepipe.models.hyperprior", "aepipe.models.context",
              "aepipe.run", "aepipe.statefile", "aepipe.normalize", "aepipe.scores", "aepipe.remote", "aepipe.checks",
              "aepipe.sources", "aepipe.sources.arrays", "aepipe.sources.csv", "aepipe.sources.images",
              "aepipe.sources.parquet", "aepipe.sources.csv_rows", "aepipe.sources.dataset", "aepipe.analysis.metrics",
              "aepipe.analysis.codec_quality"},
    "base": {"aepipe.errors", "aepipe.version", "aepipe.config", "aepipe.analysis", "aepipe.cluster"},
}
RANK = {m: i for i, mods in enumerate(LAYERS.values()) for m in mods}


def package_imports(root=None) -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in its file (functions included)."""
    import ast
    from pathlib import Path

    root = Path(root or aepipe.__path__[0])
    files = {".".join(("aepipe", *f.relative_to(root).with_suffix("").parts)).removesuffix(".__init__"): f
             for f in root.rglob("*.py")}
    graph = {}
    for name, f in files.items():
        found = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aepipe"):
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                          for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("aepipe")}
        graph[name] = found - {name}
    return graph


def layer_problems(graph) -> list[str]:
    problems = [f"{m} is in no layer" for m in graph if m not in RANK]
    for m, deps in graph.items():
        for d in deps:
            if m in RANK and d in RANK and RANK[d] < RANK[m]:
                problems.append(f"{m} imports {d}, a layer above it")
            elif RANK.get(m) == RANK.get(d) == RANK["aepipe.batch.encode"]:
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
    assert set(graph) == set(MODULES) | {"aepipe"}
    assert layer_problems(graph) == []
    assert cycles(graph) == []
    assert {d for d in graph["aepipe.training"] if RANK.get(d) == RANK["aepipe.batch.encode"]} == set()  # no batch job


def longest_chain(graph) -> list[str]:
    """The longest path of imports from any module down (a cycle, which the test above reports, is cut)."""
    memo, open_ = {}, set()

    def down(m):
        if m in open_:
            return []
        if m not in memo:
            open_.add(m)
            memo[m] = [m] + max((down(d) for d in graph.get(m, ())), key=len, default=[])
            open_.discard(m)
        return memo[m]

    return max((down(m) for m in graph), key=len)


def test_no_import_chain_is_longer_than_eight_modules():
    """`python -m aepipe.cli` (aepipe/cli/__main__.py) is an entry point no module imports: not counted."""
    graph = {m: deps for m, deps in package_imports().items() if not m.endswith(".__main__")}
    chain = longest_chain(graph)
    assert len(chain) <= 8, " -> ".join(chain)


def test_the_layer_check_catches_an_upward_import_and_a_cycle():
    graph = package_imports()
    graph["aepipe.stores.read"] = graph["aepipe.stores.read"] | {"aepipe.batch.rows"}
    assert "aepipe.stores.read imports aepipe.batch.rows, a layer above it" in layer_problems(graph)
    assert any("aepipe.stores.read" in c and "aepipe.batch.rows" in c for c in cycles(graph))
    graph["aepipe.batch.decode"] = graph["aepipe.batch.decode"] | {"aepipe.batch.reconstruct"}
    assert "aepipe.batch.decode imports aepipe.batch.reconstruct: jobs stand on the engine, not on each other" \
        in layer_problems(graph)


def test_import_aepipe_from_a_folder_that_holds_a_pipeline_py(tmp_path):
    """The import name is the product's: a user's own pipeline.py (or the PyPI package `pipeline`)
    neither shadows aepipe nor is shadowed by it."""
    import subprocess
    import sys

    (tmp_path / "pipeline.py").write_text("raise SystemExit('the user\\'s own pipeline.py was imported')\n")
    code = "import aepipe, aepipe.cli, pipeline; print(aepipe.__file__, pipeline.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "the user's own pipeline.py was imported" in proc.stderr  # theirs, not ours
    proc = subprocess.run([sys.executable, "-c", "import aepipe.cli; print(aepipe.__file__)"], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip().endswith("aepipe/__init__.py")
