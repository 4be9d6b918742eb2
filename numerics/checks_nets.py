"""Battery entries on exact networks: T1-T4, W, W', P, N, R1, R2, SPECDEF-OPT.

Instances are drawn as small integers (architecture, dimensions, a seed, strengths) and
built deterministically: data, weights and group elements are rationals with small
denominators, so the transformation laws, P, N and R1 are checked in exact rational
arithmetic (residual exactly 0, err = 0). Spectral statements use certified enclosures
(``linalg.sym_eig`` at ``DPS`` digits: measured +- radius) and bounds from
``theory.bounds`` evaluated at the corners of their certified input intervals (each bound
used is monotone in each input over the box), plus ``reparam.rounding_allowance``.
Irrational defenses (SpecDef, geometric diagonal scaling) and R2 canonical points are arb
balls at ``nets.ARB_PREC`` bits, so their Hessians and loss sequences are enclosures too.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Sequence

import flint
import mpmath
import numpy as np
from hypothesis import strategies as st

from convrate.numerics.battery import entry
from convrate.numerics.nets import (
    ARB_PREC,
    BALL,
    EXACT,
    ChainNet,
    DeepLinear,
    ReluKinkError,
    SingularHessianError,
    TwoLayerLinear,
    TwoLayerReLU,
    arb_precision,
    at_arb_precision,
    arb_radius,
    arb_to_mpf,
    as_field_rows,
    certified_spectrum,
    column,
    exact_inertia,
    gd_iterates,
    identity,
    kron,
    max_abs_entry,
    newton_iterates,
    pack,
    to_arb,
    to_fmpq,
    to_fraction,
)
from convrate.numerics.recovery import (
    canonicalize_pair,
    parameter_norm_sq,
    r1_preconditioner,
    r1_reparameterize,
)
from convrate.numerics.reparam import (
    DiagonalScaling,
    Enclosure,
    Reparameterization,
    SpecDef,
    Symmetry,
    rational_element,
    rational_monomial,
    rational_svd_matrix,
    rational_unimodular_element,
    rounding_allowance,
    singular_value_range,
)
from convrate.theory import bounds, bounds_nets
from convrate.theory.core import CheckResult, compare

DPS = 40
#: precision of the irrational defenses (their balls' radii come from it; R2's balancing
#: amplifies input radii by up to ~kappa^6, so they start far below the working precision)
DEFENSE_DPS = 100
EXACT_P = "exact rational (fmpq)"
CERT_P = f"mpmath dps={DPS} + sym_eig enclosure"
BALL_P = f"arb balls ({ARB_PREC} bits) + mpmath dps={DPS} sym_eig enclosure"

KAPPAS = (Fraction(2), Fraction(3), Fraction(7, 2), Fraction(10), Fraction(100))


# ---------------------------------------------------------------- instances
def _small(rng: np.random.Generator, lo: int = -3, hi: int = 3) -> Fraction:
    return Fraction(int(rng.integers(lo, hi + 1)), int(rng.choice([1, 2, 3])))


@dataclass(frozen=True)
class NetCase:
    """A drawn network instance: architecture, sizes, seed, strength of the rational T."""

    arch: str  # "linear2" | "relu2" | "deep3"
    n_in: int
    r: int
    n_out: int
    N: int
    seed: int
    kappa: Fraction = Fraction(3)
    zero_bias: bool = False
    active: int = 0  # ReLU: raise b_i until unit i is active on at least this many samples

    def rng(self, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, salt])

    def net(self) -> ChainNet:
        rng = self.rng(0)
        X = [[_small(rng) for _ in range(self.n_in)] for _ in range(self.N)]
        Y = [[_small(rng, -2, 2) for _ in range(self.n_out)] for _ in range(self.N)]
        if self.arch == "linear2":
            return TwoLayerLinear(self.n_in, self.r, self.n_out, X, Y)
        if self.arch == "relu2":
            return TwoLayerReLU(self.n_in, self.r, self.n_out, X, Y)
        if self.arch == "deep3":
            return DeepLinear([self.n_in, self.r, self.r, self.n_out], X, Y)
        raise ValueError(f"unknown architecture {self.arch!r}")

    def build(self) -> tuple[ChainNet, list[Fraction]]:
        """(net, theta) with theta a list of Fractions; ReLU nets are nudged off the kinks
        (b_i += 1/5 until no pre-activation of unit i is exactly 0)."""
        net = self.net()
        rng = self.rng(1)
        theta = [_small(rng) for _ in range(net.n_params)]
        s = net.slots[0]
        if s.bias and self.zero_bias:
            for i in range(s.n_out):
                theta[s.offset + s.weight_size + i] = Fraction(0)
        if self.arch == "relu2":
            for i in range(s.n_out):
                w = theta[s.offset + i * s.n_in: s.offset + (i + 1) * s.n_in]
                bi = s.offset + s.weight_size + i
                pre = [sum(wj * to_fraction(xj) for wj, xj in zip(w, x)) for x in net.X]
                while sum(1 for z in pre if z + theta[bi] > 0) < min(self.active, self.N):
                    theta[bi] += 1
                while any(z + theta[bi] == 0 for z in pre):
                    theta[bi] += Fraction(1, 5)
        return net, theta

    def reparameterization(self, net: ChainNet) -> Reparameterization:
        """Rational T: S1 with A = Q1 diag(d) Q2 (kappa(A) = kappa) on every linear pair of
        the net (deep3: both pairs, sharing the middle layer), S2 with A = P D (relu2)."""
        rng = self.rng(2)
        if self.arch == "relu2":
            sym = Symmetry(net, "S2", 0)
            return Reparameterization(net, ((sym, rational_monomial(self.r, self.kappa, rng)),))
        parts = []
        for p in range(len(net.slots) - 1):
            sym = Symmetry(net, "S1", p)
            parts.append((sym, rational_element(sym.r, self.kappa, rng)))
        return Reparameterization(net, tuple(parts))


def net_cases(archs: Sequence[str] = ("linear2", "relu2", "deep3"), max_in: int = 3, max_r: int = 3,
              max_out: int = 2, max_N: int = 5, zero_bias: bool = False,
              kappas: Sequence[Fraction] = KAPPAS) -> st.SearchStrategy:
    """``NetCase``s; ``kappas`` are the strengths kappa(A) of the rational T (1: A orthogonal,
    T orthogonal -- where norm bounds such as T4's are attained)."""
    return st.builds(
        NetCase,
        arch=st.sampled_from(tuple(archs)),
        n_in=st.integers(1, max_in),
        r=st.integers(1, max_r),
        n_out=st.integers(1, max_out),
        N=st.integers(2, max_N),
        seed=st.integers(0, 2**32 - 1),
        kappa=st.sampled_from(tuple(kappas)),
        zero_bias=st.booleans() if zero_bias else st.just(False),
    )


# ---------------------------------------------------------------- helpers
def _q(x: Any) -> Fraction:
    return to_fraction(x)


def _col(theta: Sequence[Fraction]) -> Any:
    return column([to_fmpq(v) for v in theta], EXACT)


def _exact_eq(statement: str, inst: str, what: str, A: Any, B: Any) -> CheckResult:
    """max |A - B| == 0 in exact rationals."""
    res, _ = max_abs_entry(A - B)
    return compare(statement, inst, res, "==", 0, precision=EXACT_P, detail=f"max |{what}| (exact residual)")


def _ball_eq(statement: str, inst: str, what: str, A: Any, B: Any) -> CheckResult:
    """A - B contains 0 entrywise: max |mid| <= max radius (rigorous: the exact difference
    lies in the ball)."""
    with arb_precision():
        D = A - B
    val, err = max_abs_entry(D)
    return compare(statement, inst, val, "==", 0, precision=BALL_P, err=err,
                   detail=f"max |{what}| (ball midpoints; err = largest ball radius)")


def _eig(M: Any, name: str = "H"):
    return certified_spectrum(M, name)


def _encl(e, k: int) -> Enclosure:
    return Enclosure(e.values[k], e.radius[k])


def _lambda_min_psd(M: Any) -> Enclosure | Fraction:
    """lambda_min of an exact PSD matrix: exactly 0 when det = 0, else certified."""
    _, rows = as_field_rows(M, EXACT)
    Mm = pack(rows, EXACT)
    if Mm.det() == 0:
        return Fraction(0)
    return _encl(_eig(Mm), 0)


def _bound(fn: Callable[..., Any], *args: Any) -> Enclosure:
    """Enclosure of fn over the box of its Enclosure arguments: fn at the midpoint, err =
    max deviation at the corners (fn monotone in each argument on the box) + rounding."""
    mid = mpmath.mpf(fn(*[a.value if isinstance(a, Enclosure) else a for a in args]))
    dev, top = mpmath.mpf(0), abs(mid)
    choices = [(a.lo, a.hi) if isinstance(a, Enclosure) else (a,) for a in args]
    for corner in itertools.product(*choices):
        v = mpmath.mpf(fn(*corner))
        dev, top = max(dev, abs(v - mid)), max(top, abs(v))
    return Enclosure(mid, dev + rounding_allowance(top))


def _cmp(statement: str, inst: str, measured: Any, relation: str, bound: Any, *, precision: str = CERT_P,
         detail: str = "") -> CheckResult:
    """compare() with Enclosure / exact operands; err = sum of their radii."""
    err = mpmath.mpf(0)
    if isinstance(measured, Enclosure):
        err += measured.radius
        measured = measured.value
    if isinstance(bound, Enclosure):
        err += bound.radius
        bound = bound.value
    return compare(statement, inst, measured, relation, bound, precision=precision, err=err, detail=detail)


def _arb_encl(x: flint.arb) -> Enclosure:
    return Enclosure(arb_to_mpf(x), arb_radius(x))


def _sqrt_encl(x: Any) -> Enclosure:
    """sqrt of an exact nonnegative rational or of an Enclosure."""
    if isinstance(x, Enclosure):
        lo, hi = max(x.lo, mpmath.mpf(0)), x.hi
    else:
        f = _q(x) if not isinstance(x, Fraction) else x
        lo = hi = mpmath.mpf(f.numerator) / f.denominator
        lo, hi = lo - rounding_allowance(lo), hi + rounding_allowance(hi)
        lo = max(lo, mpmath.mpf(0))
    a, b = mpmath.sqrt(lo), mpmath.sqrt(hi)
    a, b = a - rounding_allowance(a), b + rounding_allowance(b)
    return Enclosure((a + b) / 2, (b - a) / 2)


def _second_moment(vectors: Sequence[Sequence[Any]], kind: str) -> Any:
    """1/N sum_k v_k v_k^T."""
    n = len(vectors[0])
    with arb_precision():
        zero = to_fmpq(0) if kind == EXACT else flint.arb(0)
        S = [[sum((v[i] * v[j] for v in vectors), zero) / len(vectors) for j in range(n)] for i in range(n)]
        return pack(S, kind)


def _block(M: Any, lo: int, hi: int) -> Any:
    kind, rows = as_field_rows(M)
    return pack([r[lo:hi] for r in rows[lo:hi]], kind)


def _gd(net: ChainNet, theta0: Any, eta: Fraction, steps: int, preconditioner: Any = None) -> tuple[list[Any], str]:
    """Exact GD iterates, stopped before an iterate lands exactly on a ReLU kink (possible in
    rational arithmetic; the loss is not differentiable there). Returns (iterates, note)."""
    out = [gd_iterates(net, theta0, eta, 0)[0]]
    for t in range(steps):
        try:
            out.append(gd_iterates(net, out[-1], eta, 1, preconditioner)[1])
        except ReluKinkError as exc:
            return out, f"stopped after {t} steps: {exc}"
    return out, ""


def _describe(case: NetCase, rep: Reparameterization | None = None, extra: str = "") -> str:
    s = repr(case)
    if rep is not None:
        s += f" T={[(sym.family, sym.pair) for sym, _ in rep.parts]}"
    return s + (f" {extra}" if extra else "")


def _augmented_inputs(net: ChainNet, with_bias: bool) -> list[list[flint.fmpq]]:
    return [x + [flint.fmpq(1)] if with_bias else list(x) for x in net.X]


# ---------------------------------------------------------------- T1, T2 (exact identities)
@entry("nets_T1_T2_laws", ("T1", "T2"), net_cases())
@at_arb_precision
def check_transformation_laws(case: NetCase) -> list[CheckResult]:
    """f(x; T theta) = f(x; theta); grad L(T theta) = T^-T grad L(theta);
    H(T theta) = T^-T H(theta) T^-1; inertia(H(T theta)) = inertia(H(theta)) -- all exact,
    with the derivatives at T theta computed by the net itself (not from the identities)."""
    net, theta = case.build()
    rep = case.reparameterization(net)
    th = _col(theta)
    T = rep.matrix()
    S = T.inv()
    th2 = rep.apply(th)
    inst = _describe(case, rep)
    out = [_exact_eq("T1", inst, "T theta (part by part) - T theta (dense T)", th2, T * th)]
    rng = case.rng(3)
    xs = [[_small(rng) for _ in range(net.n_in)] for _ in range(2)]
    f1 = net.outputs(th) + [net.function(th, x) for x in xs]
    f2 = net.outputs(th2) + [net.function(th2, x) for x in xs]
    diff = max(abs(_q(a) - _q(b)) for u, v in zip(f1, f2) for a, b in zip(u, v))
    out.append(compare("T1", inst, diff, "==", 0, precision=EXACT_P,
                       detail=f"function preservation: max |f(x; T theta) - f(x; theta)| over data + {len(xs)} fresh inputs"))
    out.append(_exact_eq("T1", inst, "grad L(T theta) - T^-T grad L(theta)", net.gradient(th2),
                         S.transpose() * net.gradient(th)))
    H, H2 = net.hessian(th), net.hessian(th2)
    out.append(_exact_eq("T2", inst, "H(T theta) - T^-T H(theta) T^-1", H2, S.transpose() * H * S))
    i1, i2 = exact_inertia(H), exact_inertia(H2)
    for name, a, b in zip(("positive", "zero", "negative"), i1, i2):
        out.append(compare("T2", inst, b, "==", a, precision=EXACT_P,
                           detail=f"Sylvester: number of {name} eigenvalues of H(T theta) vs H(theta) (Descartes on the charpoly)"))
    return out


# ---------------------------------------------------------------- T2 Ostrowski
@entry("nets_T2_ostrowski", ("T2",), net_cases(max_in=2, max_r=3), cost=2)
@at_arb_precision
def check_ostrowski(case: NetCase) -> list[CheckResult]:
    """lambda_k(H(T theta)) in ostrowski_interval(lambda_k(H), sigma_min(T^-1), sigma_max(T^-1))
    for every k, with certified eigenvalues of both Hessians and of T^-T T^-1."""
    net, theta = case.build()
    rep = case.reparameterization(net)
    th = _col(theta)
    inst = _describe(case, rep)
    out = []
    with mpmath.workdps(DPS):
        e1 = _eig(net.hessian(th))
        e2 = _eig(net.hessian(rep.apply(th)))
        smin, smax = singular_value_range(rep.matrix().inv())
        for k in range(net.n_params):
            lam = _encl(e1, k)
            lo = _bound(lambda l, a, b: bounds.ostrowski_interval(l, a, b)[0], lam, smin, smax)
            hi = _bound(lambda l, a, b: bounds.ostrowski_interval(l, a, b)[1], lam, smin, smax)
            m = _encl(e2, k)
            out.append(_cmp("T2", inst, m, ">=", lo, detail=f"Ostrowski lower end, k={k}"))
            out.append(_cmp("T2", inst, m, "<=", hi, detail=f"Ostrowski upper end, k={k}"))
    return out


# ---------------------------------------------------------------- T3
DAMPINGS = (Fraction(1, 10), Fraction(1, 2), Fraction(1), Fraction(3))


@entry("nets_T3_condition", ("T3",), st.tuples(net_cases(max_in=2), st.sampled_from(DAMPINGS)), cost=2)
@at_arb_precision
def check_condition(inst_: tuple[NetCase, Fraction]) -> list[CheckResult]:
    """kappa(H)/kappa(T)^2 <= kappa(T^-T H T^-1) <= kappa(T)^2 kappa(H) for H > 0.
    H = the damped Gauss-Newton matrix J^T J / N + delta I of the net at theta (always SPD),
    T the net's reparameterization; when the net Hessian itself is certified positive
    definite at theta, also H = Hessian at theta and H' = Hessian at T theta."""
    case, delta = inst_
    net, theta = case.build()
    rep = case.reparameterization(net)
    th = _col(theta)
    T = rep.matrix()
    S = T.inv()
    out = []
    with mpmath.workdps(DPS):
        kT = rep.kappa()
        G = net.gauss_newton(th) + identity(net.n_params, EXACT) * to_fmpq(delta)
        pairs = [("damped Gauss-Newton J^T J/N + delta I", G, S.transpose() * G * S)]
        H = net.hessian(th)
        eH = _eig(H)
        if eH.interval(0)[0] > 0:
            pairs.append(("net Hessian (certified PD at theta)", H, net.hessian(rep.apply(th))))
        for what, M, M2 in pairs:
            e1 = eH if M is H else _eig(M)
            e2 = _eig(M2)
            if not e1.interval(0)[0] > 0:
                continue
            k1 = _bound(lambda a, b: a / b, _encl(e1, -1), _encl(e1, 0))
            k2 = _bound(lambda a, b: a / b, _encl(e2, -1), _encl(e2, 0))
            lo = _bound(lambda a, b: bounds.condition_interval(a, b)[0], k1, kT)
            hi = _bound(lambda a, b: bounds.condition_interval(a, b)[1], k1, kT)
            inst = _describe(case, rep, f"H={what}, delta={delta}")
            out.append(_cmp("T3", inst, k2, ">=", lo, detail="kappa(H') >= kappa(H)/kappa(T)^2"))
            out.append(_cmp("T3", inst, k2, "<=", hi, detail="kappa(H') <= kappa(T)^2 kappa(H)"))
    return out


# ---------------------------------------------------------------- T4
def _mode_products(Tn: list, S: Any) -> list:
    """T'[a,b,c] = sum T[i,j,k] S[i,a] S[j,b] S[k,c] (exact)."""
    n = len(Tn)
    s = [[S[i, j] for j in range(n)] for i in range(n)]
    zero = flint.fmpq(0)
    A = [[[sum((Tn[i][j][k] * s[i][a] for i in range(n) if s[i][a] != 0), zero) for k in range(n)]
          for j in range(n)] for a in range(n)]
    B = [[[sum((A[a][j][k] * s[j][b] for j in range(n) if s[j][b] != 0), zero) for k in range(n)]
          for b in range(n)] for a in range(n)]
    return [[[sum((B[a][b][k] * s[k][c] for k in range(n) if s[k][c] != 0), zero) for c in range(n)]
             for b in range(n)] for a in range(n)]


@entry("nets_T4_third_derivative", ("T4",), net_cases(max_in=2, max_r=2, max_N=4, kappas=(Fraction(1),) + KAPPAS))
@at_arb_precision
def check_third_derivative(case: NetCase) -> list[CheckResult]:
    """D^3 L(T theta) = D^3 L(theta) o (T^-1, T^-1, T^-1) exactly (full tensor, and along
    lines by an independent polynomial expansion), and
    ||D^3 L(T theta)||_F <= third_derivative_bound(||D^3 L(theta)||_F, sigma_max(T^-1))."""
    net, theta = case.build()
    rep = case.reparameterization(net)
    th = _col(theta)
    th2 = rep.apply(th)
    S = rep.matrix().inv()
    inst = _describe(case, rep)
    n = net.n_params
    D1, D2 = net.third_derivative_tensor(th), net.third_derivative_tensor(th2)
    pulled = _mode_products(D1, S)
    res = max((abs(_q(D2[a][b][c] - pulled[a][b][c])) for a in range(n) for b in range(n) for c in range(n)),
              default=Fraction(0))
    out = [compare("T4", inst, res, "==", 0, precision=EXACT_P,
                   detail="max |D3L(T theta) - D3L(theta) o (T^-1,T^-1,T^-1)| (full tensors, exact)")]
    rng = case.rng(4)
    u, v, w = ([_small(rng) for _ in range(n)] for _ in range(3))
    Su, Sv, Sw = (S * _col(z) for z in (u, v, w))
    lhs = net.directional_derivative(th2, u, 3)
    rhs = net.directional_derivative(th, Su, 3)
    out.append(compare("T4", inst, abs(_q(lhs - rhs)), "==", 0, precision=EXACT_P,
                       detail="D3L(T theta)[u,u,u] - D3L(theta)[T^-1 u]^3 (line polynomials, exact)"))
    lhs = net.third_derivative_action(th2, u, v, w)
    rhs = net.third_derivative_action(th, Su, Sv, Sw)
    out.append(compare("T4", inst, abs(_q(lhs - rhs)), "==", 0, precision=EXACT_P,
                       detail="D3L(T theta)[u,v,w] - D3L(theta)[T^-1 u, T^-1 v, T^-1 w] (polarization, exact)"))
    f1 = sum((_q(x) ** 2 for P in D1 for R in P for x in R), Fraction(0))
    f2 = sum((_q(x) ** 2 for P in D2 for R in P for x in R), Fraction(0))
    with mpmath.workdps(DPS):
        _, smax = singular_value_range(S)
        bound = _bound(bounds.third_derivative_bound, _sqrt_encl(f1), smax)
        out.append(_cmp("T4", inst, _sqrt_encl(f2), "<=", bound,
                        detail=f"||D3L'||_F <= ||T^-1||^3 ||D3L||_F (||.||_F^2 exact: {float(f2):.4g} vs {float(f1):.4g})"))
    return out


# ---------------------------------------------------------------- W, W' (rational)
def _w_blocks(net: ChainNet) -> tuple[int, int, int, int]:
    """(W_a start, W_a end, W_b start, W_b end) indices: first layer weights, last layer weights."""
    a, b = net.slots[0], net.slots[-1]
    return a.offset, a.offset + a.weight_size, b.offset, b.offset + b.weight_size


def _input_map(net: ChainNet, theta: Any, with_bias: bool) -> Any:
    """The linear map from the (augmented) input to h for a linear net: [W_a | b_a] for the
    two-layer net, W_{L-1} ... W_1 for a deep linear net."""
    params = net.unflatten(theta)
    if len(params) == 2:
        Wa, ba = params[0]
        _, rows = as_field_rows(Wa)
        if with_bias:
            rows = [r + [ba[i, 0]] for i, r in enumerate(rows)]
        return pack(rows, EXACT)
    M = params[0][0]
    for W, _ in params[1:-1]:
        M = W * M
    return M


@entry("nets_W_Wprime_rational", ("W", "W'"), net_cases(max_in=3, max_r=3, zero_bias=True), cost=2)
@at_arb_precision
def check_curvature_rational(case: NetCase) -> list[CheckResult]:
    """W: the W_b block of H equals I_{n_out} (x) E[h h^T] (row-major) exactly;
    lambda_max(H) >= lambda_max_lower_bound_hidden(lambda_max(E[hh^T])); for linear nets
    lambda_max(E[hh^T]) >= lambda_max_lower_bound_linear(sigma_max(W~), lambda_min(E[x~x~^T]))
    with (W~, x~) = (W_a, x) when b_a = 0 (the statement as written), ([W_a | b_a], (x, 1))
    otherwise (with a bias the uncentered E[x x^T] form is false: see the module report);
    for ReLU with the rational S2 element A = P D: lambda_max(H(T theta)) >=
    lambda_max_lower_bound_relu(D, E[h_i^2]). W': lambda_min(H'_aa) <=
    aa_block_lambda_min_upper_bound(lambda_max(H_aa), sigma_max(A)) (W_a block, exact
    transformation (A^-T (x) I) H_aa (A^-1 (x) I) checked too)."""
    net, theta = case.build()
    rep = case.reparameterization(net)
    th = _col(theta)
    inst = _describe(case, rep)
    out = []
    a0, a1, b0, b1 = _w_blocks(net)
    H = net.hessian(th)
    h = net.hidden(th)
    Shh = _second_moment(h, EXACT)
    out.append(_exact_eq("W", inst, "H_bb - I_{n_out} (x) E[h h^T]", _block(H, b0, b1),
                         kron(identity(net.n_out, EXACT), Shh)))
    with mpmath.workdps(DPS):
        eH = _eig(H)
        eS = _eig(Shh, "E[hh^T]")
        hid = _bound(bounds.lambda_max_lower_bound_hidden, _encl(eS, -1))
        out.append(_cmp("W", inst, _encl(eH, -1), ">=", hid, detail="lambda_max(H) >= lambda_max(E[hh^T])"))
        if case.arch in ("linear2", "deep3"):
            with_bias = net.slots[0].bias and not case.zero_bias
            Wt = _input_map(net, th, with_bias)
            Sxx = _second_moment(_augmented_inputs(net, with_bias), EXACT)
            smax = _sqrt_encl(_encl(_eig(Wt * Wt.transpose(), "W W^T"), -1))
            lmin = _lambda_min_psd(Sxx)
            lin = _bound(bounds.lambda_max_lower_bound_linear, smax, lmin)
            form = "[W_a|b_a], E[x~x~^T]" if with_bias else ("W_a, E[xx^T]" if case.arch == "linear2" else "W_2 W_1, E[xx^T]")
            out.append(_cmp("W", inst, _encl(eS, -1), ">=", lin,
                            detail=f"lambda_max(E[hh^T]) >= sigma_max^2 lambda_min ({form})"))
            out.append(_cmp("W", inst, _encl(eH, -1), ">=", lin, detail=f"lambda_max(H) >= sigma_max^2 lambda_min ({form})"))
        th2 = rep.apply(th)
        H2 = net.hessian(th2)
        sym, A = rep.parts[0]
        if case.arch == "relu2":
            _, Arows = as_field_rows(A, EXACT)
            D = [next(Arows[i][j] for i in range(case.r) if Arows[i][j] != 0) for j in range(case.r)]
            moments = [Shh[i, i] for i in range(case.r)]
            e2 = _eig(H2)
            rb = bounds.lambda_max_lower_bound_relu([_q(d) for d in D], [_q(m) for m in moments])
            out.append(_cmp("W", inst, _encl(e2, -1), ">=", Enclosure(rb, rounding_allowance(rb)),
                            detail="S2: lambda_max(H') >= max_i D_i^2 E[h_i^2]"))
        # W'
        Ainv = pack(as_field_rows(A, EXACT)[1], EXACT).inv()
        n_in = net.slots[0].n_in
        K = kron(Ainv, identity(n_in, EXACT))
        Haa, H2aa = _block(H, a0, a1), _block(H2, a0, a1)
        out.append(_exact_eq("W'", inst, "H'_aa - (A^-T (x) I) H_aa (A^-1 (x) I)", H2aa, K.transpose() * Haa * K))
        _, sA = singular_value_range(A)
        ub = _bound(bounds.aa_block_lambda_min_upper_bound, _encl(_eig(Haa), -1), sA)
        out.append(_cmp("W'", inst, _encl(_eig(H2aa), 0), "<=", ub,
                        detail="lambda_min(H'_aa) <= lambda_max(H_aa) / sigma_max(A)^2"))
    return out


# ---------------------------------------------------------------- W, W' under SpecDef (balls)
@dataclass(frozen=True)
class SpecCase:
    """TwoLayerLinear with W_a = U Sigma V^T exact (SpecDef, S1) or TwoLayerReLU with the
    geometric diagonal scaling (S2); strength K up to 1e4."""

    arch: str  # "linear2" | "relu2"
    n_in: int
    r: int
    n_out: int
    N: int
    seed: int
    K: int
    profile: str
    zero_bias: bool


def spec_cases(archs: Sequence[str] = ("linear2", "relu2")) -> st.SearchStrategy:
    return st.builds(SpecCase, arch=st.sampled_from(tuple(archs)), n_in=st.integers(1, 3), r=st.integers(1, 3),
                     n_out=st.integers(1, 2), N=st.integers(2, 5), seed=st.integers(0, 2**32 - 1),
                     K=st.integers(2, 10**4), profile=st.sampled_from(("geometric", "spike")),
                     zero_bias=st.booleans())


def _distinct_sigmas(rng: np.random.Generator, m: int) -> list[Fraction]:
    vals = sorted({Fraction(int(rng.integers(1, 13)), 4) for _ in range(4 * m)}, reverse=True)
    while len(vals) < m:
        vals.append(vals[-1] / 2)
    return vals[:m]


def _spec_instance(case: SpecCase) -> tuple[ChainNet, list[Fraction], Any]:
    """(net, theta, U): W_a has the exact SVD U Sigma V^T (U returned) for linear2."""
    base = NetCase(case.arch, case.n_in, case.r, case.n_out, case.N, case.seed, zero_bias=case.zero_bias)
    net, theta = base.build()
    if case.arch != "linear2":
        return net, theta, None
    rng = np.random.default_rng([case.seed, 7])
    W, U, _ = rational_svd_matrix(_distinct_sigmas(rng, min(case.r, case.n_in)), case.r, case.n_in, rng)
    s = net.slots[0]
    for i in range(case.r):
        for j in range(case.n_in):
            theta[s.offset + i * case.n_in + j] = _q(W[i, j])
    return net, theta, U


@entry("nets_W_Wprime_specdef", ("W", "W'"), spec_cases())
@at_arb_precision
def check_curvature_specdef(case: SpecCase) -> list[CheckResult]:
    """W under SpecDef: lambda_max(H') >= lambda_max_lower_bound_specdef(s, sigma(W_a),
    lambda_min(E[x~x~^T])) (x~ = (x, 1) unless b_a = 0); S2 geometric D:
    lambda_max(H') >= lambda_max_lower_bound_relu(D, E[h_i^2]). W': lambda_min(H'_aa) <=
    aa_block_lambda_min_upper_bound(lambda_max(H_aa), sigma_max(A)). H' is the net's own
    Hessian at the ball point T theta (arb), enclosed with its ball radii."""
    net, theta, U = _spec_instance(case)
    th = _col(theta)
    out = []
    with mpmath.workdps(DPS):
        if case.arch == "linear2":
            defense = SpecDef(case.K, case.profile, dps=DEFENSE_DPS)
            rep = defense.reparameterize(net, th, basis=U)
        else:
            defense = DiagonalScaling(case.K, case.profile, dps=DEFENSE_DPS)
            rep = defense.reparameterize(net, th)
        inst = f"{case!r} defense={defense.name}"
        sym, A = rep.parts[0]
        th2 = rep.apply(th)
        H, H2 = net.hessian(th), net.hessian(th2)
        e2 = _eig(H2, "H'")
        if case.arch == "linear2":
            with_bias = not case.zero_bias
            Wa = net.unflatten(th)[0][0]
            eW = _eig(Wa * Wa.transpose(), "W_a W_a^T")
            sig = [_sqrt_encl(_encl(eW, k)) for k in reversed(range(case.r))]
            s = defense.strengths(case.r)
            s_encl = [Enclosure(x, rounding_allowance(x)) for x in s]
            lmin = _lambda_min_psd(_second_moment(_augmented_inputs(net, with_bias), EXACT))
            r = case.r
            lb = _bound(lambda *z: bounds.lambda_max_lower_bound_specdef(z[:r], z[r:2 * r], z[2 * r]), *s_encl, *sig, lmin)
            out.append(_cmp("W", inst, _encl(e2, -1), ">=", lb, precision=BALL_P,
                            detail=f"SpecDef: lambda_max(H') >= (max s_i sigma_i)^2 lambda_min ({'E[x~x~^T]' if with_bias else 'E[xx^T]'})"))
        else:
            h = net.hidden(th)
            moments = [_q(sum((v[i] * v[i] for v in h), flint.fmpq(0)) / len(h)) for i in range(case.r)]
            _, Arows = as_field_rows(A, BALL)
            D = [next(Arows[i][j] for i in range(case.r) if not (Arows[i][j].is_exact() and Arows[i][j] == 0))
                 for j in range(case.r)]
            D_encl = [Enclosure(arb_to_mpf(d), arb_radius(d)) for d in D]
            rb = _bound(lambda *d: bounds.lambda_max_lower_bound_relu(d, moments), *D_encl)
            out.append(_cmp("W", inst, _encl(e2, -1), ">=", rb, precision=BALL_P,
                            detail=f"S2 {case.profile} D: lambda_max(H') >= max_i D_i^2 E[h_i^2]"))
        a0, a1, _, _ = _w_blocks(net)
        _, sA = singular_value_range(A)
        ub = _bound(bounds.aa_block_lambda_min_upper_bound, _encl(_eig(_block(H, a0, a1)), -1), sA)
        out.append(_cmp("W'", inst, _encl(_eig(_block(H2, a0, a1), "H'_aa"), 0), "<=", ub, precision=BALL_P,
                        detail="lambda_min(H'_aa) <= lambda_max(H_aa) / sigma_max(A)^2"))
    return out


# ---------------------------------------------------------------- P, N
def _newton_cases() -> st.SearchStrategy:
    """Cases where the Hessian is generically nonsingular, so Newton is defined: N >= n_in + 2
    samples (a direction of W_a orthogonal to every augmented input is an exact null vector),
    r <= min(n_in, n_out) (if W_b M = 0 for some M != 0, the line theta + t (M W_a, M b_a, 0)
    leaves f unchanged, an exact null vector; likewise M W_a = 0 on the input side), and each
    ReLU unit active on >= n_in + 1 samples (a dead direction is a null vector)."""
    return st.tuples(st.integers(1, 2), st.integers(1, 2)).flatmap(lambda d: st.builds(
        NetCase, arch=st.sampled_from(("linear2", "relu2", "deep3")), n_in=st.just(d[0]), r=st.integers(1, min(d)),
        n_out=st.just(d[1]), N=st.integers(d[0] + 2, 5), seed=st.integers(0, 2**32 - 1),
        kappa=st.sampled_from(KAPPAS), active=st.just(d[0] + 1)))


@entry("nets_P_N", ("P", "N"), st.tuples(_newton_cases(), st.sampled_from(
    (Fraction(1, 10), Fraction(1, 4), Fraction(1)))))
@at_arb_precision
def check_preconditioner_newton(inst_: tuple[NetCase, Fraction]) -> list[CheckResult]:
    """P: GD on L' (the net loss, from T theta_0) mapped back by T^-1 equals preconditioned
    GD on L with P = T^-1 T^-T, 3 steps, exact. N: Newton from T theta_0 gives T theta_t
    (2 steps, exact); skipped (said in the detail) when some Hessian is exactly singular."""
    case, eta = inst_
    net, theta = case.build()
    rep = case.reparameterization(net)
    th = _col(theta)
    T = rep.matrix()
    S = T.inv()
    inst = _describe(case, rep, f"eta={eta}")
    out = []
    defended, note1 = _gd(net, rep.apply(th), eta, 3)
    precond, note2 = _gd(net, th, eta, 3, preconditioner=S * S.transpose())
    out.append(compare("P", inst, len(defended), "==", len(precond), precision="exact integer",
                       detail=f"GD steps completed on L' and preconditioned on L (a ReLU kink stops both alike) {note1}"))
    for t, (a, b) in enumerate(zip(defended, precond)):
        if t:
            out.append(_exact_eq("P", inst, f"T^-1 theta'_{t} - theta^P_{t}", S * a, b))
    try:
        nd = newton_iterates(net, rep.apply(th), 2)
        nu = newton_iterates(net, th, 2)
    except SingularHessianError as exc:
        out.append(compare("P", inst, _q(net.loss(defended[-1]) - net.loss(precond[-1])), "==", 0, precision=EXACT_P,
                           detail=f"L'(theta'_3) - L(theta^P_3); N skipped: {exc}"))
        return out
    except ReluKinkError as exc:
        out.append(compare("P", inst, _q(net.loss(defended[-1]) - net.loss(precond[-1])), "==", 0, precision=EXACT_P,
                           detail=f"L'(theta'_3) - L(theta^P_3); N skipped: a Newton iterate hit a ReLU kink ({exc})"))
        return out
    for t, (a, b) in enumerate(zip(nd, nu)):
        if t:
            out.append(_exact_eq("N", inst, f"theta'_{t} - T theta_{t} (Newton)", a, T * b))
    return out


# ---------------------------------------------------------------- R1
@entry("nets_R1", ("R1",), st.tuples(net_cases(max_in=3, max_r=3, max_N=4), st.sampled_from(
    (Fraction(1, 10), Fraction(1, 3), Fraction(1)))))
@at_arb_precision
def check_r1(inst_: tuple[NetCase, Fraction]) -> list[CheckResult]:
    """R1: (a) GD on the net with frozen A, A^-1 inserted, from phi_0 = T^-1 theta'_0, and
    (b) GD on the defended loss with P' = T T^T, both give exactly the undefended losses and
    iterates (3 steps, any drawn step); extra stored entries == sum of
    recovery_extra_parameters(family, r) <= the per-pair bound 2 (r/min(n_in, n_out)) *
    (pair parameters) (bounds.recovery_extra_parameters_bound for pairs with a bias)."""
    case, eta = inst_
    net, theta = case.build()
    rep = case.reparameterization(net)
    th = _col(theta)
    inst = _describe(case, rep, f"eta={eta}")
    steps = 3
    base, note = _gd(net, th, eta, steps)
    base_loss = [net.loss(x) for x in base]
    rec = r1_reparameterize(rep)
    th_def = rep.apply(th)
    phi, _ = _gd(rec.net, rec.start(th_def), eta, steps)
    pre, _ = _gd(net, th_def, eta, steps, preconditioner=r1_preconditioner(rep))
    t = len(base) - 1
    out = [compare("R1", inst, len(phi), "==", len(base), precision="exact integer",
                   detail=f"GD steps completed, reparameterized vs undefended {note}"),
           compare("R1", inst, len(pre), "==", len(base), precision="exact integer",
                   detail=f"GD steps completed, preconditioned vs undefended {note}"),
           compare("R1", inst, max(abs(_q(rec.net.loss(p) - l)) for p, l in zip(phi, base_loss)), "==", 0,
                   precision=EXACT_P, detail="reparameterized (frozen A, A^-1): max_t |L_R1(phi_t) - L(theta_t)|"),
           _exact_eq("R1", inst, f"phi_{t} - theta_{t}", phi[-1], base[-1])]
    out.append(compare("R1", inst, max(abs(_q(net.loss(p) - l)) for p, l in zip(pre, base_loss)), "==", 0,
                       precision=EXACT_P, detail="preconditioned P' = T T^T: max_t |L'(theta'_t) - L(theta_t)|"))
    out.append(_exact_eq("R1", inst, f"T^-1 theta'_{t} - theta_{t}", rep.inverse().apply(pre[-1]), base[-1]))
    out.append(compare("R1", inst, rec.extra_parameters, "==", rep.extra_parameters(), precision="exact integer",
                       detail="stored entries of the inserted frozen layers == sum recovery_extra_parameters(family, r)"))
    for sym, _ in rep.parts:
        cost = bounds.recovery_extra_parameters(sym.family, sym.r)
        if sym.a.bias:
            bound = bounds.recovery_extra_parameters_bound(sym.r, sym.a.n_in, sym.b.n_out)
        else:
            bound = bounds_nets.recovery_extra_parameters_bound_pair(sym.r, sym.a.n_in, sym.b.n_out, bias=False)
        out.append(compare("R1", inst, cost, "<=", bound, precision="exact rational",
                           detail=f"pair {sym.pair}: extra parameters <= 2 (r/min(n_in,n_out)) * pair parameters"))
    return out


# ---------------------------------------------------------------- R2
@dataclass(frozen=True)
class R2Case:
    """R2 instance: a base net, the strengths to compare, GD step and horizon."""

    base: NetCase
    Ks: tuple[int, ...]
    eta: Fraction


def _r2_base(draw_arch: str) -> st.SearchStrategy:
    if draw_arch == "linear2":
        cases = st.builds(NetCase, arch=st.just("linear2"), n_in=st.integers(1, 3), r=st.integers(1, 2),
                          n_out=st.integers(2, 2), N=st.integers(2, 5), seed=st.integers(0, 2**32 - 1))
        cases = st.one_of(cases, st.builds(NetCase, arch=st.just("linear2"), n_in=st.integers(1, 3), r=st.just(1),
                                           n_out=st.just(1), N=st.integers(2, 5), seed=st.integers(0, 2**32 - 1)))
    else:
        cases = st.builds(NetCase, arch=st.just("relu2"), n_in=st.integers(1, 3), r=st.integers(1, 3),
                          n_out=st.integers(1, 2), N=st.integers(2, 5), seed=st.integers(0, 2**32 - 1))
    return st.builds(R2Case, base=cases,
                     Ks=st.lists(st.sampled_from((2, 5, 10, 100, 1000, 10**4)), min_size=2, max_size=3,
                                 unique=True).map(tuple),
                     eta=st.sampled_from((Fraction(1, 64), Fraction(1, 32), Fraction(1, 16))))


def _r2_theta(case: R2Case) -> tuple[ChainNet, list[Fraction]]:
    """Base instance, nudged so that R2 applies: S1 needs W_b [W_a|b_a] of rank r (both Gram
    matrices nonsingular), S2 needs nonzero in/out norms and distinct unit keys."""
    net, theta = case.base.build()
    a, b = net.slots[0], net.slots[1]
    r, n_in, n_out = a.n_out, a.n_in, b.n_out

    def wa(i: int, j: int) -> int:
        return a.offset + i * n_in + j

    def bias(i: int) -> int:
        return a.offset + a.weight_size + i

    def wb(o: int, i: int) -> int:
        return b.offset + o * r + i

    for t in range(60):
        X = pack([[to_fmpq(theta[wa(i, j)]) for j in range(n_in)] + [to_fmpq(theta[bias(i)])] for i in range(r)], EXACT)
        B = pack([[to_fmpq(theta[wb(o, i)]) for i in range(r)] for o in range(n_out)], EXACT)
        if case.base.arch == "linear2":
            ok = (X * X.transpose()).det() != 0 and (B.transpose() * B).det() != 0
        else:
            keys = [tuple(B[o, i] * X[i, j] for o in range(n_out) for j in range(n_in + 1)) for i in range(r)]
            ok = all(any(X[i, j] != 0 for j in range(n_in + 1)) and any(B[o, i] != 0 for o in range(n_out))
                     and keys.count(keys[i]) == 1 for i in range(r))
        if ok:
            return net, theta
        # shift by the "identity" patterns E (X[i, i mod (n_in+1)]) and E' (B[i mod n_out, i]),
        # unit i by (i + 1): det(X_r + t E_r) is monic of degree r in t, so few shifts suffice,
        # and identical units are separated
        for i in range(r):
            j = i % (n_in + 1)
            theta[wa(i, j) if j < n_in else bias(i)] += i + 1
            theta[wb(i % n_out, i)] += i + 1
        if case.base.arch == "relu2":
            theta = _off_kink_bias(net, theta)
    raise AssertionError(f"could not make the R2 instance {case!r} non-degenerate")


def _off_kink_bias(net: ChainNet, theta: list[Fraction]) -> list[Fraction]:
    s = net.slots[0]
    for i in range(s.n_out):
        w = theta[s.offset + i * s.n_in: s.offset + (i + 1) * s.n_in]
        bi = s.offset + s.weight_size + i
        while any(sum(wj * to_fraction(xj) for wj, xj in zip(w, x)) + theta[bi] == 0 for x in net.X):
            theta[bi] += Fraction(1, 5)
    return theta


def _steps_to(losses: Sequence[flint.arb], target: mpmath.mpf) -> tuple[int, mpmath.mpf]:
    """(first t with L_t <= target, or len(losses) if never; the smallest certified margin
    |L_t - target| - radius over the inspected t, which must be > 0 for the count to be certified)."""
    margin = mpmath.inf
    for t, L in enumerate(losses):
        m, rad = arb_to_mpf(L), arb_radius(L)
        margin = min(margin, abs(m - target) - rad)
        if m <= target:
            return t, margin
    return len(losses), margin


def _target(losses: Sequence[flint.arb]) -> mpmath.mpf:
    """A loss target crossed by the sequence: the midpoint of its largest one-step decrease
    (so the crossing margin is half that decrease); L_0 - 1 - |L_0| (never reached) when the
    sequence does not decrease (e.g. a dead ReLU unit makes GD stationary)."""
    mids = [arb_to_mpf(L) for L in losses]
    gaps = [(mids[t - 1] - mids[t], t) for t in range(1, len(mids))]
    gap, t = max(gaps)
    if gap <= 1000 * max(arb_radius(L) for L in losses):
        return mids[0] - 1 - abs(mids[0])
    return (mids[t - 1] + mids[t]) / 2


def _r2_defenses(case: R2Case, net: ChainNet, th: Any, rng: np.random.Generator) -> list[tuple[str, Reparameterization]]:
    out = []
    sym = Symmetry(net, "S1" if case.base.arch == "linear2" else "S2", 0)
    for K in case.Ks:
        if case.base.arch == "linear2":
            out.append((f"SpecDef(K={K})", SpecDef(K, dps=DEFENSE_DPS).reparameterize(net, th)))
            out.append((f"rational A, kappa={K}",
                        Reparameterization(net, ((sym, rational_element(sym.r, Fraction(K), rng)),))))
        else:
            perm = [int(i) for i in rng.permutation(sym.r)]
            out.append((f"D endpoints K={K} perm={perm}", DiagonalScaling(K, "endpoints", perm).reparameterize(net, th)))
            out.append((f"D geometric K={K} perm={perm}",
                        DiagonalScaling(K, "geometric", perm, dps=DEFENSE_DPS).reparameterize(net, th)))
    return out


def _r2_check(case: R2Case) -> list[CheckResult]:
    net, theta = _r2_theta(case)
    th = _col(theta)
    sym = Symmetry(net, "S1" if case.base.arch == "linear2" else "S2", 0)
    rng = np.random.default_rng([case.base.seed, 11])
    steps = 6
    out = []
    with mpmath.workdps(DPS):
        ref = canonicalize_pair(th, sym)
        ref_losses = [net.loss(x) for x in gd_iterates(net, ref, case.eta, steps)]
        target = _target(ref_losses)
        ref_count, ref_margin = _steps_to(ref_losses, target)
        for name, rep in _r2_defenses(case, net, th, rng):
            inst = f"{case!r} defense={name}"
            th2 = rep.apply(th)
            c = canonicalize_pair(th2, sym)
            if case.base.arch == "linear2":
                n_in = sym.a.n_in
                X, Wb = _s1_factors(net, c, n_in)
                Xr, Wbr = _s1_factors(net, ref, n_in)
                with arb_precision():
                    out.append(_ball_eq("R2", inst, "X_c^T X_c - X_ref^T X_ref (equal iff X_c = Q X_ref, Q orthogonal)",
                                        X.transpose() * X, Xr.transpose() * Xr))
                    out.append(_ball_eq("R2", inst, "W_b,c X_c - W_b,ref X_ref", Wb * X, Wbr * Xr))
                    out.append(_ball_eq("R2", inst, "X_c X_c^T - W_b,c^T W_b,c (balanced)", X * X.transpose(),
                                        Wb.transpose() * Wb))
            else:
                out.append(_ball_eq("R2", inst, "canonical(T theta) - canonical(theta) (S2: exact up to rounding)", c, ref))
            with arb_precision():
                nc, nd = to_arb(parameter_norm_sq(c)), to_arb(parameter_norm_sq(th2))
            out.append(_cmp("R2", inst, _arb_encl(nc), "<=", _arb_encl(nd), precision=BALL_P,
                            detail="sum ||W||^2 at the canonical point <= at the defended point"))
            losses = [net.loss(x) for x in gd_iterates(net, c, case.eta, steps)]
            with arb_precision():
                diffs = [a - b for a, b in zip(losses, ref_losses)]
            worst = max(range(len(diffs)), key=lambda t: abs(arb_to_mpf(diffs[t])))
            out.append(compare("R2", inst, abs(arb_to_mpf(diffs[worst])), "==", 0, precision=BALL_P,
                               err=max(arb_radius(d) for d in diffs),
                               detail=f"GD from canonical points, eta={case.eta}: max_t |L_t(K) - L_t(ref)| over {steps} steps"))
            count, margin = _steps_to(losses, target)
            out.append(compare("R2", inst, count, "==", ref_count, precision="exact integer (certified crossings)",
                               detail=f"steps to L <= {mpmath.nstr(target, 8)} (midpoint of the reference run's largest one-step decrease)"))
            out.append(compare("R2", inst, min(margin, ref_margin), ">=", 0, precision=BALL_P,
                               detail="threshold-crossing margin |L_t - target| exceeds every ball radius (counts certified)"))
    return out


def _s1_factors(net: ChainNet, theta: Any, n_in: int) -> tuple[Any, Any]:
    params = net.unflatten(theta)
    (Wa, ba), (Wb, _) = params[0], params[1]
    _, rows = as_field_rows(Wa, BALL)
    rows = [r + [to_arb(ba[i, 0])] for i, r in enumerate(rows)]
    return pack(rows, BALL), pack(as_field_rows(Wb, BALL)[1], BALL)


@entry("nets_R2_s1", ("R2",), _r2_base("linear2"))
@at_arb_precision
def check_r2_s1(case: R2Case) -> list[CheckResult]:
    """R2 (S1, TwoLayerLinear, bias as an extra input column): the canonical points of the
    SpecDef- and rational-A-defended nets for several K agree with that of the undefended
    net up to an orthogonal Q (X^T X and W_b X equal), are balanced and norm-minimal, and GD
    from them gives the same loss sequence and the same certified step count to a target."""
    return _r2_check(case)


@entry("nets_R2_s2", ("R2",), _r2_base("relu2"))
@at_arb_precision
def check_r2_s2(case: R2Case) -> list[CheckResult]:
    """R2 (S2, TwoLayerReLU): the balanced, key-sorted canonical point of the P D-defended net
    (rational endpoint and irrational geometric D, several K, random P) equals that of the
    undefended net up to rounding; GD loss sequences and certified step counts coincide."""
    return _r2_check(case)


# ---------------------------------------------------------------- SPECDEF-OPT
@dataclass(frozen=True)
class OptCase:
    r: int
    n_in: int
    seed: int
    K: int


@entry("nets_specdef_opt", ("SPECDEF-OPT",), st.builds(OptCase, r=st.integers(2, 3), n_in=st.integers(1, 3),
                                                      seed=st.integers(0, 2**32 - 1), K=st.integers(2, 10**4)))
@at_arb_precision
def check_specdef_opt(case: OptCase) -> list[CheckResult]:
    """sigma_max(A_spike W_a) = specdef_max_gain(K, r) sigma_max(W_a); the geometric profile
    never exceeds the spike; rational A with |det A| = 1 and kappa(A) <= K never exceed
    specdef_max_gain(K, r) sigma_max(W_a) (W_a = U Sigma V^T exact, A balls / rationals)."""
    rng = np.random.default_rng([case.seed, 5])
    W, U, _ = rational_svd_matrix(_distinct_sigmas(rng, min(case.r, case.n_in)), case.r, case.n_in, rng)
    inst = repr(case)
    out = []
    with mpmath.workdps(DPS):
        eW = _eig(W * W.transpose(), "W_a W_a^T")
        sW = _sqrt_encl(_encl(eW, -1))
        gain = _bound(lambda K, s: bounds.specdef_max_gain(K, case.r) * s, case.K, sW)

        def smax_of(A: Any) -> Enclosure:
            with arb_precision():
                M = A * (W if isinstance(A, flint.fmpq_mat) else flint.arb_mat(W))
                G = M * M.transpose()
            return _sqrt_encl(_encl(_eig(G, "(A W)(A W)^T"), -1))

        spike = smax_of(SpecDef(case.K, "spike", dps=DEFENSE_DPS).element_ball(W, U))
        geo = smax_of(SpecDef(case.K, "geometric", dps=DEFENSE_DPS).element_ball(W, U))
        out.append(_cmp("SPECDEF-OPT", inst, spike, "==", gain, precision=BALL_P,
                        detail="sigma_max(A_spike W_a) == K^((r-1)/r) sigma_max(W_a)"))
        out.append(_cmp("SPECDEF-OPT", inst, geo, "<=", spike, precision=BALL_P,
                        detail="sigma_max(A_geometric W_a) <= sigma_max(A_spike W_a)"))
        for k in range(3):
            A, kap = rational_unimodular_element(case.r, case.K, rng)
            det = A.det()
            out.append(compare("SPECDEF-OPT", inst, abs(_q(det)), "==", 1, precision=EXACT_P,
                               detail=f"random A #{k}: |det A| = 1 (kappa(A) = {kap} <= K)"))
            out.append(_cmp("SPECDEF-OPT", inst, smax_of(A), "<=", gain, precision=CERT_P,
                            detail=f"random A #{k}, kappa(A) = {float(kap):.4g}: sigma_max(A W_a) <= max gain * sigma_max(W_a)"))
    return out
