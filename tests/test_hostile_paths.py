"""Hostile job specs and hostile paths (issue 24), held to test_hostile.py's standard.

Job specs: a value given with `aepipe submit --set` is data, never a command: load_spec fills it
into the entrypoint shell-quoted, and the entrypoint, split as a shell splits it (shlex, and
/bin/sh itself with `aepipe` a function that only records its arguments), holds it as one
unchanged argument; no planted command runs. Alias bombs, specs that are not mappings, and
entrypoints that would unquote a value are refused in one line before any cluster is asked.

Hostile paths: unicode, spaces, tabs and newlines in file, folder and output names are read and
written right, ids intact; a symlink loop in an image folder is passed over (each image once, in
bounded time); an output that is a link, or whose OUT.partial is one, is refused and its target
left untouched; a read-only or full output filesystem (a tmpfs of 256 KiB, mounted in a user and
mount namespace of a child, `unshare -rm`: skipped where the kernel does not allow one) ends in
one line, exit 1 or 2, and no partial left. None of these start Ray.
"""

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import aepipe
from aepipe.cluster.submit import load_spec
from aepipe.errors import AepipeError
from aepipe.stores.read import load_codes
from tests.conftest import AEPIPE, aepipe_here

ROOT = Path(__file__).resolve().parents[1]
TIME_BOUND_S = 20
SPECS = sorted(p for p in (ROOT / "jobs").glob("*.yaml") if p.name != "rayjob.yaml")  # rayjob: a KubeRay manifest


def snapshot(*roots) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else "other"
            for root in roots for p in sorted(Path(root).rglob("*"))}


def refused(ran, code: int, message: str) -> None:
    """test_hostile's standard: the exit code, one `aepipe: error:` line holding message, no traceback."""
    ours = [line for line in ran.stderr.splitlines() if line.startswith("aepipe: error:")]
    assert ran.returncode == code, f"exit {ran.returncode}\n{ran.stdout}\n{ran.stderr}"
    assert len(ours) == 1 and message in ours[0], ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1, ran.stderr
    assert "Traceback" not in ran.stderr + ran.stdout


# ---------------------------------------------------------------- job specs: --set values are data

HOSTILE_VALUES = {
    "semicolon-rm": "x; rm -rf ~",
    "command-substitution": "$(touch {m})",
    "backticks": "`touch {m}`",
    "single-quote-break": "'; touch {m}; echo '",
    "double-quote-break": '"; touch {m}; echo "',
    "newline": "x\ntouch {m}",
    "and-pipe-redirect": "a && touch {m} | cat > {m}",
    "trailing-backslash": "x\\",
    "variables-and-globs": "$HOME ~ * ${{PATH}} $((1+1))",
    "looks-like-a-placeholder": "{{model}}",
    "unicode-and-spaces": "données ü 日本/a b\tc",
    "dash": "--overwrite",
    "empty": "",
}


def placeholders(spec: Path) -> list[str]:
    from aepipe.cluster.submit import PLACEHOLDER, _read

    return sorted(set(PLACEHOLDER.findall(_read(str(spec))["entrypoint"])))


@pytest.mark.parametrize("value", HOSTILE_VALUES.values(), ids=HOSTILE_VALUES.keys())
def test_a_set_value_is_one_argument_never_a_command(value, tmp_path):
    marker = tmp_path / "pwned"
    value = value.format(m=marker)
    home = tmp_path / "home"
    home.mkdir()
    (home / "keep").write_text("keep")
    assert SPECS
    for spec in SPECS:
        for name in placeholders(spec):
            entry = load_spec(str(spec), [f"{name}={value}"])["entrypoint"]
            words = shlex.split(entry)
            assert words[0] == "aepipe" and value in words, (spec.name, name, entry)
            # /bin/sh, as Ray's job supervisor runs an entrypoint: aepipe only records what it was given
            record = tmp_path / "args"
            script = f'aepipe() {{ printf "%s\\0" "$@" > {shlex.quote(str(record))}; }}\n{entry}\n'
            subprocess.run(["/bin/sh", "-c", script], cwd=tmp_path, check=True, timeout=10,
                           env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
            got = record.read_text().split("\0")[:-1]
            assert got == words[1:], (spec.name, name, entry)
            assert not marker.exists() and (home / "keep").exists(), (spec.name, name, entry)


def test_a_spec_value_and_a_set_value_are_filled_in_once(tmp_path):
    """A value holding {another} stays as written: placeholders are filled in one pass."""
    spec = tmp_path / "s.yaml"
    spec.write_text("entrypoint: aepipe score {data} --model {model} --out {out}\n"
                    "params: {data: '{model}', model: m, out: o.parquet}\n")
    assert shlex.split(load_spec(str(spec), ["out={data}"])["entrypoint"]) == \
        ["aepipe", "score", "{model}", "--model", "m", "--out", "{data}"]


BOMB = "\n".join(["  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                 + [f"  {b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")])
FLOW_BOMB = ("{a: &a [x, x, x, x, x, x, x, x, x, x], b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a], "
             "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b], d: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]}")

# id, the spec's text (None: /dev/zero), --set items, text the one error line must hold
SPEC_CASES = [
    ("bomb-in-metadata", "entrypoint: aepipe info {data}\nparams: {data: x}\nmetadata:\n" + BOMB + "\n", (),
     "expands to more than 10,000 values"),
    ("bomb-in-params", "entrypoint: aepipe info {data}\nparams:\n  data: x\n" + BOMB + "\n", (),
     "alias bomb"),
    ("bomb-in-runtime-env", "entrypoint: aepipe info x\nruntime_env:\n  env_vars:\n" + BOMB.replace("  ", "    ") + "\n",
     (), "alias bomb"),
    ("bomb-by-set", "entrypoint: aepipe info x\n", (f"runtime_env.env_vars={FLOW_BOMB}",), "alias bomb"),
    ("alias-cycle", "entrypoint: aepipe info x\nmetadata: &m {self: *m}\n", (), "alias bomb"),
    ("deep-nesting", "entrypoint: aepipe info x\nmetadata: {a: " + "[" * 5000 + "]" * 5000 + "}\n", (),
     "s.yaml:"),
    ("a-list", "- entrypoint: aepipe info x\n", (), "holds a list, not a job spec"),
    ("a-string", "aepipe info x\n", (), "holds a single string, not a job spec"),
    ("a-number", "42\n", (), "holds a single int value, not a job spec"),
    ("empty-file", "", (), "holds nothing (an empty file), not a job spec"),
    ("only-comments", "# entrypoint: aepipe info x\n", (), "holds nothing (an empty file)"),
    ("no-entrypoint", "params: {data: x}\n", (), 'with an "entrypoint" command'),
    ("entrypoint-not-text", "entrypoint: [aepipe, info]\n", (), 'with an "entrypoint" command'),
    ("keys-not-text", "entrypoint: aepipe info x\n1: a\nnull: b\n", (), 'unknown field "1"'),
    ("metadata-a-list", "entrypoint: aepipe info x\nmetadata: [a, b]\n", (), "metadata must be a mapping"),
    ("metadata-set-to-list", "entrypoint: aepipe info x\n", ("metadata=[1, 2]",), "metadata must be a mapping"),
    ("entrypoint-set-empty", "entrypoint: aepipe info x\n", ("entrypoint= ",), "the entrypoint is empty"),
    ("placeholder-in-double-quotes", 'entrypoint: aepipe info "{data}"\nparams: {data: x}\n', (),
     '{data} stands inside "..."'),
    ("placeholder-in-single-quotes", "entrypoint: aepipe info '--out={data}'\nparams: {data: x}\n", (),
     "{data} stands inside '...'"),
    ("placeholder-after-dollar", "entrypoint: aepipe info ${data}\nparams: {data: x}\n", (), "{data} stands after $"),
    ("placeholder-after-backslash", "entrypoint: aepipe info \\{data}\nparams: {data: x}\n", (),
     "{data} stands after \\"),
    ("not-utf8", b"entrypoint: aepipe info \xff\xfe\n", (), "not a text file"),
    ("endless-file", None, (), "larger than 1 MiB"),
]


@pytest.mark.parametrize("case", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_spec_refused_in_one_line(case, tmp_path):
    name, text, sets, message = case
    spec = tmp_path / "s.yaml"
    if text is None:
        spec = Path("/dev/zero")
    elif isinstance(text, bytes):
        spec.write_bytes(text)
    else:
        spec.write_text(text)
    before = snapshot(tmp_path)
    t0 = time.time()
    # no --address: a spec refused is refused before any job server is looked for
    ran = aepipe_here("submit", spec, *[a for s in sets for a in ("--set", s)])
    assert time.time() - t0 < TIME_BOUND_S
    refused(ran, 2, message)
    assert ran.stdout == ""
    assert snapshot(tmp_path) == before


def test_the_shipped_specs_still_load():
    for spec in SPECS:
        kwargs = load_spec(str(spec))
        assert shlex.split(kwargs["entrypoint"])[0] == "aepipe"
    with pytest.raises(AepipeError, match="inside"):
        load_spec(str(ROOT / "jobs" / "score.yaml"), ['entrypoint=aepipe score "{data}"'])


# ---------------------------------------------------------------- hostile paths

NAMES = ["a b.png", "ünï/çødé.png", "new\nline.png", "tab\t.png", "日本.jpg", "-dash.png", "quote'\".png",
         "back\\slash.png", "%s{}.png", " lead.png", "esc\x1b[31m.png"]


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """An image folder whose names hold spaces, unicode, newlines and escapes, a model trained on
    it (in this process), and tables named so."""
    t = tmp_path_factory.mktemp("odd names")
    images = t / "images ü\nx"
    rng = np.random.default_rng(0)
    for name in NAMES:
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(images / name)
    run = t / "run é\n1"
    ran = aepipe_here("train", images, "--epochs", "1", "--code-dim", "2", "--hidden", "8", "--out", run)
    assert ran.returncode == 0, ran.stderr
    return {"t": t, "images": images, "run": run}


@pytest.mark.parametrize("suffix", [".zarr", ".parquet"])
def test_odd_image_names_read_right_and_odd_output_names_written_right(odd, suffix, tmp_path):
    out = tmp_path / f"codes ü\n\t日本{suffix}"
    before = snapshot(odd["images"], odd["run"])
    ran = aepipe_here("encode", odd["images"], "--model", odd["run"], "--out", out, "--engine", "local")
    assert ran.returncode == 0, ran.stderr
    ids, codes = load_codes(out)
    assert sorted(ids.tolist()) == sorted(NAMES) and codes.shape == (len(NAMES), 2)
    back = tmp_path / "recon é\n.npy"
    ran = aepipe_here("decode", out, "--model", odd["run"], "--out", back, "--engine", "local", "--ids",
                      "a b.png,日本.jpg")
    assert ran.returncode == 0, ran.stderr
    assert np.load(back).shape == (2, 8, 8)
    assert snapshot(odd["images"], odd["run"]) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, back.name])  # no .partial


def test_odd_table_names_read_right_ids_intact(tmp_path):
    folder = tmp_path / "tables ü\nnew"
    folder.mkdir()
    ids = ["r 0", "ü\n1", "tab\t2", "quote'\"3", "日本4", "esc\x1b5"] + [f"r{i}" for i in range(6, 40)]
    x = np.random.default_rng(1).random((40, 4))
    table = pa.table({"id": ids, **{f"col {i} é": x[:, i] for i in range(4)}})
    pq.write_table(table[:20], folder / "part a ü.parquet")
    pq.write_table(table[20:], folder / "part b\n.parquet")
    csv = tmp_path / "table é\n.csv"
    table.to_pandas().to_csv(csv, index=False)
    run = tmp_path / "run ü\n"
    ran = aepipe_here("train", folder, "--epochs", "1", "--code-dim", "2", "--hidden", "8", "--out", run)
    assert ran.returncode == 0, ran.stderr
    for data in (folder, csv):
        out = tmp_path / f"codes of {data.suffix or 'folder'} ü\n.parquet"
        ran = aepipe_here("encode", data, "--model", run, "--out", out, "--engine", "local")
        assert ran.returncode == 0, ran.stderr
        got, codes = load_codes(out)
        assert sorted(got.tolist()) == sorted(ids) and codes.shape == (40, 2), data


def test_an_error_naming_an_odd_path_is_one_line(odd, tmp_path):
    """A newline or an escape sequence in a name is written as an escape: one line, no terminal control."""
    out = tmp_path / "o\n\x1b[2J.zarr"
    out.mkdir()
    ran = aepipe_here("encode", odd["images"], "--model", odd["run"], "--out", out, "--engine", "local")
    refused(ran, 2, "o\\n\\x1b[2J.zarr already exists")
    ran = aepipe_here("encode", tmp_path / "no\nsuch\x1b.png", "--model", odd["run"], "--out", tmp_path / "p.zarr")
    refused(ran, 2, "no\\nsuch\\x1b.png: no such file")


def test_symlink_loops_in_an_image_folder_are_passed_over(odd, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(odd["images"], images)
    (images / "ünï" / "up").symlink_to("..")  # a loop
    (images / "ünï" / "up2").symlink_to(images)  # a second one, by absolute path: 2^40 paths if followed
    (images / "self").symlink_to("self")  # a link to itself
    (images / "dangling.png").symlink_to(tmp_path / "nothing.png")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(images / "a b.png", outside / "outside.png")
    (outside / "back").symlink_to(images)  # a loop through a folder outside
    (images / "more").symlink_to(outside)
    (images / "more again").symlink_to(outside)  # the same folder twice: its image once
    out = tmp_path / "c.parquet"
    t0 = time.time()
    ran = aepipe_here("encode", images, "--model", odd["run"], "--out", out, "--engine", "local")
    assert time.time() - t0 < TIME_BOUND_S
    assert ran.returncode == 0, ran.stderr
    ids, _ = load_codes(out)
    assert len(ids) == len(set(ids.tolist())) == len(NAMES) + 1
    assert set(ids.tolist()) == set(NAMES) | {"more/outside.png"}


def test_an_unreadable_subfolder_is_one_line(odd, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads a folder whatever its mode")
    images = tmp_path / "images"
    shutil.copytree(odd["images"], images)
    (images / "ünï").chmod(0)
    try:
        refused(aepipe_here("encode", images, "--model", odd["run"], "--out", tmp_path / "c.zarr"), 2,
                "cannot list it")
    finally:
        (images / "ünï").chmod(0o755)


@pytest.mark.parametrize("suffix", [".zarr", ".parquet", ".npy"])
@pytest.mark.parametrize("into", ["input", "run", "elsewhere"])
@pytest.mark.parametrize("at", ["out", "partial"])
def test_an_output_link_is_never_written_through(digits_run, tmp_path, suffix, into, at):
    """--out (or the OUT.partial beside it) a link into the input, the run dir or anywhere: refused,
    with and without --overwrite, the target byte-identical."""
    run = tmp_path / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).random((20, 8, 8)).astype(np.float32))
    codes = tmp_path / "codes.zarr"
    assert aepipe_here("encode", data, "--model", run, "--out", codes, "--engine", "local").returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("keep")
    # encode (Zarr, Parquet) reads the array, decode (.npy) the codes
    target = {"input": data if suffix != ".npy" else codes, "run": run / "model.pt" if suffix == ".npy" else run,
              "elsewhere": elsewhere}[into]
    out = tmp_path / f"out{suffix}"
    link = out if at == "out" else out.with_name(out.name + ".partial")
    link.symlink_to(target)
    before = snapshot(tmp_path)
    for overwrite in ([], ["--overwrite"]):
        if suffix == ".npy":
            ran = aepipe_here("decode", codes, "--model", run, "--out", out, "--engine", "local", *overwrite)
        else:
            ran = aepipe_here("encode", data, "--model", run, "--out", out, "--engine", "local", *overwrite)
        message = "is a link" if at == "partial" or into == "elsewhere" else "the input"
        refused(ran, 2, message)
        assert snapshot(tmp_path) == before and link.is_symlink()


def test_a_stale_partial_file_is_replaced(digits_run, tmp_path):
    """A plain file left at OUT.partial (not a folder a killed run left) is aepipe's to remove."""
    for suffix in (".zarr", ".parquet"):
        out = tmp_path / f"c{suffix}"
        out.with_name(out.name + ".partial").write_text("stale")
        ran = aepipe_here("encode", "builtin:digits", "--model", digits_run, "--out", out, "--engine", "local")
        assert ran.returncode == 0, ran.stderr
        assert out.is_dir() and not out.with_name(out.name + ".partial").exists()


def test_a_read_only_output_folder_is_one_line(digits_run, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes in a folder whatever its mode (the read-only tmpfs case covers root)")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    try:
        for out in ("c.zarr", "c.parquet"):
            refused(aepipe_here("encode", "builtin:digits", "--model", digits_run, "--out", ro / out), 2,
                    "no permission to write")
        assert not any(ro.iterdir())
    finally:
        ro.chmod(0o755)


def _namespace_ok() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d "
                            "&& umount $d; rmdir $d"], capture_output=True, timeout=20)
    return probe.returncode == 0


TMPFS_SCRIPT = r"""
import os, subprocess, sys
mnt, mount_opts, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
subprocess.run(["mount", "-t", "tmpfs", "-o", mount_opts, "tmpfs", mnt], check=True)
ran = subprocess.run(argv, capture_output=True, text=True, timeout=120)
print(ran.returncode)
print(repr(ran.stderr))
print(repr(sorted(os.listdir(mnt))))
"""


@pytest.mark.parametrize("mode", ["full", "read-only"])
@pytest.mark.parametrize("suffix", [".zarr", ".parquet", ".npy"])
def test_a_full_or_read_only_filesystem_is_one_line_and_nothing_left(digits_run, tmp_path, mode, suffix):
    """A 256 KiB tmpfs in a mount namespace of a child: decode's output (460 KB of rows) does not fit."""
    if not _namespace_ok():
        pytest.skip("no user and mount namespace here (unshare -rm), so no tmpfs can be mounted")
    codes = tmp_path / "codes.zarr"
    assert aepipe_here("encode", "builtin:digits", "--model", digits_run, "--out", codes,
                       "--engine", "local").returncode == 0
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("RAY_ADDRESS", None)
    opts = "size=256k" + (",ro" if mode == "read-only" else "")
    out = mnt / f"recon{suffix}"
    t0 = time.time()
    proc = subprocess.run(["unshare", "-rm", sys.executable, "-c", TMPFS_SCRIPT, str(mnt), opts,
                           AEPIPE, "decode", str(codes), "--model", str(digits_run), "--out", str(out),
                           "--engine", "local"], capture_output=True, text=True, env=env, timeout=180)
    assert time.time() - t0 < 60
    assert proc.returncode == 0, proc.stderr
    code, stderr, left = proc.stdout.splitlines()[-3:]
    stderr = eval(stderr)  # noqa: S307 - repr() of a str, printed by TMPFS_SCRIPT above
    ours = [line for line in stderr.splitlines() if line.startswith("aepipe: error:")]
    expect = ("cannot write it (No space left on device); the partial output was removed" if mode == "full"
              else "no permission to write in")
    assert int(code) == (1 if mode == "full" else 2), stderr
    assert len(ours) == 1 and expect in ours[0] and str(out) in ours[0], stderr
    assert "Traceback" not in stderr
    assert eval(left) == []  # noqa: S307 - nothing left on the full disk: no output, no .partial
    assert not any(mnt.iterdir())  # the namespace's mount is gone with it; nothing under it here


RESUME_SCRIPT = r"""
import json, os, shutil, subprocess, sys
mnt, copy, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt], check=True)
full = subprocess.run(argv, capture_output=True, text=True, timeout=120)
kept = sorted(os.listdir(mnt))
subprocess.run(["mount", "-o", "remount,size=16m", mnt], check=True)  # space freed
again = subprocess.run(argv + ["--resume"], capture_output=True, text=True, timeout=120)
out = argv[argv.index("--out") + 1]
if os.path.isdir(out):
    shutil.copytree(out, copy)
print(json.dumps({"full": [full.returncode, full.stderr], "kept": kept, "resumed": [again.returncode, again.stderr],
                  "left": sorted(os.listdir(mnt))}))
"""


@pytest.mark.parametrize("suffix", [".zarr", ".parquet"])
def test_encode_on_a_full_disk_keeps_its_finished_part_for_resume(digits_run, tmp_path, suffix):
    """encode into a 1 MiB tmpfs that fills up half way: one line saying what is kept; with space
    freed, the same command with --resume finishes the store, every row once, the right codes."""
    if not _namespace_ok():
        pytest.skip("no user and mount namespace here (unshare -rm), so no tmpfs can be mounted")
    x = np.random.default_rng(0).random((60_000, 8, 8), dtype=np.float32)  # 2.4 MB of codes and ids
    np.save(tmp_path / "x.npy", x)
    mnt, copy = tmp_path / "mnt", tmp_path / f"copy{suffix}"
    mnt.mkdir()
    out = mnt / f"codes{suffix}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "AEPIPE_TASK_ROWS": "4096"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(["unshare", "-rm", sys.executable, "-c", RESUME_SCRIPT, str(mnt), str(copy),
                           AEPIPE, "encode", str(tmp_path / "x.npy"), "--model", str(digits_run), "--out", str(out),
                           "--engine", "local", "--chunk-rows", "4096"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.splitlines()[-1])
    code, stderr = seen["full"]
    assert code == 1 and "Traceback" not in stderr, stderr
    ours = [line for line in stderr.splitlines() if line.startswith("aepipe: error:")]
    assert len(ours) == 1 and ours[0] == (
        f"aepipe: error: --out {out}: cannot write it (No space left on device); what was written is kept in "
        f"{out}.partial: free some space and run the same command with --resume to finish it"), stderr
    assert seen["kept"] == [f"codes{suffix}.partial"]  # no store that looks complete, no lock file
    code, stderr = seen["resumed"]
    assert code == 0, stderr
    assert seen["left"] == [f"codes{suffix}"]
    ids, codes = aepipe.load_codes(copy)
    assert np.array_equal(np.sort(ids), np.arange(len(x)))
    ref = aepipe.AutoencoderFeatures(str(digits_run)).transform(x.reshape(len(x), -1))
    np.testing.assert_allclose(codes[np.argsort(ids)], ref, atol=1e-5)
