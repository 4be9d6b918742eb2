"""Element kinds of the symmetry groups: what an element is, how it is checked, inverted and measured.

A group of width r has elements of one kind:

==================== ============================ ========================= =========
kind                 element                      group                     stored as
==================== ============================ ========================= =========
positive-diagonal    d, d_i > 0                   ReLU units (S2)           vector r
diagonal             d, d_i != 0 (signs allowed)  SwiGLU up/down (S6),      vector r
                                                  RMSNorm gamma (S7)
gl                   A in GL(r)                   attention pairs (S1, S5)  r x r
rope                 A in GL(r) commuting with    QK under RoPE (S4)        r x r
                     RoPE's rotation (``rope``)
orthogonal           Q, Q^T Q = I                 residual stream (S7)      r x r
permutation          P, a permutation matrix      units, heads, KV groups   r x r
==================== ============================ ========================= =========

A diagonal element d acts as diag(d). On an "A_invT" slot the action is A^-T: 1/d for the
vector kinds, A itself for orthogonal and permutation elements (A^-T = A), a solve otherwise.
kappa(element) = sigma_max / sigma_min (|d| for vectors; 1 for orthogonal and permutation).
``stored_numbers`` is what R1 stores per frozen layer (A or A^-1): r for vectors and for a
permutation (an index vector), r^2 for the dense kinds.

Membership tolerances (float64, u = 2^-53): a rope element must satisfy ||A - Pi(A)||_F <=
MEMBERSHIP_RTOL(r) ||A||_F with Pi the projection onto RoPE's commutant (``rope.project``), an
orthogonal element ||Q^T Q - I||_2 <= MEMBERSHIP_RTOL(r); MEMBERSHIP_RTOL(r) = 64 r u is a few
hundred roundings of r-term sums, while a map outside the group is O(1) away.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from convrate.errors import InvalidInputError, SingularReparameterizationError
from convrate.models import rope

KINDS = ("positive-diagonal", "diagonal", "gl", "rope", "orthogonal", "permutation")
VECTOR_KINDS = ("positive-diagonal", "diagonal")
U64 = 2.0 ** -53


def membership_rtol(r: int) -> float:
    """64 r u_64 (module doc)."""
    return 64 * r * U64


def default_kind(family: str) -> str:
    """Element kind of the original families: S2 -> positive-diagonal, otherwise gl."""
    return "positive-diagonal" if family == "S2" else "gl"


def validate(kind: str, r: int, element: torch.Tensor, name: str, structure: Sequence[float] = ()) -> torch.Tensor:
    """Check that ``element`` belongs to the group (module doc) and return it as float64.
    InvalidInputError for a wrong shape, non-finite entries or an element outside the group;
    SingularReparameterizationError for a singular one."""
    if kind not in KINDS:
        raise InvalidInputError(f"{name}: unknown element kind {kind!r} (supported: {', '.join(KINDS)})")
    e = torch.as_tensor(element).detach().to(torch.float64)
    if not bool(torch.isfinite(e).all()):
        raise InvalidInputError(f"{name}: group element has non-finite entries")
    if kind in VECTOR_KINDS:
        if e.shape == (r, r):
            if bool((e - torch.diag(torch.diagonal(e))).abs().max() > 0):
                raise InvalidInputError(f"{name}: {kind} element must be diagonal")
            e = torch.diagonal(e).clone()
        if e.shape != (r,):
            raise InvalidInputError(f"{name}: {kind} element must have shape ({r},), got {list(e.shape)}")
        if kind == "positive-diagonal" and float(e.min()) <= 0:
            raise SingularReparameterizationError(
                f"{name}: element must be positive (ReLU symmetry), min entry {float(e.min())}")
        if float(e.abs().min()) == 0:
            raise SingularReparameterizationError(f"{name}: diagonal element has a zero entry (singular)")
        return e
    if e.shape != (r, r):
        raise InvalidInputError(f"{name}: {kind} element must have shape ({r}, {r}), got {list(e.shape)}")
    if kind == "permutation":
        ok = bool(((e == 0) | (e == 1)).all()) and bool((e.sum(0) == 1).all()) and bool((e.sum(1) == 1).all())
        if not ok:
            raise InvalidInputError(f"{name}: permutation element must be a 0/1 matrix with one 1 per row and column")
        return e
    if kind == "orthogonal":
        err = float(torch.linalg.matrix_norm(e.T @ e - torch.eye(r, dtype=torch.float64), 2))
        if err > membership_rtol(r):
            raise InvalidInputError(f"{name}: element is not orthogonal (||Q^T Q - I||_2 = {err:.2e} > "
                                    f"{membership_rtol(r):.1e}); the residual-stream group is O({r})")
        return e
    s = torch.linalg.svdvals(e)
    if float(s[-1]) <= float(s[0]) * r * torch.finfo(torch.float64).eps:
        raise SingularReparameterizationError(
            f"{name}: group element is singular to float64 precision (sigma_min {float(s[-1]):.3e})")
    if kind == "rope":
        if len(structure) * 2 != r:
            raise InvalidInputError(f"{name}: rope group of width {r} needs {r // 2} frequencies, has {len(structure)}")
        dist = rope.commutator_distance(e, structure)
        if dist > membership_rtol(r):
            raise InvalidInputError(f"{name}: element does not commute with RoPE (distance to the commutant "
                                    f"{dist:.2e} > {membership_rtol(r):.1e}): q -> A q, k -> A^-T k would change "
                                    "the attention scores")
    return e


def identity(kind: str, r: int) -> torch.Tensor:
    return torch.ones(r, dtype=torch.float64) if kind in VECTOR_KINDS else torch.eye(r, dtype=torch.float64)


def inverse(kind: str, e: torch.Tensor) -> torch.Tensor:
    """A^-1 (exact transpose for orthogonal and permutation elements)."""
    if kind in VECTOR_KINDS:
        return 1.0 / e
    if kind in ("orthogonal", "permutation"):
        return e.T.clone()
    return torch.linalg.inv(e)


def transpose(kind: str, e: torch.Tensor) -> torch.Tensor:
    return e.clone() if kind in VECTOR_KINDS else e.T.clone()


def singular_values(kind: str, e: torch.Tensor) -> torch.Tensor:
    if kind in VECTOR_KINDS:
        return e.abs()
    if kind in ("orthogonal", "permutation"):
        return torch.ones(e.shape[0], dtype=torch.float64)
    return torch.linalg.svdvals(e)


def kappa(kind: str, e: torch.Tensor) -> float:
    s = singular_values(kind, e)
    return float(s.max() / s.min())


def is_monomial(kind: str) -> bool:
    """Elements that map coordinate axes to coordinate axes (T applied to ones gives sigma(T))."""
    return kind in VECTOR_KINDS or kind == "permutation"


def stored_numbers(kind: str, r: int) -> int:
    """Numbers R1 stores for one frozen layer of this kind (module doc)."""
    return r if kind in VECTOR_KINDS or kind == "permutation" else r * r


def act(M: torch.Tensor, e: torch.Tensor, kind: str, op: str) -> torch.Tensor:
    """op "A": diag(d) M or A M; op "A_invT": diag(1/d) M, A M (orthogonal, permutation: A^-T = A)
    or A^-T M (solve). M is (r, -1) float64."""
    if kind in VECTOR_KINDS:
        return M * (e if op == "A" else 1.0 / e)[:, None]
    if op == "A" or kind in ("orthogonal", "permutation"):
        return e @ M
    return torch.linalg.solve(e.T, M)


def random(kind: str, r: int, gen: torch.Generator, log_scale: float = 1.0,
           structure: Sequence[float] = ()) -> torch.Tensor:
    """A random element: vectors exp(log_scale N(0,1)) (diagonal: random signs too); gl
    exp(log_scale M), M with N(0, 1/r) entries; rope ``rope.random_member``; orthogonal the Q of
    a Gaussian matrix's QR with sign-fixed diagonal (Haar); permutation a uniform one."""
    if kind in VECTOR_KINDS:
        d = torch.exp(log_scale * torch.randn(r, generator=gen, dtype=torch.float64))
        if kind == "diagonal":
            d = d * torch.where(torch.rand(r, generator=gen) < 0.5, -1.0, 1.0).to(torch.float64)
        return d
    if kind == "rope":
        return rope.random_member(structure, gen, log_scale)
    if kind == "orthogonal":
        Q, R = torch.linalg.qr(torch.randn(r, r, generator=gen, dtype=torch.float64))
        return Q * torch.sign(torch.diagonal(R))[None, :]
    if kind == "permutation":
        return torch.eye(r, dtype=torch.float64)[torch.randperm(r, generator=gen)]
    M = torch.randn(r, r, generator=gen, dtype=torch.float64) / math.sqrt(r)
    return torch.linalg.matrix_exp(log_scale * M)


def permutation_matrix(perm: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """P with P[i, perm[i]] = 1, i.e. (P X)[i] = X[perm[i]]: row i of the result is row perm[i]."""
    idx = torch.as_tensor(perm, dtype=torch.long)
    return torch.eye(len(idx), dtype=torch.float64)[idx]


__all__ = ["KINDS", "VECTOR_KINDS", "act", "default_kind", "identity", "inverse", "is_monomial", "kappa",
           "membership_rtol", "permutation_matrix", "random", "singular_values", "stored_numbers", "transpose",
           "validate"]
