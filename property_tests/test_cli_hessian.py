"""``convrate hessian``: one process vs ``--nproc 2`` (gloo), residual bounds against the dense
spectrum, outputs and bad input.

Agreement 1e-10 relative: the two runs differ only in the order of float64 additions of the
data-parallel sums (relative ~1e-16 per product) and the reported values are converged
(Lanczos tolerance 1e-8 on the residual estimate; a converged Ritz value is accurate to about
the square of its residual over the gap, far below 1e-10), so 1e-10 leaves a wide margin.
Residual bounds: each reported value lies within its fresh residual of an eigenvalue of the
dense Hessian (torch.func.hessian + eigvalsh, whose own error is <= 8 n u ||H||), and the
i-th top value is the i-th largest distinct eigenvalue.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from convrate.cli import app

runner = CliRunner()
ARGS = ["hessian", "digits-mlp", "--top", "3", "--bottom", "1", "--trace", "--json"]


def _run(*extra):
    r = runner.invoke(app, ARGS + [str(a) for a in extra])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def runs():
    return _run(), _run("--nproc", 2)


def test_one_and_two_processes_agree(runs):
    one, two = runs
    assert one["nproc"] == 1 and two["nproc"] == 2 and sum(two["shards"]) == one["task"]["n_examples"]
    assert one["schema"] == "convrate-hessian/1" and one["lanczos"]["converged"] and two["lanczos"]["converged"]
    for key in ("top", "bottom"):
        assert len(one[key]) == len(two[key]) == (3 if key == "top" else 1)
        for a, b in zip(one[key], two[key]):
            assert abs(a["value"] - b["value"]) <= 1e-10 * abs(a["value"])
    assert abs(one["trace"]["estimate"] - two["trace"]["estimate"]) <= 1e-10 * abs(one["trace"]["estimate"])
    assert abs(one["loss"] - two["loss"]) <= 1e-12 * one["loss"]
    assert all(m["peak_rss"] > 0 for m in two["memory"]["per_rank"]) and one["cpu_seconds"] > 0


def test_residual_bounds_hold_against_the_dense_spectrum(runs):
    from convrate.models import zoo
    from convrate.models.curvature import Objective, dense_hessian
    from convrate.models.tasks import digits_relabel_task

    m = zoo.digits_mlp()
    t = digits_relabel_task(0, standardize=False)
    ev = torch.linalg.eigvalsh(dense_hessian(Objective(m.module, t.X_train, t.y_train, loss="cross_entropy",
                                                       device="cpu"))).numpy()
    err = 8 * len(ev) * 2.0**-53 * float(np.abs(ev).max())
    for doc in runs:
        for i, p in enumerate(doc["top"]):
            assert float(np.abs(ev - p["value"]).min()) <= p["residual"] + err
            assert abs(ev[-1 - i] - p["value"]) <= p["residual"] + err  # the top three are simple here
        p = doc["bottom"][0]
        assert abs(ev[0] - p["value"]) <= p["residual"] + err


def test_outputs_and_density(tmp_path):
    out = tmp_path / "h"
    r = runner.invoke(app, ["hessian", "digits-mlp", "--top", "1", "--bottom", "0", "--density", "--density-probes",
                            "2", "--density-steps", "20", "--basis", "full", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["density.png", "hessian.json", "hessian.md"]
    doc = json.loads((out / "hessian.json").read_text())
    d = doc["density"]
    assert d["probes"] == 2 and abs(np.trapezoid(d["density"], d["grid"]) - 1) < 1e-6
    assert doc["lanczos"]["basis"] == "full" and doc["bottom"] == []


@pytest.mark.parametrize("bad, match", [
    (["--top", "0", "--bottom", "0"], "--top"), (["--tol", "0"], "--tol"), (["--tol", "nan"], "--tol"),
    (["--dtype", "float16"], "--dtype"), (["--basis", "half"], "--basis"), (["--task", "poetry"], "unknown task"),
    (["--params", "nothing-matches"], "selects no"), (["--nproc", "0"], "--nproc"), (["--examples", "99999"], "exceeds"),
])
def test_bad_input_is_one_line_exit_2(bad, match, tmp_path):
    r = runner.invoke(app, ["hessian", "digits-mlp", *bad, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and match in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "o").exists()


def test_unknown_model_with_workers_fails_before_spawning():
    r = runner.invoke(app, ["hessian", "no-such-model", "--nproc", "2"])
    assert r.exit_code == 2 and "neither an existing checkpoint" in r.output


def test_torchrun_launch_agrees(runs):
    """``torchrun --standalone --nproc-per-node 2 -m convrate hessian ...``: every process joins
    torchrun's process group (env://); rank 0 prints the same eigenvalues (1e-10 relative)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    exe = str(torchrun) if torchrun.exists() else shutil.which("torchrun")
    p = subprocess.run([exe, "--standalone", "--nproc-per-node", "2", "-m", "convrate", *ARGS],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(p.stdout)
    assert doc["world_size"] == 2 and doc["nproc"] == 2
    for key in ("top", "bottom"):
        for a, b in zip(runs[0][key], doc[key]):
            assert abs(a["value"] - b["value"]) <= 1e-10 * abs(a["value"])
