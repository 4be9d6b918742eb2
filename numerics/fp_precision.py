"""PREC measured: how much SpecDef strength K each dtype tolerates before function preservation fails.

The defended pair of THEORY.md S1 is P = A W_a, Q = W_b A^-1 with SpecDef
A = U diag(s) U^T (U the left singular vectors of W_a, s = the profile of
``theory.bounds``, largest s_i on the largest singular value, kappa(A) = K). Here:

* the reparameterization is EXACT: U is the fp64 SVD factor of W_a read as an exact
  rational matrix, s_i the fp64 values of the profile read exactly, A = U diag(s) U^T and
  A^-1 = U^-T diag(1/s) U^-1 in rational arithmetic (flint ``fmpq_mat``), so Q P = W_b W_a
  exactly (the residual of ``theory.bounds_precision`` is 0) and kappa(A) = K (1 + O(1e-15));
* the stored weights are rounded exact -> fp64 (Python, correctly rounded) -> dtype (torch),
  the forward pass y^ = (x^ P^T) Q^T runs in the dtype with torch on CPU;
* the reference W_b W_a x is exact (rational), so the measured error ||y^_k - y_k||_2 of each
  sample is an exact rational under a square root, enclosed in arb at 128 bits.

``FunctionError`` reports max / mean relative output deviation ||y^_k - y_k|| / ||y_k|| and the
rigorous per-sample bound of ``theory.bounds_precision.forward_error_bound``; overflow is any
non-finite value in the casts, the hidden layer or the outputs. ``largest_safe_K`` bisects
on log10 K over FIXED probes (so its result is monotone in the tolerance, see
``safe_K_search``). Units: output units of y; K dimensionless.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Iterable, Sequence

import flint
import mpmath
import numpy as np
import torch

from convrate.errors import InvalidInputError, PrecisionError, SingularReparameterizationError
from convrate.numerics.nets import arb_precision
from convrate.theory import bounds_precision as bp
from convrate.theory.bounds import check_tol, specdef_geometric_profile, specdef_spike_profile

#: the dtypes of PREC, widest first, and their torch dtypes
DTYPES: tuple[str, ...] = ("fp64", "fp32", "bf16", "fp16")
TORCH_DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: SpecDef profiles (s_1 >= ... >= s_r, kappa = K)
PROFILES: dict[str, Callable[[Any, int], list]] = {
    "geometric": specdef_geometric_profile,
    "spike": specdef_spike_profile,
}
#: mpmath digits for evaluating the bound; every bound is inflated by (1 + BOUND_SLACK), which
#: exceeds the relative rounding (< 1e-26: fewer than 1000 roundings of positive terms at 30 digits)
BOUND_DPS = 30
BOUND_SLACK = mpmath.mpf("1e-20")
#: arb bits for the measured errors (exact rationals under a square root)
ARB_BITS = 128
#: default search range and resolution (decades of K) of the safe-K bisection
K_MAX = 1e16
RESOLUTION = 0.02

OVERFLOW, TOLERANCE, NONE = "overflow", "tolerance", "none"


class UnsafeStrengthError(InvalidInputError):
    """A requested SpecDef strength K breaks function preservation in the dtype; names the largest safe K."""

    def __init__(self, message: str, K: float, largest_safe: "SafeK") -> None:
        super().__init__(message)
        self.K = K
        self.largest_safe = largest_safe


# ---------------------------------------------------------------- exact conversions
def _fmpq(x: Any, where: str) -> flint.fmpq:
    if isinstance(x, flint.fmpq):
        return x
    if isinstance(x, Fraction):
        return flint.fmpq(x.numerator, x.denominator)
    if isinstance(x, bool):
        raise InvalidInputError(f"{where}: boolean {x!r} is not a number")
    if isinstance(x, (int, np.integer)):
        return flint.fmpq(int(x))
    v = float(x)
    if not math.isfinite(v):
        raise InvalidInputError(f"{where} is {v} (non-finite)")
    return flint.fmpq(*v.as_integer_ratio())


def _exact(M: Any, name: str) -> flint.fmpq_mat:
    """Exact rational matrix of a 2-D array / tensor / nested list of numbers; rejects non-finite."""
    if isinstance(M, flint.fmpq_mat):
        return M
    if isinstance(M, torch.Tensor):
        M = M.detach().to("cpu", torch.float64).numpy()
    rows = M.tolist() if hasattr(M, "tolist") else [list(r) for r in M]
    if not rows or not isinstance(rows[0], (list, tuple)) or not rows[0]:
        raise InvalidInputError(f"{name} must be a non-empty 2-D matrix")
    if any(len(r) != len(rows[0]) for r in rows):
        raise InvalidInputError(f"{name} has rows of different lengths")
    return flint.fmpq_mat([[_fmpq(x, f"{name}[{i},{j}]") for j, x in enumerate(r)] for i, r in enumerate(rows)])


def _to_float(q: flint.fmpq) -> float:
    """Nearest fp64 of an exact rational (Python int division is correctly rounded); +-inf on overflow."""
    try:
        return int(q.p) / int(q.q)
    except OverflowError:
        return math.copysign(math.inf, int(q.p))


def _floats(M: flint.fmpq_mat) -> np.ndarray:
    return np.array([[_to_float(x) for x in row] for row in M.tolist()], dtype=np.float64).reshape(M.nrows(), M.ncols())


def _frob2(M: flint.fmpq_mat) -> flint.fmpq:
    return sum((x * x for x in M.entries()), flint.fmpq(0))


def _max_abs(M: flint.fmpq_mat) -> Fraction:
    return max(Fraction(int(abs(x).p), int(abs(x).q)) for x in M.entries())


def _max_rowsum(M: flint.fmpq_mat) -> Fraction:
    s = max(sum((abs(x) for x in row), flint.fmpq(0)) for row in M.tolist())
    return Fraction(int(s.p), int(s.q))


def _arb_to_mpf(a: flint.arb, upper: bool) -> mpmath.mpf:
    """An mpf at least (upper) / at most (lower) the ball's end (40 printed digits, pushed out by 1e-30)."""
    end = a.upper() if upper else a.lower()
    with mpmath.workdps(40):
        v = mpmath.mpf(end.str(40, radius=False))
        v = v + abs(v) * mpmath.mpf("1e-30") * (1 if upper else -1)
    return v


def _sqrt_upper(q: flint.fmpq) -> mpmath.mpf:
    with arb_precision(ARB_BITS):
        return _arb_to_mpf(flint.arb(q).sqrt(), upper=True) if q != 0 else mpmath.mpf(0)


# ---------------------------------------------------------------- results
@dataclass(frozen=True)
class FunctionError:
    """Function error of a defended pair in one dtype against the exact undefended function.

    ``rel_errors[k]`` = ||y^_k - y_k||_2 / ||y_k||_2 (arb midpoints, |reported - true| <= ``err_rel``);
    ``abs_errors[k]`` = ||y^_k - y_k||_2 (midpoints, radius <= ``err_abs``); ``bounds[k]`` the
    rigorous PREC bound on ||y^_k - y_k||_2 (already inflated by BOUND_SLACK; None when the model
    does not apply: overflow or k u >= 1); ``bound_rel[k]`` >= bounds[k] / ||y_k|| (rigorous).
    On overflow the errors are inf and ``stage`` says where the first non-finite value appeared
    ("cast", "hidden" or "output")."""

    dtype: str
    max_rel: float
    mean_rel: float
    max_abs: float
    rel_errors: tuple[float, ...]
    abs_errors: tuple[mpmath.mpf, ...]
    err_abs: float
    err_rel: float
    rel_upper: mpmath.mpf  # >= max_k true relative error (rigorous)
    bounds: tuple[mpmath.mpf, ...] | None
    bound_rel: tuple[mpmath.mpf, ...] | None
    overflow: bool
    stage: str
    no_overflow_guaranteed: bool
    overflow_certain: bool

    def passes(self, rtol: float) -> bool:
        """Function preserved to ``rtol``: finite, and max_k rel error <= rtol (upper end of its enclosure)."""
        return not self.overflow and self.rel_upper <= rtol

    def certified(self, rtol: float) -> bool:
        """The rigorous bound alone guarantees ``passes(rtol)``: no overflow possible and
        max_k bound_k / ||y_k|| <= rtol."""
        return self.no_overflow_guaranteed and self.bound_rel is not None and max(self.bound_rel) <= rtol


@dataclass(frozen=True)
class PrecisionPoint:
    """One point of ``error_vs_K``: measured error, rigorous bound and first-order model at K."""

    K: float
    dtype: str
    max_rel: float
    mean_rel: float
    overflow: bool
    bound_max_rel: float | None
    model_max_rel: float


@dataclass(frozen=True, order=True)
class SafeK:
    """Result of the safe-K bisection: ``K`` passes, ``K_fail`` (> K, at most 10^resolution K,
    inf if K_max passed) fails; ``cause`` of the failure at K_fail: "tolerance", "overflow", or
    "none" (K_max passed). K = 0 means even K = 1 fails. Ordered by K; ``float(safe)`` is K."""

    K: float
    K_fail: float = field(compare=False)
    cause: str = field(compare=False)
    dtype: str = field(compare=False)
    rtol: float = field(compare=False)
    certified: bool = field(compare=False, default=False)
    probes: tuple[tuple[float, bool], ...] = field(compare=False, default=())

    def __float__(self) -> float:
        return self.K


@dataclass(frozen=True)
class Defended:
    """Exact defended weights P = A W_a, Q = W_b A^-1, their fp64 roundings and the norms PREC needs."""

    P: flint.fmpq_mat
    Q: flint.fmpq_mat
    P64: np.ndarray
    Q64: np.ndarray
    norm_P: mpmath.mpf  # >= ||P||_F
    norm_Q: mpmath.mpf  # >= ||Q||_F
    max_abs_P: Fraction
    max_abs_Q: Fraction
    rowsum_P: Fraction
    rowsum_Q: Fraction


# ---------------------------------------------------------------- the problem
class _Fp32Full:
    """Refuse to run when torch may lower fp32 matmul precision (the PREC model needs full fp32)."""

    def __enter__(self) -> None:
        legacy = torch.get_float32_matmul_precision()
        onednn = getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", "none")
        if legacy != "highest" or onednn not in ("none", "ieee"):
            raise PrecisionError(f"torch float32 matmul precision is {legacy!r} (oneDNN {onednn!r}); "
                                 "PREC needs full fp32 ('highest')")

    def __exit__(self, *exc: object) -> None:
        return None


def _check_dtype(dtype: str) -> str:
    if dtype not in TORCH_DTYPES:
        raise InvalidInputError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return dtype


def _check_K(K: Any) -> float:
    try:
        k = float(K)
    except (TypeError, ValueError):
        raise InvalidInputError(f"SpecDef strength K must be a number >= 1, got {K!r}") from None
    if not math.isfinite(k) or k < 1:
        raise InvalidInputError(f"SpecDef strength K must be a finite number >= 1, got {K!r}")
    return k


class PrecisionProblem:
    """A pair (W_a: r x n, W_b: m x r) and data X (N x n, one sample per row), held exactly.

    Caches the exact reference outputs, the SpecDef factors and every evaluation, so repeated
    searches (several tolerances, dtypes) reuse probes: an evaluation at a given (K, dtype,
    profile) is computed once, which makes every predicate of a search deterministic."""

    def __init__(self, W_a: Any, W_b: Any, X: Any) -> None:
        self.Wa, self.Wb, self.X = _exact(W_a, "W_a"), _exact(W_b, "W_b"), _exact(X, "X")
        self.r, self.n = self.Wa.nrows(), self.Wa.ncols()
        self.m, self.N = self.Wb.nrows(), self.X.nrows()
        if self.Wb.ncols() != self.r:
            raise InvalidInputError(f"W_b has {self.Wb.ncols()} columns but W_a has {self.r} rows")
        if self.X.ncols() != self.n:
            raise InvalidInputError(f"X has {self.X.ncols()} columns but W_a has {self.n} (one sample per row)")
        self.WbWa = self.Wb * self.Wa
        self.Y = self.WbWa * self.X.transpose()  # m x N, exact reference outputs
        self.X64 = _floats(self.X)
        self.max_abs_x = _max_abs(self.X)
        with arb_precision(ARB_BITS):
            self.y_norm = []
            for k in range(self.N):
                y2 = sum((self.Y[i, k] ** 2 for i in range(self.m)), flint.fmpq(0))
                if y2 == 0:
                    raise InvalidInputError(f"sample {k} has W_b W_a x = 0: its relative error is undefined")
                self.y_norm.append(flint.arb(y2).sqrt())
        self.x_norm = [_sqrt_upper(sum((self.X[k, j] ** 2 for j in range(self.n)), flint.fmpq(0)))
                       for k in range(self.N)]
        self.norm_WbWa = _sqrt_upper(_frob2(self.WbWa))
        self.norm_Wa = _sqrt_upper(_frob2(self.Wa))
        self.norm_Wb = _sqrt_upper(_frob2(self.Wb))
        self._specdef: tuple[flint.fmpq_mat, ...] | None = None
        self._defended: dict[Any, Defended] = {}
        self._evals: dict[Any, FunctionError] = {}

    # ------------------------------------------------------------ reparameterizations
    def defended(self, A: Any) -> Defended:
        """Exact P = A W_a, Q = W_b A^-1 for an invertible r x r matrix A (exact inverse)."""
        Aq = _exact(A, "A")
        if (Aq.nrows(), Aq.ncols()) != (self.r, self.r):
            raise InvalidInputError(f"A must be {self.r}x{self.r} (the width of the pair), "
                                    f"got {Aq.nrows()}x{Aq.ncols()}")
        rank = Aq.rank()
        if rank < self.r:
            raise SingularReparameterizationError(f"A is singular: exact rank {rank} < {self.r}")
        return self._make(Aq * self.Wa, self.Wb * Aq.inv())

    def _make(self, P: flint.fmpq_mat, Q: flint.fmpq_mat) -> Defended:
        return Defended(P, Q, _floats(P), _floats(Q), _sqrt_upper(_frob2(P)), _sqrt_upper(_frob2(Q)),
                        _max_abs(P), _max_abs(Q), _max_rowsum(P), _max_rowsum(Q))

    def specdef(self, K: float, profile: str = "geometric") -> Defended:
        """SpecDef at strength K: A = U diag(s) U^T, A^-1 = U^-T diag(1/s) U^-1, both exact."""
        K = _check_K(K)
        if profile not in PROFILES:
            raise InvalidInputError(f"unknown SpecDef profile {profile!r}; choose one of {', '.join(PROFILES)}")
        key = (K, profile)
        if key not in self._defended:
            if self._specdef is None:
                U64 = np.linalg.svd(_floats(self.Wa), full_matrices=True)[0]
                U = _exact(U64, "U")
                Uinv = U.inv()
                self._specdef = (U, U.transpose() * self.Wa, self.Wb * Uinv.transpose(), Uinv)
            U, UtWa, WbUit, Uinv = self._specdef
            s = [flint.fmpq(*float(v).as_integer_ratio()) for v in PROFILES[profile](K, self.r)]
            US = flint.fmpq_mat([[U[i, j] * s[j] for j in range(self.r)] for i in range(self.r)])
            BS = flint.fmpq_mat([[WbUit[i, j] / s[j] for j in range(self.r)] for i in range(self.m)])
            self._defended[key] = self._make(US * UtWa, BS * Uinv)
        return self._defended[key]

    # ------------------------------------------------------------ evaluation
    def evaluate(self, D: Defended, dtype: str) -> FunctionError:
        """Cast (P, Q, X) to ``dtype``, run the forward pass in torch on CPU, compare exactly."""
        _check_dtype(dtype)
        t = TORCH_DTYPES[dtype]
        cert = bp.overflow_certain(dtype, self.max_abs_x, D.max_abs_P, D.max_abs_Q)
        safe = bp.no_overflow_guaranteed(dtype, self.n, self.r, self.max_abs_x, D.max_abs_P, D.max_abs_Q,
                                         D.rowsum_P, D.rowsum_Q)
        with _Fp32Full():
            Xd, Pd, Qd = (torch.from_numpy(M).to(t) for M in (self.X64, D.P64, D.Q64))
            stage = ""
            if not all(bool(torch.isfinite(M).all()) for M in (Xd, Pd, Qd)):
                stage = "cast"
            H = Xd @ Pd.T
            if not stage and not bool(torch.isfinite(H).all()):
                stage = "hidden"
            Yd = H @ Qd.T
            if not stage and not bool(torch.isfinite(Yd).all()):
                stage = "output"
        if stage:
            inf = math.inf
            return FunctionError(dtype, inf, inf, inf, (inf,) * self.N, (mpmath.inf,) * self.N, 0.0, 0.0, mpmath.inf,
                                 None, None, True, stage, safe, cert)
        Yhat = _exact(Yd.to(torch.float64).numpy(), "output")  # N x m, exact values of the dtype outputs
        abs_b, rel_b = [], []
        with arb_precision(ARB_BITS):
            for k in range(self.N):
                e2 = sum(((Yhat[k, i] - self.Y[i, k]) ** 2 for i in range(self.m)), flint.fmpq(0))
                a = flint.arb(e2).sqrt()
                abs_b.append(a)
                rel_b.append(a / self.y_norm[k])
            abs_mid = tuple(_arb_mid(a) for a in abs_b)
            rel = tuple(float(_arb_mid(r)) for r in rel_b)
            # radius + decimal printing (1e-35) + float rounding (2^-53) of the reported midpoints
            err_abs = max(float(_arb_rad(a) + abs(m) * mpmath.mpf("1e-35")) for a, m in zip(abs_b, abs_mid))
            err_rel = max(float(_arb_rad(r)) for r in rel_b) + max(rel) * 2.0 ** -52
            rel_upper = max(_arb_to_mpf(r, upper=True) for r in rel_b)
            bounds, bound_rel = self._bounds(D, dtype)
        return FunctionError(dtype, max(rel), sum(rel) / len(rel), float(max(abs_mid)), rel, abs_mid, err_abs,
                             err_rel, rel_upper, bounds, bound_rel, False, "", safe, cert)

    def _bounds(self, D: Defended, dtype: str) -> tuple[tuple[mpmath.mpf, ...] | None, tuple[mpmath.mpf, ...] | None]:
        """Per-sample rigorous bounds (inflated by BOUND_SLACK) and bounds / (lower end of ||y_k||)."""
        try:
            with mpmath.workdps(BOUND_DPS):
                b = tuple(bp.forward_error_bound(dtype, self.n, self.r, self.m, self.x_norm[k], D.norm_P, D.norm_Q,
                                                 self.norm_WbWa, 0) * (1 + BOUND_SLACK) for k in range(self.N))
                rel = tuple(b[k] / _arb_to_mpf(self.y_norm[k], upper=False) * (1 + BOUND_SLACK) for k in range(self.N))
        except PrecisionError:
            return None, None
        return b, rel

    def evaluate_K(self, K: float, dtype: str, profile: str = "geometric") -> FunctionError:
        """``evaluate`` at SpecDef strength K (cached)."""
        key = (_check_K(K), _check_dtype(dtype), profile)
        if key not in self._evals:
            self._evals[key] = self.evaluate(self.specdef(K, profile), dtype)
        return self._evals[key]

    def model_max_rel(self, K: float, dtype: str) -> float:
        """First-order PREC model (``leading_order_model``) divided by ||y_k||, max over samples."""
        with mpmath.workdps(BOUND_DPS):
            return max(float(bp.leading_order_model(dtype, self.n, self.r, K, self.norm_Wa, self.norm_Wb,
                                                    self.norm_WbWa, self.x_norm[k]) / _arb_mid(self.y_norm[k]))
                       for k in range(self.N))

    # ------------------------------------------------------------ searches
    def safe_K_search(self, dtype: str, rtol: float, *, certified: bool = False, profile: str = "geometric",
                      K_max: float = K_MAX, resolution: float = RESOLUTION) -> SafeK:
        """Bisection on e = log10 K over fixed probes: e_lo = 0, e_hi = log10 K_max, then midpoints
        until e_hi - e_lo <= resolution; keeps pass(10^e_lo), fail(10^e_hi).

        pass(K) = ``FunctionError.passes(rtol)`` (measured) or ``.certified(rtol)`` (bound only).
        Monotonicity: if pass_1(K) implies pass_2(K) for every K (a larger tolerance; or the
        certified predicate vs the measured one, which holds whenever the PREC bound is valid),
        then result_1 <= result_2: both searches probe the same points until the first probe
        where they differ, there search 2 moves up and search 1 down, and afterwards every
        interval of search 2 lies above that probe and every interval of search 1 below it."""
        rtol = float(check_tol(rtol))
        _check_dtype(dtype)
        K_max = _check_K(K_max)
        if not (resolution > 0):
            raise InvalidInputError(f"resolution must be > 0 decades, got {resolution}")

        def ok(e: float) -> tuple[bool, FunctionError]:
            fe = self.evaluate_K(10.0**e, dtype, profile)
            return (fe.certified(rtol) if certified else fe.passes(rtol)), fe

        probes: list[tuple[float, bool]] = []

        def probe(e: float) -> tuple[bool, FunctionError]:
            res = ok(e)
            probes.append((10.0**e, res[0]))
            return res

        lo, hi = 0.0, math.log10(K_max)
        passed, fe_hi = probe(hi)
        if passed:
            return SafeK(10.0**hi, math.inf, NONE, dtype, rtol, certified, tuple(probes))
        passed, fe_lo = probe(lo)
        if not passed:
            return SafeK(0.0, 1.0, self._cause(fe_lo, certified), dtype, rtol, certified, tuple(probes))
        while hi - lo > resolution:
            mid = (lo + hi) / 2
            passed, fe = probe(mid)
            if passed:
                lo = mid
            else:
                hi, fe_hi = mid, fe
        return SafeK(10.0**lo, 10.0**hi, self._cause(fe_hi, certified), dtype, rtol, certified, tuple(probes))

    @staticmethod
    def _cause(fe: FunctionError, certified: bool) -> str:
        if certified:
            return TOLERANCE if fe.no_overflow_guaranteed else OVERFLOW
        return OVERFLOW if fe.overflow else TOLERANCE


def _arb_rad(a: flint.arb) -> mpmath.mpf:
    """An mpf >= the radius of the ball."""
    return mpmath.mpf(a.rad().str(20, radius=False)) * (1 + mpmath.mpf("1e-15"))


def _arb_mid(a: flint.arb) -> mpmath.mpf:
    """The midpoint of the ball to 40 digits."""
    with mpmath.workdps(40):
        return mpmath.mpf(a.mid().str(40, radius=False))


# ---------------------------------------------------------------- public functions
def function_error(W_a: Any, W_b: Any, A: Any, X: Any, dtype: str) -> FunctionError:
    """Max / mean relative output deviation of the pair (A W_a, W_b A^-1), cast to and run in
    ``dtype`` (fp64 | fp32 | bf16 | fp16, torch CPU), against the exact W_b W_a x (rows of X)."""
    _check_dtype(dtype)
    prob = PrecisionProblem(W_a, W_b, X)
    return prob.evaluate(prob.defended(A), dtype)


def error_vs_K(W_a: Any, W_b: Any, X: Any, Ks: Iterable[float], dtypes: Sequence[str] = DTYPES,
               profile: str = "geometric") -> list[PrecisionPoint]:
    """Sweep SpecDef strength K (A = U diag(s) U^T, s = profile(K, r)) for each dtype: measured
    max / mean relative error, rigorous bound (max_k bound_k / ||y_k||) and first-order model."""
    for d in dtypes:
        _check_dtype(d)
    prob = PrecisionProblem(W_a, W_b, X)
    out = []
    for K in Ks:
        for d in dtypes:
            fe = prob.evaluate_K(K, d, profile)
            bnd = None if fe.bound_rel is None else float(max(fe.bound_rel))
            out.append(PrecisionPoint(float(K), d, fe.max_rel, fe.mean_rel, fe.overflow, bnd, prob.model_max_rel(K, d)))
    return out


def largest_safe_K(W_a: Any, W_b: Any, X: Any, dtype: str, rtol: float, *, profile: str = "geometric",
                   K_max: float = K_MAX, resolution: float = RESOLUTION) -> SafeK:
    """Largest SpecDef strength K in [1, K_max] (bisection on log10 K, ``resolution`` decades) at
    which the defended pair in ``dtype`` keeps every relative output error <= rtol; ``.cause``
    says whether the next probe failed by tolerance or by overflow. ``float()`` of it is K."""
    return PrecisionProblem(W_a, W_b, X).safe_K_search(dtype, rtol, profile=profile, K_max=K_max,
                                                       resolution=resolution)


def require_safe_K(W_a: Any, W_b: Any, X: Any, K: float, dtype: str, rtol: float,
                   profile: str = "geometric") -> FunctionError:
    """Return the function error at K, or raise UnsafeStrengthError naming the largest safe K."""
    rtol = float(check_tol(rtol))
    prob = PrecisionProblem(W_a, W_b, X)
    fe = prob.evaluate_K(K, dtype, profile)
    if fe.passes(rtol):
        return fe
    safe = prob.safe_K_search(dtype, rtol, profile=profile)
    what = (f"overflows ({fe.stage})" if fe.overflow
            else f"has max relative output error {fe.max_rel:.3g} > rtol {rtol:g}")
    raise UnsafeStrengthError(f"SpecDef strength K={float(K):.4g} in {dtype} {what}; the largest safe K for {dtype} "
                              f"at rtol {rtol:g} is {safe.K:.4g} (limit: {safe.cause})", float(K), safe)


# ---------------------------------------------------------------- reporting
@dataclass(frozen=True)
class GrowthFit:
    """Least-squares slope of log10(max rel error) against log10 K where the K-dependent error
    dominates (finite, >= 10x max(error at K = 1, u) and <= 1); the PREC model predicts 1."""

    dtype: str
    exponent: float | None
    points: int


def growth_exponent(problem: PrecisionProblem, dtype: str, Ks: Sequence[float] | None = None,
                    profile: str = "geometric") -> GrowthFit:
    """Empirical exponent of error growth in K (a measurement, not a check: rounding errors may
    cancel, so no rigorous lower bound on the error exists). Ks (default: quarter decades from
    1 to 1e16) are scanned in increasing order and the scan stops after the first K whose
    error leaves the regime from above (overflow or max rel error > 1)."""
    Ks = sorted(Ks) if Ks is not None else [10.0 ** (e / 4) for e in range(0, 65)]
    base = problem.evaluate_K(1.0, dtype, profile).max_rel
    floor = 10 * max(base, float(bp.unit_roundoff(dtype)))
    pts = []
    for K in Ks:
        fe = problem.evaluate_K(K, dtype, profile)
        if fe.overflow or fe.max_rel > 1:
            break
        if fe.max_rel >= floor:
            pts.append((math.log10(K), math.log10(fe.max_rel)))
    if len(pts) < 3:
        return GrowthFit(dtype, None, len(pts))
    slope = float(np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)[0])
    return GrowthFit(dtype, slope, len(pts))


def controlled_pair(seed: int, r: int, n_in: int, n_out: int, N: int, scale: float = 1.0,
                    cond: float = 10.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic fp64 (W_a: r x n_in, W_b: n_out x r, X: N x n_in) with controlled spectra:
    W = scale * U diag(sigma) V^T, sigma geometric from 1 to 1/cond (random orthogonal U, V from
    a numpy Generator seeded by ``seed``), X standard normal."""
    if min(r, n_in, n_out, N) < 1 or scale <= 0 or cond < 1:
        raise InvalidInputError(f"bad instance parameters r={r} n_in={n_in} n_out={n_out} N={N} "
                                f"scale={scale} cond={cond}")
    rng = np.random.default_rng(seed)

    def mat(rows: int, cols: int) -> np.ndarray:
        k = min(rows, cols)
        U = np.linalg.qr(rng.standard_normal((rows, rows)))[0][:, :k]
        V = np.linalg.qr(rng.standard_normal((cols, cols)))[0][:, :k]
        sig = cond ** (-np.arange(k) / max(k - 1, 1))
        return scale * (U * sig) @ V.T

    return mat(r, n_in), mat(n_out, r), rng.standard_normal((N, n_in))


def precision_table(seed: int, rtols: Sequence[float] = (1e-2, 1e-3), scale: float = 1.0) -> list[dict[str, Any]]:
    """Per dtype: u, largest finite value, measured largest safe K and its limiting cause at each
    rtol (K = 0: even the undefended pair fails), the certified safe K (from the rigorous bound
    alone) and the empirical growth exponent (``growth_exponent``; None without a regime), on
    ``controlled_pair(seed, r=8, n_in=16, n_out=16, N=16, scale, cond=10)``."""
    prob = PrecisionProblem(*controlled_pair(seed, 8, 16, 16, 16, scale=scale))
    rows = []
    for d in DTYPES:
        row: dict[str, Any] = {"dtype": d, "u": float(bp.unit_roundoff(d)), "max_finite": float(bp.max_finite(d))}
        for rt in rtols:
            s = prob.safe_K_search(d, rt)
            c = prob.safe_K_search(d, rt, certified=True)
            row[f"safe_K@{rt:g}"] = s.K
            row[f"cause@{rt:g}"] = s.cause
            row[f"certified_K@{rt:g}"] = c.K
        row["growth_exponent"] = growth_exponent(prob, d).exponent
        rows.append(row)
    return rows


__all__ = [
    "DTYPES", "FunctionError", "PrecisionPoint", "SafeK", "GrowthFit", "PrecisionProblem", "Defended",
    "UnsafeStrengthError", "function_error", "error_vs_K", "largest_safe_K", "require_safe_K",
    "growth_exponent", "controlled_pair", "precision_table",
]
