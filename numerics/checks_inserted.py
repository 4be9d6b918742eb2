"""Battery entries for the inserted compensation layer: I, PREC-ALPHA, M (THEORY.md section 6).

Instances (``InsInstance``): a layer W = U Sigma V^T (m x n, m, n in 1..3) with rational
orthogonal U, V (Cayley transforms) and rational singular values, k in 1..min(m, n), a
rational alpha (in [1/8, 16]), a side; the exact construction of ``numerics.inserted``; a
rational quadratic loss L(W) = 1/2 e^T H e, e = vec(W - W*), H = M M^T + I (M small integers).

* ``inserted_frozen_c`` (I): with C frozen, exactly: the central difference of L(C W') along a
  rational direction E equals <C^T G, E> (output side; <G C^T, E> input side) -- exact for a
  quadratic; the second difference equals vec(E)^T T^-T H T^-1 vec(E) (T2, T^-1 = C (x) I resp.
  I (x) C^T); one GD step on W' moves W by -eta P vec G with P = T^-1 T^-T (statement P); and
  exact GD on the grown problem (``Quadratic.reparameterize(T)``) takes exactly the steps of
  preconditioned GD with P on the original (``steps_to``, two independent spectral measures).
* ``inserted_joint`` (I): with C trained, exactly: the central difference along the C direction
  gives G W'^T (W'^T G input side); one GD step on both factors moves the product by
  -eta (F2 F2^T G + G F1^T F1) + eta^2 G F1^T F2^T G (F2 F1 the product: (C, W') output side,
  (W', C) input side); J J^T from the bilinear Jacobian equals F2 F2^T (x) I + I (x) F1^T F1; the
  imbalance F2^T F2 - F1 F1^T changes by exactly eta^2 (F1 G^T G F1^T - F2^T G G^T F2); at the
  release it is basis diag(+-(1/d^2 - d^2 sigma^2)) basis^T (``bounds_inserted.imbalance_diagonal``);
  the extremes of the joint preconditioner's certified spectrum (``linalg.sym_eig``) equal
  ``bounds_inserted.joint_preconditioner_range``.
* ``inserted_merge`` (M): C W' = W and C (A b) = b exactly; the parameter count removed is
  ``merge_extra_parameters``; merging the fp64-stored factors in fp64 (numpy) and fp32 (torch)
  stays within ``bounds_inserted.merge_error_bound`` of their exact product.
* ``inserted_prec_alpha`` (PREC-ALPHA): on a rational layer (m, n in 1..8, alpha up to 1e6): the
  closed-form norms equal the exact ||W'||_F^2, ||C||_F^2; per dtype the measured output error is
  at most ``alpha_form_bound`` (no overflow); at the certified safe alpha of
  ``certified_safe_alpha`` every measured normwise relative error is within the tolerance; and
  for k = s (the correction's counterexample family) alpha = 2^j gives exactly the error of
  alpha = 1 in fp64, fp32 and bf16 (fp16 is excluded there: its subnormal range starts at
  6.1e-5, where scaling by 2^j changes the rounding grid).
* ``inserted_safe_alpha`` (PREC-ALPHA): the measured largest safe alpha (bisection on fixed
  probes) is at least the certified one (same bisection with the bound as predicate).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import flint
import mpmath
import numpy as np
import torch
from hypothesis import strategies as st

from convrate.numerics.battery import entry
from convrate.numerics.fp_precision import BOUND_SLACK, DTYPES, TORCH_DTYPES, _Fp32Full, _floats, _sqrt_upper
from convrate.numerics.inserted import (InsertedProblem, chain_product, diag, frob2, inserted_factors,
                                        rational_layer)
from convrate.numerics.linalg import sym_eig
from convrate.numerics.nets import EXACT, identity, kron, pack
from convrate.numerics.optimizers import GD, PreconditionedGD
from convrate.numerics.quadratic import Quadratic, fmpq_to_fraction, to_fmpq
from convrate.numerics.steps import steps_to
from convrate.theory import bounds_inserted as bi
from convrate.theory.core import CheckResult, compare

EXACT_P = "exact rational (fmpq)"
COUNT = "certified step counts (numerics.steps)"
BOUND_P = "exact rational reference + arb sqrt at 128 bits; bound in mpmath dps=30 inflated by 1e-20"


@dataclass(frozen=True)
class InsInstance:
    """Drawn integers of one instance (module doc); sigma_i = sig[i] / 4, alpha = a_num / a_den."""

    seed: int
    m: int
    n: int
    k: int
    side: str
    a_num: int
    a_den: int
    sig: tuple[int, ...]

    @property
    def alpha(self) -> Fraction:
        return Fraction(self.a_num, self.a_den)

    @property
    def sigma(self) -> list[Fraction]:
        return [Fraction(s, 4) for s in self.sig]

    @property
    def s(self) -> int:
        return bi.side_width(self.side, self.m, self.n)

    def layer(self) -> tuple[flint.fmpq_mat, flint.fmpq_mat, flint.fmpq_mat, flint.fmpq_mat]:
        """(W, W', C, basis), exact."""
        W, U, V = rational_layer(self.seed, self.m, self.n, self.sigma)
        basis = U if self.side == "output" else V
        Wp, C = inserted_factors(W, basis, self.k, self.alpha, self.side)
        return W, Wp, C, basis

    def __str__(self) -> str:
        return (f"inserted(seed={self.seed}, {self.m}x{self.n}, k={self.k}, {self.side}, alpha={self.alpha}, "
                f"sigma={[str(x) for x in self.sigma]})")


@st.composite
def ins_instances(draw: Any, max_dim: int = 3, alpha_num: int = 128) -> InsInstance:
    m, n = draw(st.integers(1, max_dim)), draw(st.integers(1, max_dim))
    r = min(m, n)
    sig = tuple(sorted(draw(st.lists(st.integers(1, 20), min_size=r, max_size=r)), reverse=True))
    return InsInstance(draw(st.integers(0, 2**16)), m, n, draw(st.integers(1, r)), draw(st.sampled_from(bi.SIDES)),
                       draw(st.integers(1, alpha_num)), draw(st.integers(1, 8)), sig)


# ---------------------------------------------------------------- helpers
def _rng(inst: InsInstance, salt: int) -> np.random.Generator:
    return np.random.default_rng(inst.seed * 7919 + salt)


def _rand(rows: int, cols: int, rng: np.random.Generator, den: int = 4) -> flint.fmpq_mat:
    return pack([[flint.fmpq(int(rng.integers(-6, 7)), den) for _ in range(cols)] for _ in range(rows)], EXACT)


def _vec(M: flint.fmpq_mat) -> flint.fmpq_mat:
    """Row-major vec as a column."""
    return pack([[x] for x in M.entries()], EXACT)


def _unvec(v: flint.fmpq_mat, rows: int, cols: int) -> flint.fmpq_mat:
    e = v.entries()
    return pack([[e[i * cols + j] for j in range(cols)] for i in range(rows)], EXACT)


def _inner(A: flint.fmpq_mat, B: flint.fmpq_mat) -> flint.fmpq:
    return sum((a * b for a, b in zip(A.entries(), B.entries())), flint.fmpq(0))


def _frac(x: flint.fmpq) -> Fraction:
    return fmpq_to_fraction(x)


def _zero(sid: str, inst: Any, what: str, residual: flint.fmpq_mat | flint.fmpq) -> CheckResult:
    """Exact equality: ||residual||_F^2 == 0."""
    r = frob2(residual) if isinstance(residual, flint.fmpq_mat) else residual * residual
    return compare(sid, str(inst), _frac(r), "==", 0, precision=EXACT_P, detail=what)


class _Loss:
    """L(W) = 1/2 e^T H e, e = vec(W - W*), H = M M^T + I (exact)."""

    def __init__(self, inst: InsInstance) -> None:
        rng = _rng(inst, 1)
        mn = inst.m * inst.n
        M = _rand(mn, mn, rng, den=2)
        self.H = M * M.transpose() + identity(mn, EXACT)
        self.Wstar = _rand(inst.m, inst.n, rng)
        self.m, self.n = inst.m, inst.n

    def e(self, W: flint.fmpq_mat) -> flint.fmpq_mat:
        return _vec(W - self.Wstar)

    def __call__(self, W: flint.fmpq_mat) -> flint.fmpq:
        e = self.e(W)
        return (e.transpose() * self.H * e)[0, 0] / 2

    def grad(self, W: flint.fmpq_mat) -> flint.fmpq_mat:
        """G = dL/dW as an m x n matrix."""
        return _unvec(self.H * self.e(W), self.m, self.n)


def _t_inverse(C: flint.fmpq_mat, inst: InsInstance) -> flint.fmpq_mat:
    """T^-1 on vec W' with C frozen: C (x) I_n (output), I_m (x) C^T (input)."""
    if inst.side == "output":
        return kron(C, identity(inst.n, EXACT))
    return kron(identity(inst.m, EXACT), C.transpose())


# ---------------------------------------------------------------- I: C frozen
@entry("inserted_frozen_c", ["I"], ins_instances(), cost=2)
def check_frozen(inst: InsInstance) -> list[CheckResult]:
    W, Wp, C, _ = inst.layer()
    L = _Loss(inst)
    side = inst.side
    Lp = lambda X: L(chain_product(X, C, side))  # noqa: E731
    G = L.grad(W)
    grad = C.transpose() * G if side == "output" else G * C.transpose()
    E = _rand(inst.m, inst.n, _rng(inst, 2))
    out = [_zero("I", inst, "exact central difference of L(C W') along E = <grad formula, E> (chain rule, T1)",
                 (Lp(Wp + E) - Lp(Wp - E)) / 2 - _inner(grad, E))]
    Ti = _t_inverse(C, inst)
    out.append(_zero("I", inst, "second difference = vec(E)^T T^-T H T^-1 vec(E) (T2)",
                     Lp(Wp + E) - 2 * Lp(Wp) + Lp(Wp - E) - (_vec(E).transpose() * Ti.transpose() * L.H * Ti * _vec(E))[0, 0]))
    eta = flint.fmpq(1, 7)
    P = Ti * Ti.transpose()
    moved = chain_product(Wp - eta * grad, C, side) - W
    out.append(_zero("I", inst, "one GD step on W' (C frozen) moves W by -eta P vec G, P = T^-1 T^-T (statement P)",
                     _vec(moved) + eta * P * _vec(G)))
    e0 = L.e(W)
    if frob2(e0) != 0:
        base = Quadratic(L.H, e0)
        PH = P * L.H
        step = 1 / sum((PH[i, i] for i in range(PH.nrows())), flint.fmpq(0))  # <= 1 / lambda_max(P H): stable
        grown = steps_to(base.reparameterize(Ti.inv()), GD(_frac(step)), Fraction(1, 100))
        pre = steps_to(base, PreconditionedGD(_frac(step), P), Fraction(1, 100))
        out.append(compare("I", str(inst), grown, "==", pre, precision=COUNT,
                           detail=f"GD on the grown model (C frozen) = preconditioned GD with P: {grown} steps"))
    return out


# ---------------------------------------------------------------- I: C trained
@entry("inserted_joint", ["I"], ins_instances())
def check_joint(inst: InsInstance) -> list[CheckResult]:
    W, Wp, C, basis = inst.layer()
    L = _Loss(inst)
    F2, F1 = (C, Wp) if inst.side == "output" else (Wp, C)  # the product is F2 F1
    G = L.grad(F2 * F1)
    E2, E1 = _rand(F2.nrows(), F2.ncols(), _rng(inst, 3)), _rand(F1.nrows(), F1.ncols(), _rng(inst, 6))
    L2, L1 = (lambda X: L(X * F1)), (lambda X: L(F2 * X))
    out = [_zero("I", inst, "exact central difference along the outer factor F2 = <G F1^T, E>",
                 (L2(F2 + E2) - L2(F2 - E2)) / 2 - _inner(G * F1.transpose(), E2)),
           _zero("I", inst, "exact central difference along the inner factor F1 = <F2^T G, E>",
                 (L1(F1 + E1) - L1(F1 - E1)) / 2 - _inner(F2.transpose() * G, E1))]
    eta = flint.fmpq(1, 5)
    F2n, F1n = F2 - eta * G * F1.transpose(), F1 - eta * F2.transpose() * G
    law = -eta * (F2 * F2.transpose() * G + G * F1.transpose() * F1) + eta * eta * G * F1.transpose() * F2.transpose() * G
    out.append(_zero("I", inst, "one joint GD step moves the product by -eta (F2 F2^T G + G F1^T F1) + eta^2 G F1^T F2^T G",
                     F2n * F1n - F2 * F1 - law))
    cols = []
    for factor, other, first in ((F2, F1, True), (F1, F2, False)):
        for i in range(factor.nrows()):
            for j in range(factor.ncols()):
                Eij = pack([[flint.fmpq(int(a == i and b == j)) for b in range(factor.ncols())]
                            for a in range(factor.nrows())], EXACT)
                cols.append((Eij * other if first else other * Eij).entries())
    J = pack([[c[r] for c in cols] for r in range(len(cols[0]))], EXACT)
    Pj = kron(F2 * F2.transpose(), identity(inst.n, EXACT)) + kron(identity(inst.m, EXACT), F1.transpose() * F1)
    out.append(_zero("I", inst, "J J^T of the bilinear Jacobian = F2 F2^T (x) I_n + I_m (x) F1^T F1", J * J.transpose() - Pj))
    Q = F2.transpose() * F2 - F1 * F1.transpose()
    Qn = F2n.transpose() * F2n - F1n * F1n.transpose()
    out.append(_zero("I", inst, "the imbalance changes by exactly eta^2 (F1 G^T G F1^T - F2^T G G^T F2)",
                     Qn - Q - eta * eta * (F1 * G.transpose() * G * F1.transpose() - F2.transpose() * G * G.transpose() * F2)))
    vals = bi.imbalance_diagonal(inst.sigma, inst.k, inst.alpha, inst.s)
    sign = 1 if inst.side == "output" else -1
    target = basis * diag([sign * v for v in vals]) * basis.transpose()
    out.append(_zero("I", inst, "release imbalance = basis diag(+-(1/d^2 - d^2 sigma^2)) basis^T", Q - target))
    with mpmath.workdps(40):
        eig = sym_eig(Pj)
        lo, hi = bi.joint_preconditioner_range(inst.sigma, inst.k, inst.alpha, inst.m, inst.n, inst.side)
        for got, want, rad, what in ((eig.values[0], lo, eig.radius[0], "min"), (eig.values[-1], hi, eig.radius[-1], "max")):
            out.append(compare("I", str(inst), got, "==", want, precision="mpmath dps=40 eigenpairs, certified radius",
                               err=rad + abs(want) * mpmath.mpf(10) ** -35,
                               detail=f"lambda_{what} of the joint preconditioner vs joint_preconditioner_range"))
    return out


# ---------------------------------------------------------------- M
def _fp_merge_error(C64: np.ndarray, Wp64: np.ndarray, side: str, dtype: str) -> tuple[mpmath.mpf, int]:
    """(||fl(product) - exact product of the stored factors||_F upper end, inner length s)."""
    if dtype == "fp64":
        prod = C64 @ Wp64 if side == "output" else Wp64 @ C64
    else:
        t = TORCH_DTYPES[dtype]
        with _Fp32Full():
            a, b = torch.from_numpy(C64).to(t), torch.from_numpy(Wp64).to(t)
            prod = (a @ b if side == "output" else b @ a).to(torch.float64).numpy()
    Cq, Wq = pack([[to_fmpq(float(x)) for x in r] for r in C64.tolist()], EXACT), \
        pack([[to_fmpq(float(x)) for x in r] for r in Wp64.tolist()], EXACT)
    exact = chain_product(Wq, Cq, side)
    got = pack([[to_fmpq(float(x)) for x in r] for r in prod.tolist()], EXACT)
    return _sqrt_upper(frob2(got - exact)), C64.shape[0]


@entry("inserted_merge", ["M"], ins_instances())
def check_merge(inst: InsInstance) -> list[CheckResult]:
    W, Wp, C, basis = inst.layer()
    out = [_zero("M", inst, "chain product = W exactly", chain_product(Wp, C, inst.side) - W)]
    if inst.side == "output":
        b = _rand(inst.m, 1, _rng(inst, 4))
        out.append(_zero("M", inst, "bias: C (A b) = b with A = C^-1", C * (C.inv() * b) - b))
    s = inst.s
    grown = inst.m * inst.n + inst.m + s * s
    out.append(compare("M", str(inst), (inst.m * inst.n + inst.m) - grown, "==", bi.merge_extra_parameters(s),
                       precision="exact (integers)", detail="parameters removed by the merge = -s^2"))
    C64, Wp64 = _floats(C), _floats(Wp)
    for d in ("fp64", "fp32"):
        if d == "fp32":
            C64, Wp64 = (torch.from_numpy(M).to(torch.float32).to(torch.float64).numpy() for M in (C64, Wp64))
        err, sw = _fp_merge_error(C64, Wp64, inst.side, d)
        with mpmath.workdps(30):
            nC = _sqrt_upper(sum((to_fmpq(float(x)) ** 2 for x in C64.ravel()), flint.fmpq(0)))
            nW = _sqrt_upper(sum((to_fmpq(float(x)) ** 2 for x in Wp64.ravel()), flint.fmpq(0)))
            bound = bi.merge_error_bound(d, sw, inst.m, inst.n, nC, nW) * (1 + BOUND_SLACK)
        out.append(compare("M", f"{inst} {d}", err, "<=", bound, precision=BOUND_P, err=float(BOUND_SLACK * bound),
                           detail=f"merge of the {d}-stored factors in {d}: error {mpmath.nstr(err, 3)}"))
    return out


# ---------------------------------------------------------------- PREC-ALPHA
@dataclass(frozen=True)
class PrecAlphaInstance:
    """A rational layer (``base``, dims up to 8), alpha = 10^(a_centi / 100) (>= 1), N probes with
    ||x|| >= 1, and a tolerance 10^-t for the certified-alpha check."""

    base: InsInstance
    a_centi: int
    N: int
    tol_exp: int

    def __str__(self) -> str:
        return f"{self.base} alpha=1e{self.a_centi / 100:g} N={self.N}"


@st.composite
def prec_alpha_instances(draw: Any) -> PrecAlphaInstance:
    return PrecAlphaInstance(draw(ins_instances(max_dim=8)), draw(st.integers(0, 600)), draw(st.integers(1, 4)),
                             draw(st.integers(2, 4)))


def _probes(inst: PrecAlphaInstance) -> flint.fmpq_mat:
    """N x n rational probes, every row of norm >= 1 (first entry shifted by 2)."""
    X = _rand(inst.N, inst.base.n, _rng(inst.base, 5))
    return pack([[x + (2 if j == 0 else 0) for j, x in enumerate(row)] for row in X.tolist()], EXACT)


@entry("inserted_prec_alpha", ["PREC-ALPHA"], prec_alpha_instances(), cost=2)
def check_prec_alpha(pinst: PrecAlphaInstance) -> list[CheckResult]:
    inst = pinst.base
    W, _, _, basis = inst.layer()
    X = _probes(pinst)
    prob = InsertedProblem(W, X, inst.k, inst.side, basis=basis)
    alpha = 10.0 ** (pinst.a_centi / 100)
    Wp, C = prob.chain(alpha)
    a = _frac(to_fmpq(alpha))
    sig = inst.sigma
    wp2, c2, _ = bi.frobenius_squares(sig, inst.k, a, inst.s)
    out = [_zero("PREC-ALPHA", pinst, "||W'||_F^2 and ||C||_F^2 equal their closed forms",
                 (frob2(Wp) - to_fmpq(wp2)) ** 2 + (frob2(C) - to_fmpq(c2)) ** 2)]
    for d in DTYPES:
        fe = prob.evaluate_K(alpha, d)
        if fe.overflow or fe.bounds is None:
            continue
        with mpmath.workdps(30):
            b = [bi.alpha_form_bound(d, inst.side, inst.n, inst.m, inst.k, a, sig, prob.x_norm[i]) * (1 + BOUND_SLACK)
                 for i in range(prob.N)]
        i = max(range(prob.N), key=lambda j: fe.abs_errors[j] / b[j])
        out.append(compare("PREC-ALPHA", f"{pinst} {d}", fe.abs_errors[i], "<=", b[i], precision=BOUND_P,
                           err=fe.err_abs + float(BOUND_SLACK * b[i]),
                           detail=f"sample {i}: error vs alpha_form_bound (closed-form norms)"))
    rtol = Fraction(1, 10**pinst.tol_exp)
    for d in ("fp64", "fp32"):
        ac = bi.certified_safe_alpha(d, inst.side, inst.n, inst.m, inst.k, sig, rtol, alpha_max=1e12, per_decade=4)
        if ac >= 1:
            fe = prob.evaluate_K(ac, d)
            worst = max(fe.abs_errors[j] / (bi.mpf(sig[0]) * prob.x_norm[j]) for j in range(prob.N))
            out.append(compare("PREC-ALPHA", f"{pinst} {d} rtol={rtol}", 0 if fe.overflow else worst, "<=",
                               0 if fe.overflow else float(rtol), precision=BOUND_P, err=fe.err_abs,
                               detail=f"at the certified safe alpha {ac:.3g}: normwise relative error "
                                      f"{'overflow' if fe.overflow else mpmath.nstr(worst, 3)}"))
            if fe.overflow:
                out.append(compare("PREC-ALPHA", f"{pinst} {d}", 1, "==", 0, precision="exact (flags)",
                                   detail="overflow at a certified alpha"))
    if inst.k == inst.s:
        for d in ("fp64", "fp32", "bf16"):
            e1, ej = prob.evaluate_K(1.0, d), prob.evaluate_K(64.0, d)
            if e1.overflow or ej.overflow:
                continue
            diff = max(abs(x - y) for x, y in zip(e1.abs_errors, ej.abs_errors))
            out.append(compare("PREC-ALPHA", f"{pinst} {d}", diff, "==", 0,
                               precision="exact (identical fp outputs have identical exact errors)",
                               detail="k = s: alpha = 64 gives exactly the error of alpha = 1 (no growth)"))
    return out


@entry("inserted_safe_alpha", ["PREC-ALPHA"],
       st.tuples(prec_alpha_instances(), st.sampled_from([1e-1, 1e-2, 1e-3])), cost=3)
def check_safe_alpha(drawn: tuple[PrecAlphaInstance, float]) -> list[CheckResult]:
    pinst, rtol = drawn
    inst = pinst.base
    W, _, _, _ = inst.layer()
    prob = InsertedProblem(W, _probes(pinst), inst.k, inst.side)
    out = []
    for d in DTYPES:
        meas = prob.safe_K_search(d, rtol, resolution=0.25)
        cert = prob.safe_K_search(d, rtol, certified=True, resolution=0.25)
        out.append(compare("PREC-ALPHA", f"{pinst} {d} rtol={rtol:g}", meas.K, ">=", cert.K,
                           precision="exact (same fixed bisection probes)",
                           detail=f"measured safe alpha {meas.K:.4g} ({meas.cause}), certified {cert.K:.4g}"))
    return out
