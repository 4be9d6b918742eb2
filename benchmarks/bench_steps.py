#!/usr/bin/env python
"""Benchmark: exact GD steps-to-target, ``steps_to``'s closed form vs naive iteration.

Problem: q(e) = 1/2 e^T H e in H's eigenbasis (``Quadratic.from_spectrum``), n eigenvalues
log-uniform in [1, kappa] (endpoints included, rationals of denominator 64), e_0 with seeded
rational components, step eta* = 2 / (1 + kappa), target q_t <= tol q_0 (F1:
q_t = 1/2 sum_i lambda_i c_i^2 (1 - eta lambda_i)^(2t), so the count T grows like kappa).

- closed form: ``steps_to`` (exponential search + bisection on t, each comparison decided on
  arb balls: O(n log T) work); best of 3 on a freshly built problem;
- iteration: the per-mode terms w_i = lambda_i c_i^2 (1 - eta lambda_i)^(2t) advanced by one
  multiplication per mode and step, loss = fsum(w), in mpmath at 30 digits (its kernels, bit
  for bit ``mpf`` arithmetic without the object overhead), until q_t <= tol q_0 (O(n T) work). Rounding: after t steps each w_i carries a relative error
  below t * 10^-29, so the iteration can disagree with the certified count only when q_t
  lies within that of the target; every disagreement is reported (and fails the run). It is
  run only when its estimate (the rate over a probe of up to 2000 steps, times T) is under
  ``--cap`` seconds; otherwise the row gives the estimate.

The growth claim is read off the rows: the log-log slope of time against T is ~0 for the
closed form (log T) and ~1 for the iteration (T).

Usage: python benchmarks/bench_steps.py [--quick] [--json OUT] [--tol 1e-6] [--cap 60]
       [--kappas 1e2,1e6] [--ns 10,50]
"""
from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction
from typing import Any

import mpmath
import numpy as np
from mpmath.libmp import mpf_gt, mpf_mul, mpf_sum, round_nearest

from convrate.numerics.optimizers import GD
from convrate.numerics.quadratic import Quadratic
from convrate.numerics.steps import steps_to

from bench_common import BenchmarkError, fmt, loglog_slope, main, progress

ITER_DPS = 30
PROBE_STEPS = 2000
TARGET_KAPPA = 10**6
TARGET_SPEEDUP = 1000.0
#: the headline instance: kappa = 1e10, n = 50, tol = 1e-12 (iteration far out of reach)
HEADLINE = (10**10, 50, Fraction(1, 10**12))


def make_problem(kappa: int, n: int, seed: int = 0) -> tuple[list[Fraction], list[Fraction]]:
    """(eigenvalues, components of e_0), exact rationals, seeded."""
    if n < 2 or kappa < 2:
        raise BenchmarkError(f"need n >= 2 and kappa >= 2, got n={n}, kappa={kappa}")
    rng = np.random.default_rng(seed)
    u = np.sort(rng.uniform(0, 1, n - 2))
    lam = [Fraction(1)] + [Fraction(round(64 * float(kappa) ** x), 64) for x in u] + [Fraction(kappa)]
    c = [Fraction(int(rng.integers(1, 10)) * (1 if rng.random() < 0.5 else -1), int(rng.integers(1, 8)))
         for _ in range(n)]
    return lam, c


def closed_form(lam: list[Fraction], c: list[Fraction], eta: Fraction, tol: Fraction,
                repeat: int = 3) -> tuple[int, float]:
    """(count, best seconds of ``repeat`` runs, each on a freshly built problem)."""
    best, count = float("inf"), -1
    for _ in range(repeat):
        t0 = time.perf_counter()
        count = steps_to(Quadratic.from_spectrum(lam, c), GD(eta), tol)
        best = min(best, time.perf_counter() - t0)
    return count, best


def iteration(lam: list[Fraction], c: list[Fraction], eta: Fraction, tol: Fraction,
              max_steps: int) -> tuple[int | None, float]:
    """Naive iteration: (count, or None if ``max_steps`` came first; seconds). It runs on
    mpmath's own kernels (``libmp.mpf_mul``, ``mpf_sum``, round-to-nearest at the working
    precision): bit for bit what ``mpf`` products and ``mpmath.fsum`` compute, without the
    per-operation object overhead."""
    with mpmath.workdps(ITER_DPS):
        prec, rnd = mpmath.mp.prec, round_nearest
        mp = lambda x: mpmath.mpf(x.numerator) / x.denominator  # noqa: E731
        w = [(mp(l) * mp(ci) ** 2)._mpf_ for l, ci in zip(lam, c)]
        g = [((1 - mp(eta) * mp(l)) ** 2)._mpf_ for l in lam]
        target = (mp(tol) * mpmath.mpf(mpf_sum(w, prec, rnd)))._mpf_
        t0 = time.perf_counter()
        t = 0
        while mpf_gt(mpf_sum(w, prec, rnd), target):
            if t >= max_steps:
                return None, time.perf_counter() - t0
            w = [mpf_mul(wi, gi, prec, rnd) for wi, gi in zip(w, g)]
            t += 1
        return t, time.perf_counter() - t0


def bench_row(kappa: int, n: int, tol: Fraction, cap: float, seed: int) -> dict[str, Any]:
    lam, c = make_problem(kappa, n, seed)
    eta = Fraction(2, 1 + kappa)
    count, t_closed = closed_form(lam, c, eta, tol)
    row: dict[str, Any] = {"kappa": kappa, "n": n, "tol": str(tol), "count": count, "closed_form_s": t_closed}
    probe = min(PROBE_STEPS, count)
    _, t_probe = iteration(lam, c, eta, tol, probe)
    est = t_probe / max(probe, 1) * count
    row["iteration_estimate_s"] = est
    if est > cap:
        row.update(iteration_s=None, iteration_count=None, speedup=None, estimated_speedup=est / t_closed,
                   identical=None, iteration_note=f"skipped (est. {est:.3g} s)")
        return row
    it_count, t_iter = iteration(lam, c, eta, tol, count + 10)
    row.update(iteration_s=t_iter, iteration_count=it_count, speedup=t_iter / t_closed,
               estimated_speedup=est / t_closed, identical=(it_count == count), iteration_note="")
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    tol = Fraction(args.tol)
    if not 0 < tol < 1:
        raise BenchmarkError(f"--tol must lie in (0, 1), got {args.tol}")
    kappas = [10**k for k in (2, 4, 6, 8, 10)] if args.quick else [10**k for k in range(2, 11)]
    ns = [10, 50] if args.quick else [10, 50, 200]
    try:
        if args.kappas:
            kappas = [int(float(k)) for k in args.kappas.split(",")]
        if args.ns:
            ns = [int(k) for k in args.ns.split(",")]
    except ValueError:
        raise BenchmarkError(f"--kappas / --ns must be comma-separated numbers: {args.kappas!r}, {args.ns!r}") from None
    grid = [(k, n, tol) for k in kappas for n in ns] + [HEADLINE]
    rows = []
    with progress() as prog:
        task = prog.add_task("steps_to", total=len(grid))
        for kappa, n, t in grid:
            prog.update(task, description=f"steps_to kappa={kappa:.0e} n={n}")
            rows.append(bench_row(kappa, n, t, args.cap, args.seed))
            prog.advance(task)
    grid_rows = rows[:-1]
    slopes = []
    for n in ns:
        rs = [r for r in grid_rows if r["n"] == n]
        its = [r for r in rs if r["iteration_s"] is not None]
        slopes.append({"n": n, "closed_form_vs_T": loglog_slope([r["count"] for r in rs], [r["closed_form_s"] for r in rs]),
                       "iteration_vs_T": loglog_slope([r["count"] for r in its], [r["iteration_s"] for r in its])})
    mismatches = [r for r in rows if r["identical"] is False]
    return {"benchmark": "steps", "quick": args.quick, "seed": args.seed, "tol": str(tol), "cap_s": args.cap,
            "iteration_dps": ITER_DPS, "mpmath_backend": mpmath.libmp.BACKEND, "rows": rows, "slopes": slopes,
            "headline": rows[-1], "failed": bool(mismatches),
            "mismatches": [{"kappa": r["kappa"], "n": r["n"], "closed_form": r["count"],
                            "iteration": r["iteration_count"]} for r in mismatches]}


def markdown(res: dict[str, Any]) -> str:
    lines = ["| kappa | n | tol | T (steps) | closed form (s) | iteration (s) | speedup | identical |",
             "|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in res["rows"]:
        it = fmt(r["iteration_s"]) if r["iteration_s"] is not None else r["iteration_note"]
        sp = f"{r['speedup']:.3g}x" if r["speedup"] is not None else f"(est. {r['estimated_speedup']:.3g}x)"
        ident = "-" if r["identical"] is None else ("yes" if r["identical"] else "NO")
        lines.append(f"| {r['kappa']:.0e} | {r['n']} | {float(Fraction(r['tol'])):.0e} | {r['count']} | "
                     f"{fmt(r['closed_form_s'])} | {it} | {sp} | {ident} |")
    lines += ["", "Growth (log-log slope of seconds against T, over kappa): "
              + "; ".join(f"n={s['n']}: closed form {fmt(s['closed_form_vs_T'], 2)}, iteration "
                          f"{fmt(s['iteration_vs_T'], 2)}" for s in res["slopes"])
              + f". Iteration in mpmath at {res['iteration_dps']} digits ({res['mpmath_backend']} backend), "
              f"run where its estimate is under {fmt(res['cap_s'])} s."]
    if res["mismatches"]:
        lines.append(f"**Disagreements**: {res['mismatches']}")
    return "\n".join(lines)


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """T-steps on the rows at kappa = 1e6 where the iteration ran (or, when it ran on none, on
    the estimates, which cannot meet the target: the answers were not compared)."""
    rows = [r for r in res["rows"] if r["kappa"] == TARGET_KAPPA and r["tol"] == res["tol"]]
    measured = [r for r in rows if r["speedup"] is not None]
    statement = f"steps_to is >= {TARGET_SPEEDUP:g}x faster than iteration at kappa=1e6, identical answers"
    out = []
    for r in measured or rows:
        ran = r["speedup"] is not None
        ratio = r["speedup"] if ran else r["estimated_speedup"]
        met = ran and r["identical"] is True and ratio >= TARGET_SPEEDUP
        why = ""
        if not ran:
            why = f"iteration not run (estimate {r['iteration_estimate_s']:.3g} s over the {res['cap_s']:g} s cap)"
        elif r["identical"] is False:
            why = f"answers differ: closed form {r['count']}, iteration {r['iteration_count']}"
        elif ratio < TARGET_SPEEDUP:
            why = f"missed by {TARGET_SPEEDUP / ratio:.3g}x"
        out.append({"id": "T-steps", "instance": f"kappa=1e6, n={r['n']}", "statement": statement,
                    "measured": f"{ratio:.3g}x" + (f", identical: {fmt(r['identical'])}" if ran else " (estimated)"),
                    "ratio": ratio, "threshold": f">= {TARGET_SPEEDUP:g}", "met": met, "why": why})
    if not rows:
        out.append({"id": "T-steps", "instance": "kappa=1e6", "statement": statement, "measured": "not in the grid",
                    "ratio": None, "threshold": f">= {TARGET_SPEEDUP:g}", "met": False, "why": "not measured"})
    return out


def _add(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--tol", type=str, default="1e-6", help="target ratio tol (default 1e-6)")
    ap.add_argument("--cap", type=float, default=60.0, help="skip iterations estimated above this many seconds")
    ap.add_argument("--kappas", type=str, default=None, help="comma-separated kappas (overrides the preset)")
    ap.add_argument("--ns", type=str, default=None, help="comma-separated dimensions (overrides the preset)")


if __name__ == "__main__":
    sys.exit(main(__doc__.splitlines()[0], run, markdown, _add))
