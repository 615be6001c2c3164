"""aepipe tune: Ray Tune trials over code size / depth / width / loss, the best one an ordinary run dir."""

from conftest import run_aepipe
from aepipe.run import load_run


def test_tune_writes_the_best_trial_as_a_run_dir(ray_local, tmp_path):
    out = tmp_path / "best"
    proc = run_aepipe("tune", "builtin:digits-train", "--code-dim", "4,8", "--depth", "1", "--width", "32",
                      "--trials", 2, "--epochs", 4, "--out", out, address=ray_local)
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("tuned dense: best code ") and lines[-1].endswith(f"-> {out}"), proc.stdout
    trials = [line for line in lines if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert len(trials) == 2, proc.stdout
    run = load_run(out)  # an ordinary run dir: fingerprint checked, weights loaded
    m = run.meta["metrics"]
    assert run.code_dim in (4, 8) and run.meta["model"]["hidden"] == [32]
    assert m["val_recon"] < m["pca"]["val_loss"]  # past PCA at its code size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # the trials' folder is gone


def test_tune_refuses_a_bad_grid_in_one_line(tmp_path):
    proc = run_aepipe("tune", "builtin:digits-train", "--code-dim", "4,x", "--out", tmp_path / "best", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        'aepipe: error: --code-dim "4,x": expected comma-separated integers, e.g. 256,64']
    assert not (tmp_path / "best").exists()
