"""Docs that cannot rot: the README's and docs/'s runnable code blocks run, and every option they
name is one the command takes.

Which blocks run: a fenced block whose info string is its language followed by the word `runnable`:

    ```sh runnable        run by bash -e -o pipefail: the first failing command fails the block
    ```python runnable    run by this interpreter (sys.executable)

Any other block (```sh, ```python, ```yaml, a bare ```) is only shown. The runnable blocks of one
file run in order in one fresh temporary folder, so a block may use what an earlier one wrote, with
the installed `aepipe` (the one beside sys.executable) first on PATH, and each must exit 0. A block
that shows a failure says so itself: `aepipe info missing.zarr || echo "exit code $?"`.

Runnable blocks must be small and fast (seconds each: builtin:digits or a few files the block
writes, a few epochs) and must not start Ray: they run with a `ray` package first on the path that
refuses to be imported, so a block that would start Ray fails, saying so. Examples that need a
cluster, a GPU, a bucket or minutes of work are plain blocks; their options are still checked
against the command line's own (test_every_option_in_the_docs_is_one_the_command_takes).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
RUNNERS = {"sh": ["bash", "-e", "-o", "pipefail", "-c"], "bash": ["bash", "-e", "-o", "pipefail", "-c"],
           "python": [sys.executable, "-c"]}
BLOCK_TIMEOUT = 120  # seconds; a runnable block takes a few
NO_RAY = 'raise ImportError("a runnable doc block must not start Ray: make it smaller, or show it as a plain block")\n'
# options of other tools that the docs name (make, pip, ray, kubectl, ...): everything else that looks
# like an option must be one of aepipe's
OTHER_TOOLS = {"--index-url", "--generate", "--head", "--help"}


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    runnable: bool
    code: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} ({self.lang or 'plain'} block)"


def blocks(path: Path, text: str | None = None) -> list[Block]:
    """Every fenced code block of a markdown file, in order."""
    text = path.read_text() if text is None else text
    found = []
    for m in FENCE.finditer(text):
        words = m.group(1).split()
        found.append(Block(path, text.count("\n", 0, m.start()) + 1, words[0] if words else "",
                           "runnable" in words[1:], m.group(2)))
    return found


def doc_env(tmp_path: Path) -> dict:
    """The environment blocks run in: the installed aepipe first on PATH, no cluster named, and a
    `ray` that cannot be imported."""
    stub = tmp_path / "no-ray" / "ray"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(NO_RAY)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "AEPIPE_DEBUG")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stub.parent), env.get("PYTHONPATH")]))
    env["MPLBACKEND"] = "Agg"
    return env


def run_block(block: Block, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    if block.lang not in RUNNERS:
        raise AssertionError(f"{block}: marked runnable, but only {', '.join(RUNNERS)} blocks can run")
    return subprocess.run([*RUNNERS[block.lang], block.code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT)


def _tail(text: str, n: int = 3000) -> str:
    return text if len(text) <= n else "..." + text[-n:]


RUNNABLE = [p for p in DOCS if any(b.runnable for b in blocks(p))]


@pytest.mark.e2e
@pytest.mark.parametrize("doc", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_runnable_blocks_run(doc, tmp_path):
    env, work = doc_env(tmp_path), tmp_path / "work"
    work.mkdir()
    for block in (b for b in blocks(doc) if b.runnable):
        ran = run_block(block, work, env)
        assert ran.returncode == 0, (f"{block} exited {ran.returncode}\n--- code:\n{block.code}"
                                     f"--- stdout:\n{_tail(ran.stdout)}\n--- stderr:\n{_tail(ran.stderr)}")


@pytest.mark.e2e
def test_a_renamed_option_fails_its_block(tmp_path):
    """What the test above catches: the README's first command-line example with --code-dim
    renamed stops at once with the command line's usage error, exit code 2."""
    first = next(b for b in blocks(ROOT / "README.md") if b.runnable and b.lang == "sh")
    assert "--code-dim" in first.code
    renamed = Block(first.path, first.line, first.lang, True, first.code.replace("--code-dim", "--code-size"))
    (tmp_path / "work").mkdir()
    ran = run_block(renamed, tmp_path / "work", doc_env(tmp_path))
    assert ran.returncode == 2, ran
    assert ran.stderr.startswith("aepipe: error: No such option: --code-size"), ran.stderr
    assert not (tmp_path / "work" / "runs").exists()  # refused before any work


def test_the_readme_runs_a_command_line_and_a_python_example():
    kinds = [b.lang for b in blocks(ROOT / "README.md") if b.runnable]
    assert "sh" in kinds and "python" in kinds, kinds


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_docs_leads_somewhere():
    broken = []
    for doc in DOCS:
        text = FENCE.sub("", doc.read_text())
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            where = (doc.parent / path).resolve() if path else doc
            if not where.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and anchor not in {slug(h) for h in re.findall(r"^#+ (.+)$", FENCE.sub("", where.read_text()),
                                                                         re.M)}:
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


# ------------------------------------------------------------------ options named by the docs

def cli_options() -> tuple[dict[str, set[str]], set[str]]:
    """(command -> the options it takes, the options taken before any command), from the command
    line's own definition: what `aepipe COMMAND --help` lists."""
    import typer.main

    from aepipe.cli import app

    group = typer.main.get_command(app)
    opts = {name: {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", ())) if o.startswith("--")}
            | {"--help"} for name, cmd in group.commands.items()}
    return opts, {o for p in group.params for o in p.opts} | {"--help"}


OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
COMMAND_LINE = re.compile(r"\baepipe\s+(?:--verbose\s+)?([a-z]+)\b([^#|;&]*)")  # up to a comment, pipe or &&
PY_CALL = re.compile(r"\bmain\(\[\s*\"([a-z]+)\"(.*?)\]\)")


def option_problems(path: Path, text: str, per_command: dict[str, set[str]], top: set[str]) -> list[str]:
    """Options the docs name that the command does not take: per command on aepipe command lines
    (code blocks, inline code, main([...]) calls), and anywhere for every --option-like word."""
    everything = set().union(*per_command.values()) | top | OTHER_TOOLS
    problems = []
    code_lines = [line for b in blocks(path, text) for line in b.code.splitlines()]
    spans = re.findall(r"`([^`\n]+)`", FENCE.sub("", text))
    for segment in code_lines + spans:
        for command, rest in COMMAND_LINE.findall(segment) + PY_CALL.findall(segment):
            if command not in per_command:
                if segment.lstrip().startswith("aepipe"):
                    problems.append(f"{path.name}: `{segment.strip()}`: no command {command!r}")
                continue
            problems += [f"{path.name}: `{segment.strip()}`: aepipe {command} takes no {o}"
                         for o in OPTION.findall(rest) if o not in per_command[command]]
    problems += [f"{path.name}: {o} is no option of any aepipe command" for o in sorted(set(OPTION.findall(text)))
                 if o not in everything]
    return problems


def test_every_option_in_the_docs_is_one_the_command_takes():
    per_command, top = cli_options()
    problems = [p for doc in DOCS for p in option_problems(doc, doc.read_text(), per_command, top)]
    assert problems == [], "\n".join(problems)


def test_the_option_check_catches_a_renamed_option():
    per_command, top = cli_options()
    text = ("Train with `aepipe train builtin:digits --code-dim 8 --out runs/d`, then:\n\n"
            "```sh\naepipe encode builtin:digits --model runs/d --out c.zarr  # --code-dim: the model's\n```\n")

    def problems(text):
        return [p.split(": ")[-1] for p in option_problems(Path("x.md"), text, per_command, top)]

    assert problems(text) == []
    assert problems(text.replace("c.zarr ", "c.zarr --code-dim 8 ")) == ["aepipe encode takes no --code-dim"]
    assert problems(text.replace("--code-dim", "--code-size")) == [
        "aepipe train takes no --code-size", "--code-size is no option of any aepipe command"]


# ------------------------------------------------------------------ nothing outside the repository

def test_nothing_names_a_path_outside_the_repository():
    needle = "../" + "shared"
    skip = {".git", ".venv", "runs", "__pycache__", ".pytest_cache", "build"}
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith(".venv") and not d.endswith(".egg-info")]
        for name in files:
            path = Path(folder) / name
            if path.suffix in (".py", ".md", ".yaml", ".yml", ".toml", ".txt", "") and path.stat().st_size < 2 ** 20:
                with contextlib.suppress(UnicodeDecodeError):
                    found += [f"{path.relative_to(ROOT)}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                              if needle in line]
    assert found == []


# ------------------------------------------------------------------ bench/RESULTS.md

def _bench_results():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_results", ROOT / "bench" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_bench_rewrites_its_own_section_of_results(tmp_path):
    results = _bench_results()
    path = tmp_path / "RESULTS.md"
    path.write_text("# Measurements\n\n## quality\n\nwhat it measures\n\n<!-- section: quality -->\nold table\n"
                    "<!-- end: quality -->\n\n## other\n\nkept as written\n")
    with contextlib.redirect_stderr(io.StringIO()):
        results.record("quality", "| a |\n|---|\n| 1 |", "python bench/quality.py", path=path)
        results.record("quality", "| a |\n|---|\n| 2 |", "python bench/quality.py --init none", path=path)
        results.record("budgets", "| b |", path=path)
    text = path.read_text()
    assert "old table" not in text and "| 1 |" not in text and text.count("<!-- section: quality -->") == 1
    assert "what it measures" in text and "kept as written" in text
    body = text.split("<!-- section: quality -->")[1].split("<!-- end: quality -->")[0]
    assert f"{os.cpu_count()} cores" in body and "GiB memory" in body and " at commit " in body
    assert "    python bench/quality.py --init none\n" in body and "| 2 |" in body
    assert text.index("## budgets") > text.index("kept as written")  # a new section goes last
    assert "\n\n    " in text.split("<!-- section: budgets -->")[1]  # this process's own command, as typed


def test_every_bench_script_records_its_results():
    scripts = [p for p in sorted((ROOT / "bench").glob("*.py")) if '__name__ == "__main__"' in p.read_text()]
    assert len(scripts) >= 10  # the modules they share (results.py, rd_anchors.py) are not scripts
    for script in scripts:
        assert "record(" in script.read_text(), f"{script.name} does not write bench/RESULTS.md"
