#!/usr/bin/env python
"""Benchmark: certified symmetric eigenvalues vs mpmath's eigensolver, at matched precision.

Matrices: random symmetric rationals S = A + A^T, a_ij = p / q with p uniform in [-99, 99]
and q in [1, 9], seeded; sizes n, working precision d decimal digits (mpmath ``mp.dps = d``,
so ``mp.prec`` bits; python-flint runs at the same number of bits).

- ``mpmath.eigsy``: the uncertified Jacobi/QR eigensolver (no error bound);
- convrate ``certified_spectrum``: eigsy plus a rigorous enclosure in arb balls,
  |lambda_k - lam_k| <= ||E||_F + ||F||_F |lam_k|, E = S - Q diag(lam) Q^T, F = Q^T Q - I;
- python-flint ``acb_mat.eig``: arb's rigorous eigenvalue enclosures (default algorithm).

Reported: seconds (``min_times``: the three interleaved, minimum of ``REPEATS`` rounds), the largest enclosure radius of each certified
method, and the largest actual error of eigsy against flint at twice the bits. Check (fails
the run if violated): every convrate interval and the flint ball of the same eigenvalue
intersect (both are rigorous, so they must).

Usage: python benchmarks/bench_enclosures.py [--quick] [--json OUT] [--seed S]
"""
from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from typing import Any

import flint
import mpmath
import numpy as np

from convrate.numerics.nets import certified_spectrum

from bench_common import fmt, main, min_times, progress

SIZES = {"full": (8, 16, 32), "quick": (8, 16)}
DIGITS = (30, 60)
REPEATS = 3


def random_symmetric(n: int, seed: int) -> list[list[Fraction]]:
    rng = np.random.default_rng(seed)
    A = [[Fraction(int(rng.integers(-99, 100)), int(rng.integers(1, 10))) for _ in range(n)] for _ in range(n)]
    return [[A[i][j] + A[j][i] for j in range(n)] for i in range(n)]


def flint_eig(S: list[list[Fraction]], bits: int) -> list[tuple[mpmath.mpf, mpmath.mpf]]:
    """Ascending (midpoint, radius) of arb's rigorous eigenvalue balls at ``bits`` bits; the
    imaginary parts are enclosures of 0 (S is symmetric) and their radius is added."""
    n = len(S)
    old = flint.ctx.prec
    flint.ctx.prec = bits
    try:
        M = flint.acb_mat(flint.fmpq_mat(n, n, [flint.fmpq(x.numerator, x.denominator) for r in S for x in r]))
        out = [(mpmath.mpf(e.real.mid().str(bits // 3, radius=False)),
                mpmath.mpf(e.real.rad().str(5, radius=False)) + mpmath.mpf(abs(e.imag).upper().str(5, radius=False)))
               for e in M.eig()]
    finally:
        flint.ctx.prec = old
    return sorted(out, key=lambda p: p[0])


def bench_case(n: int, dps: int, seed: int) -> dict[str, Any]:
    S = random_symmetric(n, seed)
    with mpmath.workdps(dps):
        bits = mpmath.mp.prec
        M = mpmath.matrix([[mpmath.mpf(x.numerator) / x.denominator for x in r] for r in S])
        secs = min_times({"eigsy": lambda: mpmath.eigsy(M), "certified": lambda: certified_spectrum(S),
                          "flint": lambda: flint_eig(S, bits)}, REPEATS)
        t_eigsy, t_cert, t_flint = secs["eigsy"], secs["certified"], secs["flint"]
        vals, _ = mpmath.eigsy(M)
        cert = certified_spectrum(S)
        fl = flint_eig(S, bits)
    with mpmath.workdps(2 * dps + 10):
        ref = flint_eig(S, 2 * bits)
        eigsy_sorted = sorted(vals)
        eigsy_err = max(abs(a - r[0]) for a, r in zip(eigsy_sorted, ref))
        consistent = all(abs(c - f[0]) <= rc + f[1] for c, rc, f in zip(cert.values, cert.radius, fl))
        cert_err = max(abs(c - r[0]) for c, r in zip(cert.values, ref))
    return {"n": n, "dps": dps, "bits": bits, "eigsy_s": t_eigsy, "certified_s": t_cert, "flint_s": t_flint,
            "certified_vs_eigsy": t_cert / t_eigsy, "flint_vs_eigsy": t_flint / t_eigsy,
            "certified_radius": float(max(cert.radius)), "flint_radius": float(max(f[1] for f in fl)),
            "eigsy_actual_error": float(eigsy_err), "certified_actual_error": float(cert_err),
            "consistent": consistent}


def run(args: argparse.Namespace) -> dict[str, Any]:
    cases = [(n, d) for n in SIZES["quick" if args.quick else "full"] for d in DIGITS]
    rows = []
    with progress() as prog:
        task = prog.add_task("enclosures", total=len(cases))
        for n, d in cases:
            prog.update(task, description=f"enclosures n={n} dps={d}")
            rows.append(bench_case(n, d, args.seed + n))
            prog.advance(task)
    bad = [r for r in rows if not r["consistent"]]
    return {"benchmark": "enclosures", "quick": args.quick, "seed": args.seed, "repeats": REPEATS, "rows": rows,
            "failed": bool(bad), "inconsistent": [(r["n"], r["dps"]) for r in bad]}


def markdown(res: dict[str, Any]) -> str:
    lines = ["| n | digits (bits) | mpmath eigsy (s) | convrate certified (s) | x eigsy | flint acb_mat.eig (s) "
             "| x eigsy | convrate radius | flint radius | eigsy actual error | consistent |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['n']} | {r['dps']} ({r['bits']}) | {fmt(r['eigsy_s'])} | {fmt(r['certified_s'])} | "
                     f"{fmt(r['certified_vs_eigsy'])} | {fmt(r['flint_s'])} | {fmt(r['flint_vs_eigsy'])} | "
                     f"{r['certified_radius']:.1e} | {r['flint_radius']:.1e} | {r['eigsy_actual_error']:.1e} | "
                     f"{fmt(r['consistent'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(__doc__.splitlines()[0], run, markdown))
