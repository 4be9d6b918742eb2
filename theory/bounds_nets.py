"""Bounds for the exact-network checks that ``theory.bounds`` does not state.

Plain functions of exact integers (no torch, no floating point).
"""
from __future__ import annotations

from fractions import Fraction

from convrate.errors import InvalidInputError


def pair_parameters(r: int, n_in: int, n_out: int, bias: bool) -> int:
    """Parameters of a defended pair (W_a: r x n_in, b_a: r if ``bias``, W_b: n_out x r)."""
    return r * (n_in + (1 if bias else 0) + n_out)


def recovery_extra_parameters_bound_pair(r: int, n_in: int, n_out: int, bias: bool) -> Fraction:
    """R1 for a pair with or without the bias b_a: 2 (r / min(n_in, n_out)) * (defended
    parameters of the pair). ``bounds.recovery_extra_parameters_bound`` is the case
    bias=True; a bias-free pair (deep linear nets) has r (n_in + n_out) parameters. Since
    2 r^2 <= 2 r^2 (n_in + n_out) / min(n_in, n_out), the S1 cost 2 r^2 always satisfies it."""
    if min(r, n_in, n_out) < 1:
        raise InvalidInputError(f"dimensions must be >= 1, got r={r}, n_in={n_in}, n_out={n_out}")
    return Fraction(2 * r, min(n_in, n_out)) * pair_parameters(r, n_in, n_out, bias)
