#!/usr/bin/env python
"""Benchmark: exact GD steps-to-target by the closed form (``steps_to``) vs naive iteration.

Problem: q(e) = 1/2 e^T H e in H's eigenbasis (``Quadratic.from_spectrum``), n eigenvalues
log-uniform in [1, kappa] (endpoints included, rationals of denominator 64), e0 with seeded
rational components, step eta* = 2 / (1 + kappa), target q_t <= tol q_0.

- closed form: ``steps_to`` (exponential search + bisection on t, each comparison certified
  with arb balls; O(n log t)); timed on a freshly built problem, best of 3;
- iteration: the per-mode loss terms w_i = lambda_i c_i^2 (1 - eta lambda_i)^(2t) advanced by
  one multiplication per mode and step, loss = fsum(w), in mpmath at 30 digits, until
  q_t <= tol q_0 (O(n t)). It is run only when its estimate (timed over 2000 steps, times the
  count) is under ``--cap`` seconds; otherwise the row says "skipped (est. X s)".

Usage: python benchmarks/bench_steps_to.py [--quick] [--json OUT] [--tol 1e-6] [--cap 60]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from fractions import Fraction

import mpmath
import numpy as np

from convrate.numerics.optimizers import GD
from convrate.numerics.quadratic import Quadratic
from convrate.numerics.steps import steps_to

ITER_DPS = 30


def make_problem(kappa: int, n: int, seed: int = 0) -> tuple[list[Fraction], list[Fraction]]:
    rng = np.random.default_rng(seed)
    u = np.sort(rng.uniform(0, 1, n - 2))
    lam = [Fraction(1)] + [Fraction(round(64 * float(kappa) ** x), 64) for x in u] + [Fraction(kappa)]
    c = [Fraction(int(rng.integers(1, 10)) * (1 if rng.random() < 0.5 else -1), int(rng.integers(1, 8)))
         for _ in range(n)]
    return lam, c


def closed_form(lam: list[Fraction], c: list[Fraction], eta: Fraction, tol: Fraction, repeat: int = 3) -> tuple[int, float]:
    best, count = float("inf"), -1
    for _ in range(repeat):
        t0 = time.perf_counter()
        count = steps_to(Quadratic.from_spectrum(lam, c), GD(eta), tol)
        best = min(best, time.perf_counter() - t0)
    return count, best


def iteration(lam: list[Fraction], c: list[Fraction], eta: Fraction, tol: Fraction, max_steps: int) -> tuple[int | None, float]:
    """Naive iteration; returns (count or None if max_steps reached first, seconds)."""
    with mpmath.workdps(ITER_DPS):
        mp = lambda x: mpmath.mpf(x.numerator) / x.denominator  # noqa: E731
        w = [mp(l) * mp(ci) ** 2 for l, ci in zip(lam, c)]
        g = [(1 - mp(eta) * mp(l)) ** 2 for l in lam]
        target = mp(tol) * mpmath.fsum(w)
        t0 = time.perf_counter()
        t = 0
        while mpmath.fsum(w) > target:
            if t >= max_steps:
                return None, time.perf_counter() - t0
            w = [wi * gi for wi, gi in zip(w, g)]
            t += 1
        return t, time.perf_counter() - t0


def bench_row(kappa: int, n: int, tol: Fraction, cap: float) -> dict:
    lam, c = make_problem(kappa, n)
    eta = Fraction(2, 1 + kappa)
    count, t_closed = closed_form(lam, c, eta, tol)
    row = {"kappa": kappa, "n": n, "tol": str(tol), "count": count, "closed_form_s": t_closed}
    probe = min(2000, count)
    _, t_probe = iteration(lam, c, eta, tol, probe)
    est = t_probe / max(probe, 1) * count
    row["iteration_estimate_s"] = est
    if est > cap:
        row.update(iteration_s=None, speedup=None, identical=None, iteration_note=f"skipped (est. {est:.3g} s)")
        return row
    it_count, t_iter = iteration(lam, c, eta, tol, count + 10)
    row.update(iteration_s=t_iter, iteration_count=it_count, speedup=t_iter / t_closed,
               identical=(it_count == count), iteration_note="")
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| kappa | n | tol | count | closed form (s) | iteration (s) | speedup | identical |",
             "|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        it = f"{r['iteration_s']:.3g}" if r["iteration_s"] is not None else r["iteration_note"]
        sp = f"{r['speedup']:.3g}x" if r["speedup"] is not None else "-"
        ident = "-" if r["identical"] is None else ("yes" if r["identical"] else "NO")
        lines.append(f"| {r['kappa']:.0e} | {r['n']} | {float(Fraction(r['tol'])):.0e} | {r['count']} | "
                     f"{r['closed_form_s']:.3g} | {it} | {sp} | {ident} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="kappa in {1e2, 1e4, 1e6, 1e8, 1e10}, n in {10, 50}")
    ap.add_argument("--json", metavar="OUT", help="write the rows as JSON here")
    ap.add_argument("--tol", type=str, default="1e-6", help="target ratio tol (default 1e-6)")
    ap.add_argument("--cap", type=float, default=60.0, help="skip iterations estimated above this many seconds")
    ap.add_argument("--kappas", type=str, default=None, help="comma-separated kappas (overrides the preset)")
    ap.add_argument("--ns", type=str, default=None, help="comma-separated dimensions (overrides the preset)")
    args = ap.parse_args(argv)
    tol = Fraction(args.tol)
    kappas = [10**k for k in (2, 4, 6, 8, 10)] if args.quick else [10**k for k in range(2, 11)]
    ns = [10, 50] if args.quick else [10, 50, 200]
    if args.kappas:
        kappas = [int(float(k)) for k in args.kappas.split(",")]
    if args.ns:
        ns = [int(k) for k in args.ns.split(",")]
    rows = []
    for kappa in kappas:
        for n in ns:
            r = bench_row(kappa, n, tol, args.cap)
            rows.append(r)
            print(f"kappa={kappa:.0e} n={n}: count={r['count']} closed={r['closed_form_s']:.3g}s "
                  f"iteration={r['iteration_s'] if r['iteration_s'] is not None else r['iteration_note']}",
                  file=sys.stderr, flush=True)
    # headline: kappa = 1e10, n = 50, tol = 1e-12
    head = bench_row(10**10, 50, Fraction(1, 10**12), args.cap)
    rows.append(head)
    print(markdown(rows))
    print(f"\nheadline: steps_to at kappa=1e10, n=50, tol=1e-12 -> {head['count']} steps in "
          f"{head['closed_form_s']:.3g} s (iteration {head['iteration_note'] or head['iteration_s']})")
    if args.json:
        meta = {"python": platform.python_version(), "machine": platform.machine(), "iteration_dps": ITER_DPS,
                "cap_s": args.cap, "quick": args.quick, "mpmath_backend": mpmath.libmp.BACKEND}
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
