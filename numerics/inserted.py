"""The inserted compensation layer held exactly (THEORY.md section 6, statements I, PREC-ALPHA, M).

For W (m x n) and an orthogonal basis of its singular vectors on the chosen side, the exact
construction of ``theory.bounds_inserted``: with D = diag(d), d = (alpha x k, 1 x (s - k)),

    output side: A = U D U^T (m x m), W' = A W, C = A^-1    (y = C W' x),
    input side:  B = V D V^T (n x n), W' = W B, C = B^-1    (y = W' C x),

all in rational arithmetic (flint ``fmpq_mat``; A^-1 is the exact inverse, so C W' = W holds
exactly whether or not the basis is exactly orthogonal). With a rational orthogonal basis
(``reparam.rational_svd_matrix``: Cayley transforms) the closed-form norms of
``bounds_inserted.frobenius_squares`` hold exactly as well.

``InsertedProblem`` is ``fp_precision.PrecisionProblem`` for the chain: the pair (W_a, W_b) =
(W, I_m) defended by A (output side: P = W', Q = C) or (I_n, W) defended by C (input side:
P = C, Q = W'), with the search variable K = alpha, so the measured and certified safe-alpha
searches, the error sweeps and the growth fit of PREC run unchanged on the inserted form.
"""
from __future__ import annotations

from typing import Any, Sequence

import flint
import numpy as np

from convrate.errors import InvalidInputError
from convrate.numerics.fp_precision import Defended, PrecisionProblem, _check_K, _exact
from convrate.numerics.nets import EXACT, identity, pack
from convrate.numerics.quadratic import to_fmpq
from convrate.numerics.reparam import rational_svd_matrix
from convrate.theory import bounds_inserted as bi


def diag(values: Sequence[Any]) -> flint.fmpq_mat:
    """Exact diagonal matrix."""
    n = len(values)
    z = flint.fmpq(0)
    return pack([[to_fmpq(values[i]) if i == j else z for j in range(n)] for i in range(n)], EXACT)


def deformation_matrix(basis: flint.fmpq_mat, k: int, alpha: Any) -> flint.fmpq_mat:
    """basis diag(d) basis^T, d = (alpha x k, 1 x rest) (exact)."""
    s = basis.nrows()
    return basis * diag(bi.deformation(k, to_fmpq(alpha), s)) * basis.transpose()


def inserted_factors(W: flint.fmpq_mat, basis: flint.fmpq_mat, k: int, alpha: Any, side: str
                     ) -> tuple[flint.fmpq_mat, flint.fmpq_mat]:
    """(W', C) of the exact construction (module doc); ``basis`` = U (output) or V (input)."""
    bi.check_side(side)
    bi.check_rank(k, W.nrows(), W.ncols())
    bi.check_alpha(alpha)
    M = deformation_matrix(basis, k, alpha)
    if side == "output":
        return M * W, M.inv()
    return W * M, M.inv()


def chain_product(Wp: flint.fmpq_mat, C: flint.fmpq_mat, side: str) -> flint.fmpq_mat:
    """The merged weight: C W' (output side) or W' C (input side), exact."""
    return C * Wp if bi.check_side(side) == "output" else Wp * C


def rational_layer(seed: int, m: int, n: int, sigma: Sequence[Any]) -> tuple[flint.fmpq_mat, flint.fmpq_mat,
                                                                           flint.fmpq_mat]:
    """(W, U, V): W = U Sigma V^T with rational orthogonal U (m x m), V (n x n) and the given
    rational singular values (non-increasing, min(m, n) of them)."""
    return rational_svd_matrix(list(sigma), m, n, np.random.default_rng(seed))


def frob2(M: flint.fmpq_mat) -> flint.fmpq:
    """||M||_F^2, exact."""
    return sum((x * x for x in M.entries()), flint.fmpq(0))


class InsertedProblem(PrecisionProblem):
    """PREC for the inserted form of one layer W (m x n) on data X (N x n): ``evaluate_K(alpha,
    dtype)``, ``safe_K_search`` and the rest of ``PrecisionProblem`` with K = alpha (module doc).
    The basis is the fp64 SVD factor of W read exactly (or ``basis`` if given)."""

    def __init__(self, W: Any, X: Any, k: int, side: str = "output", basis: Any = None) -> None:
        Wq = _exact(W, "W")
        m, n = Wq.nrows(), Wq.ncols()
        bi.check_side(side)
        bi.check_rank(k, m, n)
        if side == "output":
            super().__init__(Wq, identity(m, EXACT), X)
        else:
            super().__init__(identity(n, EXACT), Wq, X)
        self.W, self.k, self.side = Wq, k, side
        if basis is None:
            U, _, Vt = np.linalg.svd(np.array([[float(x) for x in row] for row in Wq.tolist()]).reshape(m, n),
                                     full_matrices=True)
            basis = U if side == "output" else Vt.T
        self.basis = _exact(basis, "basis")
        s = bi.side_width(side, m, n)
        if (self.basis.nrows(), self.basis.ncols()) != (s, s):
            raise InvalidInputError(f"the basis must be {s}x{s} for the {side} side, got "
                                    f"{self.basis.nrows()}x{self.basis.ncols()}")

    def specdef(self, K: float, profile: str = "inserted") -> Defended:
        """The inserted form at alpha = K (exact): output side (P, Q) = (W', C), input side (C, W')."""
        alpha = _check_K(K)
        key = ("inserted", alpha)
        if key not in self._defended:
            Wp, C = inserted_factors(self.W, self.basis, self.k, alpha, self.side)
            self._defended[key] = self._make(Wp, C) if self.side == "output" else self._make(C, Wp)
        return self._defended[key]

    def chain(self, alpha: float) -> tuple[flint.fmpq_mat, flint.fmpq_mat]:
        """(W', C) at ``alpha`` (exact)."""
        D = self.specdef(alpha)
        return (D.P, D.Q) if self.side == "output" else (D.Q, D.P)


__all__ = ["InsertedProblem", "chain_product", "deformation_matrix", "diag", "frob2", "inserted_factors",
           "rational_layer"]
