"""The benchmarks' measuring instruments, checked against closed forms (untimed).

Run: python -m pytest -q -p no:cacheprovider benchmarks/tests  (the PyHessian checks need
benchmarks/.venv, where benchmarks/run.py installs it; elsewhere they are skipped)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench_common import first_within, loglog_slope, matmul_flops, peak_memory, peak_memory_supported
from bench_instances import build


@pytest.fixture(scope="module")
def gap():
    return build("close-gap", seed=3)


def test_first_within_is_the_start_of_the_final_run():
    errs = [1.0, 1e-4, 1e-2, 1e-4, 1e-5, 1e-7]
    assert first_within(errs, 1e-3) == 4  # index 2 leaves the band, so the run starts at count 4
    assert first_within(errs, 1e-6) == 6
    assert first_within(errs, 1e-8) is None


def test_loglog_slope_recovers_a_power_law():
    xs = [1.0, 10.0, 1e3, 1e5]
    # exact power law y = 3 x^1.7: the least-squares slope is 1.7 up to float64 rounding of the logs
    assert abs(loglog_slope(xs, [3 * x**1.7 for x in xs]) - 1.7) < 1e-12


@pytest.mark.skipif(not peak_memory_supported(), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_sees_a_touched_allocation():
    nbytes = 64 * 2**20
    # torch.ones writes every page, so resident memory rises by at least the tensor's size
    assert peak_memory(lambda: torch.ones(nbytes // 8, dtype=torch.float64)) >= nbytes


def test_matmul_flops_of_least_squares_match_the_layer_count(gap):
    """z = X w with X constant: forward 2Nd; gradient adds X^T r (2Nd); the double-backward
    HVP adds X v and X^T (X v) (4Nd): 4Nd and 8Nd, exactly."""
    obj = gap.objective()
    N, d = gap.x.shape
    v = torch.ones(obj.n, dtype=torch.float64)
    assert matmul_flops(obj.gradient) == 4 * N * d
    assert matmul_flops(lambda: obj.hvp(v, method="double_backward")) == 8 * N * d


def test_matmul_flops_of_the_digits_mlp_match_the_layer_count():
    """Per linear layer, in units of its forward product 2 N m k: a layer on the (constant)
    input costs 2 in the gradient (forward, dW) and 4 in the HVP; a layer whose input varies
    costs 3 (forward, dW, dX) and 9 (each of the three products has two varying factors)."""
    inst = build("digits-mlp")
    obj = inst.objective()
    N = inst.x.shape[0]
    a, b = 2 * N * 64 * 32, 2 * N * 32 * 10
    v = torch.ones(obj.n, dtype=torch.float64)
    assert matmul_flops(obj.gradient) == 2 * a + 3 * b
    assert matmul_flops(lambda: obj.hvp(v, method="double_backward")) == 4 * a + 9 * b


def test_close_gap_hessian_has_the_built_spectrum(gap):
    """X^T X / N = V diag(s) V^T by construction; float64 rounding of the product and of
    eigvalsh is O(n eps ||H||), so 1e-12 ||H|| bounds the difference."""
    from convrate.models.curvature import dense_hessian

    ev = torch.linalg.eigvalsh(dense_hessian(gap.objective())).numpy()
    s = np.array(gap.spectrum)
    assert np.max(np.abs(ev - s)) <= 1e-12 * s.max()
    assert math.isclose(s[-2] / s[-1], gap.info["ratio"], rel_tol=1e-15)


def test_power_run_follows_the_closed_form(gap):
    """Power iteration from v0: the k-th Rayleigh quotient is sum s_i^(2k-1) c_i^2 / sum
    s_i^(2k-2) c_i^2 with c = V^T v0 (k = 1 is v0's own quotient). Each step rounds at
    O(n eps); after 40 steps 1e-11 relative is a safe bound."""
    from bench_eigs import power_run
    from convrate.models.curvature import dense_hessian

    H = dense_hessian(gap.objective()).numpy()
    s, V = np.linalg.eigh(H)
    v0 = torch.from_numpy(np.random.default_rng(0).standard_normal(len(s)))
    tr = power_run(gap, v0, 40, math.inf)
    c2 = (V.T @ v0.numpy()) ** 2
    for k in (1, 2, 10, 40):
        expect = np.sum(s ** (2 * k - 1) * c2) / np.sum(s ** (2 * k - 2) * c2)
        assert abs(tr.top[k - 1] - expect) <= 1e-11 * abs(expect)


def test_lanczos_trace_is_consistent_with_lanczos_and_interlaces(gap):
    """The reconstructed tridiagonal reproduces lanczos' Ritz values; Ritz values interlace
    (top nondecreasing, bottom nonincreasing in k, Cauchy); the truth lies within its residual
    of the built spectrum. Tolerances: 1e-10 ||H|| for O(k eps ||H||) rounding."""
    from bench_eigs import lanczos_run, pyhessian_start

    v0 = pyhessian_start(gap.module, 0)
    trace, truth = lanczos_run(gap, v0, 60)
    scale = truth["norm"]
    assert truth["reconstruction_error"] <= 1e-10 * scale
    assert all(b >= a - 1e-10 * scale for a, b in zip(trace.top, trace.top[1:]))
    assert all(b <= a + 1e-10 * scale for a, b in zip(trace.bottom, trace.bottom[1:]))
    assert abs(truth["top"] - gap.spectrum[-1]) <= truth["top_residual"] + 1e-12 * scale


def test_pyhessian_is_counted_and_starts_from_the_shared_vector(gap):
    pytest.importorskip("pyhessian")
    from bench_eigs import PYHESSIAN_MAX_ITER, power_run, pyhessian_run, pyhessian_start

    v0 = pyhessian_start(gap.module, 0)
    trace, res = pyhessian_run(gap, 0, v0)
    assert res["hvps"] == len(trace.top) <= PYHESSIAN_MAX_ITER
    assert res["start_cosine"] > 1 - 1e-12
    # on a tol stop PyHessian returns the estimate before the last one
    assert res["value"] == (trace.top[-2] if res["stopped_by"] == "tol" else trace.top[-1])
    # it is power iteration, except that it divides by ||u|| + 1e-6 (u ~ unit, its vector before
    # the last normalization in each step): each estimate is scaled by (||u|| / (||u|| + 1e-6))^2,
    # so it lies below power iteration's by a relative 2e-6 (to first order, ||u|| >= 1 - 1e-6 /
    # ||Hv||); float64 rounding adds O(n eps)
    pw = power_run(gap, v0, len(trace.top), math.inf)
    for a, b in zip(trace.top, pw.top):
        assert abs((b - a) / b - 2e-6) <= 1e-10


def test_steps_rows_agree_with_iteration():
    """F1: the certified closed-form count equals naive iteration (here small kappa)."""
    from fractions import Fraction

    from bench_steps import bench_row, make_problem

    lam, _ = make_problem(300, 12, seed=5)
    assert min(lam) == 1 and max(lam) == 300
    row = bench_row(300, 12, Fraction(1, 10**6), cap=math.inf, seed=5)
    assert row["identical"] is True and row["iteration_count"] == row["count"]


def test_enclosure_case_is_consistent_and_covers_the_error():
    from bench_enclosures import bench_case

    r = bench_case(6, 30, seed=1)
    assert r["consistent"]
    assert r["certified_actual_error"] <= r["certified_radius"]


def test_hvp_methods_agree_on_the_mlp():
    """Reverse-over-reverse and forward-over-reverse compute the same H v; float64 rounding
    of a 2410-parameter product is far below 1e-12 relative."""
    from bench_hvp import operations

    _, check = operations(build("digits-mlp"), seed=0)
    assert all(d <= 1e-12 for d in check.values())


def test_run_rejects_an_unknown_stage(capsys):
    import run

    assert run.main(["--only", "nope"]) == 2
    assert "unknown stage" in capsys.readouterr().err
