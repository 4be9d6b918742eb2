"""The commutant of rotary position embeddings (THEORY.md S4): which maps of a head's query
coordinates keep every RoPE score.

Layout (transformers' ``rotate_half``): a head of dimension d = 2p has rotary pairs
(j, j + p), j = 0..p-1, with angular frequency w_j (radians per position). Position n
multiplies pair j by E_n = cos(n w_j) I + sin(n w_j) J, J = [[0, -1], [1, 0]] on (x_j, y_j) =
(coordinate j, coordinate j + p); in complex form z_j = x_j + i y_j -> e^{i n w_j} z_j.

A map q -> A q, k -> A^-T k keeps every score q_m^T E_m^T E_n k_n iff A commutes with E_1
(offsets 0 and 1 force it; then it commutes with every E_n, see ``theory.derive_llm``). With
e_j = e^{i w_j} the commutant splits into classes of pairs with the same e_j up to complex
conjugation (w_j mod 2 pi equal up to sign):

* ``rotary``: one pair with e_j not real: A = r R(phi) on the pair (a complex scalar
  r e^{i phi}; 2 real parameters);
* ``coinciding``: m > 1 pairs with the same e_j (not real): A is a complex m x m matrix Z acting
  on (z_j) (GL(m, C), 2 m^2 real parameters); a pair whose w_j has the opposite sign is
  conjugated (y_j -> -y_j) first;
* ``unrotated``: pairs with e_j = 1 (w_j = 0 mod 2 pi; the dimensions RoPE leaves unrotated,
  e.g. transformers' ``proportional`` rope with ``partial_rotary_factor`` < 1): E_n = I, so
  GL(2m, R) on all their 2m coordinates;
* ``half-turn``: pairs with e_j = -1 (w_j = pi mod 2 pi): E_n = (-1)^n I, GL(2m, R) as well.
  A float32 frequency is never exactly pi, so this class arises only from exact frequencies.

Different classes do not mix (the Sylvester operator X -> E_1 X - X E_1' between two classes
is invertible). ``project`` is the Frobenius-orthogonal projection onto this commutant.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

CLASS_KINDS = ("rotary", "coinciding", "unrotated", "half-turn")


@dataclass(frozen=True)
class RopeClass:
    """Pairs sharing e^{i w} up to conjugation: ``kind`` (module doc), ``pairs`` (indices j),
    ``signs`` (+1, or -1 where the pair's wrapped frequency is negative), ``angle`` |w| mod 2 pi
    in [0, pi]."""

    kind: str
    pairs: tuple[int, ...]
    signs: tuple[int, ...]
    angle: float

    def coordinates(self, p: int) -> list[int]:
        """Head coordinates of the class: x-coordinates (j) then y-coordinates (j + p)."""
        return list(self.pairs) + [j + p for j in self.pairs]


def wrapped_angle(w: float) -> float:
    """w mod 2 pi in [-pi, pi] (IEEE remainder: exact for a float64 w)."""
    return math.remainder(float(w), 2 * math.pi)


def rope_classes(freqs: Sequence[float]) -> list[RopeClass]:
    """The commutant's classes for frequencies w_0..w_{p-1} (exact comparisons of the wrapped
    angles; module doc), in order of first pair."""
    by_key: dict[float, list[tuple[int, int]]] = {}
    for j, w in enumerate(freqs):
        a = wrapped_angle(w)
        by_key.setdefault(abs(a), []).append((j, -1 if a < 0 else 1))
    out = []
    for key, members in sorted(by_key.items(), key=lambda kv: kv[1][0][0]):
        pairs = tuple(j for j, _ in members)
        if key == 0.0:
            kind, signs = "unrotated", (1,) * len(pairs)
        elif key == math.pi:
            kind, signs = "half-turn", (1,) * len(pairs)
        else:
            kind, signs = ("rotary" if len(pairs) == 1 else "coinciding"), tuple(s for _, s in members)
        out.append(RopeClass(kind, pairs, signs, key))
    return out


def _sign_vector(classes: Sequence[RopeClass], p: int) -> torch.Tensor:
    """S = diag(+-1): -1 on the y-coordinate of every pair with a negative wrapped frequency."""
    s = torch.ones(2 * p, dtype=torch.float64)
    for c in classes:
        for j, sg in zip(c.pairs, c.signs):
            if sg < 0:
                s[j + p] = -1.0
    return s


def project(A: torch.Tensor, freqs: Sequence[float]) -> torch.Tensor:
    """Frobenius-orthogonal projection of a d x d matrix onto the commutant: entries between
    different classes -> 0; a complex class's block [[P11, P12], [P21, P22]] (x then y
    coordinates, after the sign flip S) -> [[B, -C], [C, B]] with B = (P11 + P22)/2,
    C = (P21 - P12)/2; GL classes kept."""
    p = len(freqs)
    A = torch.as_tensor(A, dtype=torch.float64)
    if A.shape != (2 * p, 2 * p):
        raise ValueError(f"expected a {2 * p} x {2 * p} matrix, got {list(A.shape)}")
    classes = rope_classes(freqs)
    s = _sign_vector(classes, p)
    As = s[:, None] * A * s[None, :]
    out = torch.zeros_like(As)
    for c in classes:
        idx = torch.tensor(c.coordinates(p))
        blk = As[idx][:, idx]
        if c.kind in ("rotary", "coinciding"):
            m = len(c.pairs)
            B = (blk[:m, :m] + blk[m:, m:]) / 2
            C = (blk[m:, :m] - blk[:m, m:]) / 2
            blk = torch.cat([torch.cat([B, -C], 1), torch.cat([C, B], 1)], 0)
        out[idx[:, None], idx[None, :]] = blk
    return s[:, None] * out * s[None, :]


def commutator_distance(A: torch.Tensor, freqs: Sequence[float]) -> float:
    """||A - project(A)||_F / ||A||_F (0 exactly for a member built from its parameters)."""
    A = torch.as_tensor(A, dtype=torch.float64)
    n = float(A.norm())
    return float((A - project(A, freqs)).norm()) / n if n > 0 else 0.0


def embed_complex(Z: torch.Tensor, cls: RopeClass, p: int) -> torch.Tensor:
    """The d x d real matrix of a complex m x m matrix Z on a complex class (identity elsewhere)."""
    m = len(cls.pairs)
    R = torch.cat([torch.cat([Z.real, -Z.imag], 1), torch.cat([Z.imag, Z.real], 1)], 0).to(torch.float64)
    s = torch.tensor(list(cls.signs) * 2, dtype=torch.float64)
    s[:m] = 1.0
    R = s[:, None] * R * s[None, :]
    out = torch.eye(2 * p, dtype=torch.float64)
    idx = torch.tensor(cls.coordinates(p))
    out[idx[:, None], idx[None, :]] = R
    return out


def random_member(freqs: Sequence[float], gen: torch.Generator, log_scale: float = 1.0) -> torch.Tensor:
    """A random invertible element of the commutant: per class exp(log_scale M) with M Gaussian
    (complex for the complex classes, real 2m x 2m for the GL classes), entries N(0, 1/dim)."""
    p = len(freqs)
    A = torch.eye(2 * p, dtype=torch.float64)
    for c in rope_classes(freqs):
        m = len(c.pairs)
        idx = torch.tensor(c.coordinates(p))
        if c.kind in ("unrotated", "half-turn"):
            M = torch.randn(2 * m, 2 * m, generator=gen, dtype=torch.float64) / math.sqrt(2 * m)
            blk = torch.linalg.matrix_exp(log_scale * M)
            A[idx[:, None], idx[None, :]] = blk
        else:
            M = torch.complex(torch.randn(m, m, generator=gen, dtype=torch.float64),
                              torch.randn(m, m, generator=gen, dtype=torch.float64)) / math.sqrt(2 * m)
            Z = torch.linalg.matrix_exp(log_scale * M)
            E = embed_complex(Z, c, p)
            A[idx[:, None], idx[None, :]] = E[idx[:, None], idx[None, :]]
    return A


__all__ = ["CLASS_KINDS", "RopeClass", "commutator_distance", "embed_complex", "project", "random_member",
           "rope_classes", "wrapped_angle"]
