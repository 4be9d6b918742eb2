"""Bound and structure functions of the decoder-LLM statements S4 and O (THEORY.md section 6).

* S4 (``rope_commutant_dimension``): a rotary pair with angular frequency w is the unit complex
  number e^{i w}; RoPE's rotation at position 1 is block-diagonal in these. Given the points
  (cos w_j, sin w_j) exactly (rationals from a Pythagorean parametrization, or any exact
  numbers), pairs whose points are equal up to complex conjugation form a class; the maps A
  with A R_1 = R_1 A form, per class of m pairs, GL(m, C) (real dimension 2 m^2) when the point
  is not real and GL(2m, R) (dimension 4 m^2) when it is +1 (unrotated) or -1 (half-turn).
* O (``adam_first_step_decrease_ratio_bounds``, ``haar_l1_mean``, ``is_signed_permutation``):
  with eps -> 0 the first Adam / RMSprop / Adagrad step from gradient g is -eta sign(g); on the
  rotated loss L' = L o Q^T it is -eta sign(Q g), i.e. -eta Q^T sign(Q g) mapped back. Its
  first-order decrease is eta <g, Q^T sign(Q g)> = eta ||Q g||_1, against eta ||g||_1
  undefended, and

      ||g||_2 <= ||Q g||_1 <= sqrt(n) ||g||_2,

  so the ratio rho(Q) = ||Q g||_1 / ||g||_1 lies in [||g||_2 / ||g||_1, sqrt(n) ||g||_2 / ||g||_1]
  (both ends attained: Q g on a coordinate axis, resp. on a diagonal). For Q Haar-distributed
  on O(n), Q g / ||g||_2 is uniform on the sphere and E ||Q g||_1 = n c_n ||g||_2 with
  c_n = E|u_1| = Gamma(n/2) / (sqrt(pi) Gamma((n+1)/2)) (``haar_l1_mean``); c_n ~
  sqrt(2 / (pi n)). Adam commutes with Q for every gradient history iff Q is a signed
  permutation (``is_signed_permutation``).
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any, Sequence

import mpmath

__all__ = ["adam_first_step_decrease_ratio_bounds", "haar_l1_mean", "is_signed_permutation",
           "rope_class_structure", "rope_commutant_dimension"]


def rope_class_structure(points: Sequence[tuple[Any, Any]]) -> list[tuple[str, tuple[int, ...]]]:
    """Classes of rotary pairs from their exact points (cos w_j, sin w_j): (kind, pairs) with kind
    "unrotated" (point 1), "half-turn" (point -1), "rotary" (one pair) or "coinciding" (m > 1
    pairs with the same point up to conjugation). Exact comparisons (use rationals)."""
    classes: dict[tuple[Any, Any], list[int]] = {}
    for j, (c, s) in enumerate(points):
        key = (c, abs(s))
        classes.setdefault(key, []).append(j)
    out = []
    for (c, s), pairs in classes.items():
        if s == 0:
            kind = "unrotated" if c > 0 else "half-turn"
        else:
            kind = "rotary" if len(pairs) == 1 else "coinciding"
        out.append((kind, tuple(pairs)))
    return out


def rope_commutant_dimension(points: Sequence[tuple[Any, Any]]) -> int:
    """Real dimension of {A : A R_1 = R_1 A} (module doc): sum over classes of 2 m^2 (complex
    classes) or 4 m^2 (real points +-1)."""
    dim = 0
    for kind, pairs in rope_class_structure(points):
        m = len(pairs)
        dim += 4 * m * m if kind in ("unrotated", "half-turn") else 2 * m * m
    return dim


def adam_first_step_decrease_ratio_bounds(g: Sequence[Any]) -> tuple[mpmath.mpf, mpmath.mpf]:
    """[||g||_2 / ||g||_1, sqrt(n) ||g||_2 / ||g||_1]: the range of ||Q g||_1 / ||g||_1 over
    orthogonal Q (module doc), at the current mpmath precision. g must be nonzero."""
    x = [mpmath.mpf(v.numerator) / v.denominator if isinstance(v, Fraction) else mpmath.mpf(v) for v in g]
    l1 = mpmath.fsum(abs(v) for v in x)
    if l1 == 0:
        raise ValueError("g must be nonzero")
    l2 = mpmath.sqrt(mpmath.fsum(v * v for v in x))
    return l2 / l1, mpmath.sqrt(len(x)) * l2 / l1


def haar_l1_mean(n: int) -> mpmath.mpf:
    """n c_n = n Gamma(n/2) / (sqrt(pi) Gamma((n+1)/2)): E ||Q g||_1 / ||g||_2 for Q Haar on O(n)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    return n * mpmath.gamma(mpmath.mpf(n) / 2) / (mpmath.sqrt(mpmath.pi) * mpmath.gamma(mpmath.mpf(n + 1) / 2))


def is_signed_permutation(Q: Sequence[Sequence[Any]]) -> bool:
    """Exactly one nonzero entry, equal to +-1, in every row and column."""
    rows = [list(r) for r in Q]
    n = len(rows)
    if any(len(r) != n for r in rows):
        return False
    for line in rows + [list(c) for c in zip(*rows)]:
        nz = [v for v in line if v != 0]
        if len(nz) != 1 or abs(nz[0]) != 1:
            return False
    return True
