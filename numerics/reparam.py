"""Symmetries, reparameterizations and defenses of exact networks (DESIGN.md vocabulary).

A ``Symmetry`` acts on a pair of consecutive trainable layers (W_a, b_a), (W_b, b_b) of a
``ChainNet`` with hidden width r:

    (W_a, b_a, W_b) -> (A W_a, A b_a, W_b A^-1),

S1 (linear pair, no nonlinearity between the layers): any A in GL(r);
S2 (ReLU between the layers): A = P D, P a permutation, D > 0 diagonal
(relu(P D z) = P D relu(z)). With row-major vec the map on theta is the block matrix

    T = diag(A (x) I_{n_in}, A, I_{n_out} (x) A^-T)   on (vec W_a, b_a, vec W_b),

identity on every other parameter, so sigma(T) = sigma(A) (multiplicity n_in + 1) u
sigma(A^-1) (multiplicity n_out) u {1}. (S3, normalization-layer scaling, is not modelled
by these nets.) A ``Reparameterization`` is an ordered list of (symmetry, element) pairs,
T = T_k ... T_1. A ``Defense`` produces one from the weights: ``SpecDef`` (A = U diag(s) U^T,
U the left singular vectors of W_a, s a profile of strength K = s_max/s_min), ``DiagonalScaling``
(S2, D with kappa(D) = K) and ``Identity``.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

import flint
import mpmath
import numpy as np

from convrate.errors import InvalidInputError, SingularReparameterizationError
from convrate.numerics.linalg import sym_eig
from convrate.numerics.nets import (
    BALL,
    EXACT,
    ChainNet,
    arb_precision,
    at_arb_precision,
    arb_to_mpf,
    as_field_rows,
    as_vector,
    block_diag,
    certified_spectrum,
    column,
    convert,
    identity,
    join_kinds,
    kron,
    pack,
    to_arb,
    to_fmpq,
)
from convrate.theory import bounds

FAMILIES = ("S1", "S2")


def rounding_allowance(x: Any) -> mpmath.mpf:
    """Rigorous allowance for the rounding of a short mpmath computation at the working
    precision: |x| * 2^(40 - prec) (each of the few correctly-or-faithfully rounded mpmath
    operations behind x errs by at most a few units in 2^-prec relative)."""
    return abs(mpmath.mpf(x)) * mpmath.mpf(2) ** (40 - mpmath.mp.prec)


@dataclass(frozen=True)
class Enclosure:
    """A real number known to lie in [value - radius, value + radius]."""

    value: mpmath.mpf
    radius: mpmath.mpf

    @property
    def lo(self) -> mpmath.mpf:
        return self.value - self.radius

    @property
    def hi(self) -> mpmath.mpf:
        return self.value + self.radius


def _sqrt_enclosure(lo: mpmath.mpf, hi: mpmath.mpf) -> Enclosure:
    """Enclosure of sqrt over [lo, hi] (lo clipped at 0), outward by the rounding allowance."""
    a, b = mpmath.sqrt(max(lo, mpmath.mpf(0))), mpmath.sqrt(hi)
    a, b = a - rounding_allowance(a), b + rounding_allowance(b)
    return Enclosure((a + b) / 2, (b - a) / 2)


# ---------------------------------------------------------------- spectra of block-structured matrices
def _components(rows: list[list[Any]]) -> list[list[int]]:
    """Connected components of the sparsity graph of a square matrix (exact zeros only)."""
    n = len(rows)
    seen, comps = [False] * n, []
    for s in range(n):
        if seen[s]:
            continue
        stack, comp = [s], []
        seen[s] = True
        while stack:
            i = stack.pop()
            comp.append(i)
            for j in range(n):
                if not seen[j] and (not _is_zero(rows[i][j]) or not _is_zero(rows[j][i])):
                    seen[j] = True
                    stack.append(j)
        comps.append(sorted(comp))
    return comps


def _is_zero(x: Any) -> bool:
    if isinstance(x, flint.arb):
        return x.is_exact() and x == 0
    return x == 0


def _key(x: Any) -> Any:
    if isinstance(x, flint.arb):
        return (x.mid().man_exp(), x.rad().man_exp())
    return (int(x.p), int(x.q)) if isinstance(x, flint.fmpq) else x


@at_arb_precision
def block_spectrum(M: Any) -> tuple[list[mpmath.mpf], list[mpmath.mpf]]:
    """Certified eigenvalues (ascending) and radii of a symmetric exact / ball matrix,
    computed block by block on the connected components of its sparsity pattern (the
    matrix is permutation-similar to the direct sum of those blocks; identical blocks are
    solved once)."""
    kind, rows = as_field_rows(M)
    cache: dict[Any, Any] = {}
    vals: list[tuple[mpmath.mpf, mpmath.mpf]] = []
    for comp in _components(rows):
        sub = [[rows[i][j] for j in comp] for i in comp]
        key = tuple(_key(x) for r in sub for x in r)
        if key not in cache:
            cache[key] = certified_spectrum(pack(sub, kind))
        e = cache[key]
        vals += list(zip(e.values, e.radius))
    vals.sort(key=lambda t: t[0])
    return [v for v, _ in vals], [r for _, r in vals]


@at_arb_precision
def singular_value_range(M: Any) -> tuple[Enclosure, Enclosure]:
    """Certified (sigma_min, sigma_max) of a square exact / ball matrix, from the eigenvalues
    of M^T M (block-decomposed)."""
    kind, rows = as_field_rows(M)
    with arb_precision():
        A = pack(rows, kind)
        vals, rad = block_spectrum(A.transpose() * A)
    return _sqrt_enclosure(vals[0] - rad[0], vals[0] + rad[0]), _sqrt_enclosure(vals[-1] - rad[-1], vals[-1] + rad[-1])


# ---------------------------------------------------------------- symmetries
class Symmetry:
    """A symmetry family acting on trainable layers ``pair`` and ``pair + 1`` of ``net``."""

    def __init__(self, net: ChainNet, family: str = "S1", pair: int = 0) -> None:
        if family not in FAMILIES:
            raise InvalidInputError(f"unknown symmetry family {family!r}; choose one of {FAMILIES}")
        if not 0 <= pair < len(net.slots) - 1:
            raise InvalidInputError(f"pair {pair} out of range: {net.name} has {len(net.slots)} trainable layers")
        a, b = net.slots[pair], net.slots[pair + 1]
        if b.layer != a.layer + 1:
            raise InvalidInputError(f"trainable layers {a.layer} and {b.layer} are not adjacent")
        act = net.layers[a.layer].activation
        if family == "S1" and act != "linear":
            raise InvalidInputError(f"S1 needs no nonlinearity between the pair; layer {a.layer} has {act}")
        self.net, self.family, self.pair = net, family, pair
        self.a, self.b = a, b
        self.r = a.n_out

    def __repr__(self) -> str:
        return f"Symmetry({self.family}, layers {self.a.layer}-{self.b.layer}, r={self.r})"

    # ------------------------------------------------------------ elements
    @at_arb_precision
    def validate(self, A: Any) -> tuple[str, list[list[Any]]]:
        """(kind, rows) of a valid group element; raises on a wrong shape, a singular A
        (naming its smallest singular value) or, for S2, a non-monomial / non-positive A."""
        kind, rows = as_field_rows(A)
        r = self.r
        if len(rows) != r or any(len(x) != r for x in rows):
            shape = f"{len(rows)}x{len(rows[0]) if rows else 0}"
            raise InvalidInputError(f"{self.family} element must be {r}x{r}, got {shape}")
        if self.family == "S2":
            for i, row in enumerate(rows):
                nz = [j for j, x in enumerate(row) if not _is_zero(x)]
                if len(nz) != 1 or sum(1 for rr in rows if not _is_zero(rr[nz[0]])) != 1:
                    raise InvalidInputError(f"S2 element must be a permutation times a positive diagonal; row {i} is {row}")
                if not row[nz[0]] > 0:
                    raise InvalidInputError(f"S2 element needs (certified) positive scales; entry ({i}, {nz[0]}) = {row[nz[0]]}")
        with arb_precision():
            M = pack(rows, kind)
            if kind == EXACT:
                if M.det() == 0:
                    raise SingularReparameterizationError(
                        f"{self.family} element A is singular: smallest singular value 0 (exactly: det A = 0)")
            else:
                smin, _ = singular_value_range(M)
                if smin.lo <= 0:
                    raise SingularReparameterizationError(
                        f"{self.family} element A is not certified invertible: smallest singular value "
                        f"{mpmath.nstr(smin.value, 6)} +- {mpmath.nstr(smin.radius, 2)}")
        return kind, rows

    @at_arb_precision
    def inverse_element(self, A: Any) -> Any:
        kind, rows = self.validate(A)
        with arb_precision():
            return pack(rows, kind).inv()

    @at_arb_precision
    def block(self, A: Any) -> Any:
        """T restricted to the pair's parameters (vec W_a, b_a, vec W_b, b_b):
        diag(A (x) I_{n_in}, A, I_{n_out} (x) A^-T, I)."""
        kind, rows = self.validate(A)
        a, b = self.a, self.b
        with arb_precision():
            Am = pack(rows, kind)
            Ainv_T = Am.inv().transpose()
            blocks = [kron(Am, identity(a.n_in, kind))]
            if a.bias:
                blocks.append(Am)
            blocks.append(kron(identity(b.n_out, kind), Ainv_T))
            if b.bias:
                blocks.append(identity(b.n_out, kind))
            return block_diag(blocks)

    @at_arb_precision
    def matrix(self, A: Any) -> Any:
        """The full n x n matrix T (identity outside the pair)."""
        B = self.block(A)
        kind, brow = as_field_rows(B)
        n, off = self.net.n_params, self.a.offset
        one, zero = convert(1, kind), convert(0, kind)
        rows = [[one if i == j else zero for j in range(n)] for i in range(n)]
        for i, r in enumerate(brow):
            for j, x in enumerate(r):
                rows[off + i][off + j] = x
        return pack(rows, kind)

    @at_arb_precision
    def apply(self, theta: Any, A: Any) -> Any:
        """T theta: W_a -> A W_a, b_a -> A b_a, W_b -> W_b A^-1 (a column)."""
        kind_a, rows = self.validate(A)
        kind_t, flat = as_vector(theta)
        kind = join_kinds(kind_a, kind_t)
        with arb_precision():
            Am = pack([[convert(x, kind) for x in r] for r in rows], kind)
            Ainv = Am.inv()
            params = self.net.unflatten([convert(x, kind) for x in flat])
            Wa, ba = params[self.pair]
            Wb, bb = params[self.pair + 1]
            params[self.pair] = (Am * Wa, Am * ba if ba is not None else None)
            params[self.pair + 1] = (Wb * Ainv, bb)
            return self.net.flatten(params)

    @at_arb_precision
    def canonicalize(self, theta: Any) -> Any:
        """R2: the norm-minimizing representative of theta's orbit (see ``recovery``)."""
        from convrate.numerics.recovery import canonicalize_pair

        return canonicalize_pair(theta, self)


# ---------------------------------------------------------------- reparameterizations
@dataclass(frozen=True)
class Reparameterization:
    """T = T_k ... T_1 for parts [(symmetry_1, A_1), ..., (symmetry_k, A_k)] on one net."""

    net: ChainNet
    parts: tuple[tuple[Symmetry, Any], ...]

    def __post_init__(self) -> None:
        for sym, A in self.parts:
            if sym.net is not self.net:
                raise InvalidInputError("every symmetry of a reparameterization must act on the same net")
            sym.validate(A)

    @property
    def kind(self) -> str:
        return join_kinds(EXACT, *(as_field_rows(A)[0] for _, A in self.parts))

    @at_arb_precision
    def matrix(self) -> Any:
        """T (exact fmpq_mat for rational elements, arb_mat otherwise)."""
        kind = self.kind
        with arb_precision():
            T = identity(self.net.n_params, kind)
            for sym, A in self.parts:
                Tk = sym.matrix(A)
                if kind == BALL and isinstance(Tk, flint.fmpq_mat):
                    Tk = flint.arb_mat(Tk)
                T = Tk * T
            return T

    @at_arb_precision
    def apply(self, theta: Any) -> Any:
        """T theta, applied part by part (no dense T)."""
        th = theta
        for sym, A in self.parts:
            th = sym.apply(th, A)
        if not self.parts:
            kind, flat = as_vector(theta)
            th = column(flat, kind)
        return th

    @at_arb_precision
    def inverse(self) -> "Reparameterization":
        """T^-1 = T_1^-1 ... T_k^-1."""
        return Reparameterization(self.net, tuple((sym, sym.inverse_element(A)) for sym, A in reversed(self.parts)))

    @at_arb_precision
    def sigma_range(self) -> tuple[Enclosure, Enclosure]:
        """Certified (sigma_min(T), sigma_max(T))."""
        return singular_value_range(self.matrix())

    @at_arb_precision
    def kappa(self) -> Enclosure:
        """kappa(T) = sigma_max / sigma_min, certified (sym_eig enclosures of T^T T)."""
        smin, smax = self.sigma_range()
        lo, hi = smax.lo / smin.hi, smax.hi / smin.lo
        lo, hi = lo - rounding_allowance(lo), hi + rounding_allowance(hi)
        return Enclosure((lo + hi) / 2, (hi - lo) / 2)

    def extra_parameters(self) -> int:
        """R1 cost: sum over parts of bounds.recovery_extra_parameters(family, r)."""
        return sum(bounds.recovery_extra_parameters(sym.family, sym.r) for sym, _ in self.parts)


# ---------------------------------------------------------------- defenses
def check_strength(K: Any) -> mpmath.mpf:
    """K must be a finite real > 1."""
    try:
        k = mpmath.mpf(K) if not isinstance(K, Fraction) else mpmath.mpf(K.numerator) / K.denominator
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"defense strength K must be a real number, got {K!r}") from exc
    if not mpmath.isfinite(k) or not k > 1:
        raise InvalidInputError(f"defense strength K must be finite and > 1, got {K}")
    return k


def mp_of(M: Any) -> mpmath.matrix:
    """mpmath matrix of an exact (rounded at the working precision) or ball (midpoints) matrix."""
    kind, rows = as_field_rows(M)
    if kind == EXACT:
        return mpmath.matrix([[mpmath.mpf(int(x.p)) / int(x.q) for x in r] for r in rows])
    return mpmath.matrix([[arb_to_mpf(x) for x in r] for r in rows])


def _profile(K: Any, r: int, profile: str) -> list[mpmath.mpf]:
    if profile == "geometric":
        return bounds.specdef_geometric_profile(K, r)
    if profile == "spike":
        return bounds.specdef_spike_profile(K, r)
    raise InvalidInputError(f"unknown SpecDef profile {profile!r}; choose 'geometric' or 'spike'")


def _ball(x: mpmath.mpf) -> flint.arb:
    """Ball around an mpf bound value that contains the exact value (rounding allowance)."""
    b = to_arb(x)
    return b + flint.arb(0, to_arb(rounding_allowance(x)).upper())


class Defense(abc.ABC):
    """Produces a reparameterization from the released weights."""

    name = "defense"

    @abc.abstractmethod
    def element(self, sym: Symmetry, theta: Any) -> Any:
        """The group element A for ``sym`` at weights ``theta``."""

    @at_arb_precision
    def reparameterize(self, net: ChainNet, theta: Any, pair: int = 0) -> Reparameterization:
        """T for the pair ``pair`` of ``net`` (S1 for a linear pair, S2 across a ReLU)."""
        family = "S2" if net.layers[net.slots[pair].layer].activation == "relu" else "S1"
        sym = Symmetry(net, family, pair)
        return Reparameterization(net, ((sym, self.element(sym, theta)),))


class Identity(Defense):
    """The undefended baseline: A = I."""

    name = "identity"

    @at_arb_precision
    def element(self, sym: Symmetry, theta: Any) -> Any:
        return identity(sym.r, EXACT)


class SpecDef(Defense):
    """SpecDef: A = U diag(s) U^T, U the left singular vectors of W_a (descending singular
    values), s descending with s_max/s_min = K (profile "geometric": s_i = K^(1/2-(i-1)/(r-1));
    "spike": s_1 = K^((r-1)/r), others K^(-1/r); both det 1), so A W_a = U diag(s) Sigma V^T.
    On an S2 pair it acts as the diagonal D = diag(s) (see ``DiagonalScaling``).

    Irrational values are computed in mpmath at ``dps`` digits; the ball form used by the
    exact nets encloses them with the stated rounding allowance."""

    def __init__(self, K: Any, profile: str = "geometric", dps: int = 50) -> None:
        self.K = check_strength(K)
        self.K_input = K
        _profile(2, 2, profile)
        self.profile, self.dps = profile, dps
        self.name = f"specdef-{profile}"

    def strengths(self, r: int) -> list[mpmath.mpf]:
        """s_1 >= ... >= s_r at the working precision."""
        with mpmath.workdps(self.dps):
            return _profile(self.K_input, r, self.profile)

    def basis(self, W_a: Any) -> mpmath.matrix:
        """Left singular vectors of W_a (columns, descending singular values), mpmath."""
        with mpmath.workdps(self.dps):
            M = mp_of(W_a)
            e = sym_eig(M * M.T, "W_a W_a^T")
            r = M.rows
            U = mpmath.matrix(r, r)
            for new, old in enumerate(reversed(range(r))):
                for i in range(r):
                    U[i, new] = e.vectors[i, old]
            return U

    def element_mp(self, W_a: Any, basis: Any = None) -> mpmath.matrix:
        """A = U diag(s) U^T as an mpmath matrix at ``dps`` digits."""
        U = self.basis(W_a) if basis is None else None
        with mpmath.workdps(self.dps):
            if basis is not None:
                U = mp_of(basis)
            return U * mpmath.diag(self.strengths(U.rows)) * U.T

    @at_arb_precision
    def element_ball(self, W_a: Any, basis: Any = None) -> flint.arb_mat:
        """A as an arb ball matrix. With an exact orthogonal ``basis`` whose columns are left
        singular vectors of W_a in descending order (verified exactly), the balls contain the
        exact SpecDef A; without one the basis is the mpmath one (exact binary numbers) and
        the balls contain U_c diag(s) U_c^T for that computed U_c."""
        if basis is None:
            U = self.basis(W_a)
            Urows = [[U[i, j] for j in range(U.cols)] for i in range(U.rows)]
        else:
            Urows = verify_singular_basis(W_a, basis)
        r = len(Urows)
        with mpmath.workdps(self.dps):  # the allowance must match the precision s was computed at
            sb = [_ball(x) for x in self.strengths(r)]
        Ub = flint.arb_mat([[to_arb(x) for x in row] for row in Urows])
        S = flint.arb_mat([[sb[i] if i == j else flint.arb(0) for j in range(r)] for i in range(r)])
        return Ub * S * Ub.transpose()

    @at_arb_precision
    def element(self, sym: Symmetry, theta: Any, basis: Any = None) -> Any:
        params = sym.net.unflatten(theta)
        W_a = params[sym.pair][0]
        if sym.family == "S2":
            return DiagonalScaling(self.K_input, profile=self.profile, dps=self.dps).element(sym, theta)
        return self.element_ball(W_a, basis)

    @at_arb_precision
    def reparameterize(self, net: ChainNet, theta: Any, pair: int = 0, basis: Any = None) -> Reparameterization:
        family = "S2" if net.layers[net.slots[pair].layer].activation == "relu" else "S1"
        sym = Symmetry(net, family, pair)
        return Reparameterization(net, ((sym, self.element(sym, theta, basis)),))


def verify_singular_basis(W_a: Any, basis: Any) -> list[list[flint.fmpq]]:
    """Check exactly that ``basis`` is orthogonal and diagonalizes W_a W_a^T with
    non-increasing diagonal (so its columns are left singular vectors, descending)."""
    _, U = as_field_rows(basis, EXACT)
    _, W = as_field_rows(W_a, EXACT)
    Um, Wm = pack(U, EXACT), pack(W, EXACT)
    r = Um.nrows()
    if Um.ncols() != r or Wm.nrows() != r:
        raise InvalidInputError(f"basis must be {Wm.nrows()}x{Wm.nrows()}, got {Um.nrows()}x{Um.ncols()}")
    if Um.transpose() * Um != identity(r, EXACT):
        raise InvalidInputError("basis is not exactly orthogonal")
    D = Um.transpose() * Wm * Wm.transpose() * Um
    for i in range(r):
        for j in range(r):
            if i != j and D[i, j] != 0:
                raise InvalidInputError(f"basis does not diagonalize W_a W_a^T: entry ({i}, {j}) = {D[i, j]}")
    if any(D[i, i] < D[i + 1, i + 1] for i in range(r - 1)):
        raise InvalidInputError("basis columns must be ordered by non-increasing singular value")
    return U


class DiagonalScaling(Defense):
    """S2 defense A = P D: D = diag(d) with kappa(D) = K, the largest d on the unit with the
    largest ||(in_i, b_i)|| (ties by index), then the permutation ``perm`` (unit i moves to
    position perm[i]). Profiles: "geometric" (d = K^(1/2 - (i-1)/(r-1)), det 1; irrational, a
    ball), "spike" (the SpecDef spike profile), "endpoints" (d = (K, 1, ..., 1), rational
    when K is)."""

    def __init__(self, K: Any, profile: str = "geometric", perm: Sequence[int] | None = None, dps: int = 50) -> None:
        self.K = check_strength(K)
        self.K_input = K
        if profile not in ("geometric", "spike", "endpoints"):
            raise InvalidInputError(f"unknown diagonal profile {profile!r}")
        self.profile, self.perm, self.dps = profile, perm, dps
        self.name = f"diagonal-{profile}"

    @at_arb_precision
    def scales(self, r: int) -> list[Any]:
        if self.profile == "endpoints":
            if isinstance(self.K_input, (int, Fraction, flint.fmpq)):
                K = to_fmpq(self.K_input)
                return [K] + [flint.fmpq(1)] * (r - 1)
            return [_ball(self.K)] + [flint.arb(1)] * (r - 1)
        with mpmath.workdps(self.dps):  # the allowance must match the precision s was computed at
            return [_ball(x) for x in _profile(self.K_input, r, self.profile)]

    @at_arb_precision
    def element(self, sym: Symmetry, theta: Any) -> Any:
        r = sym.r
        params = sym.net.unflatten(theta)
        Wa, ba = params[sym.pair]
        kind, rows = as_field_rows(Wa)
        if ba is not None:
            rows = [row + [ba[i, 0]] for i, row in enumerate(rows)]
        norms = [sum((x * x for x in row), convert(0, kind)) for row in rows]
        key = [arb_to_mpf(v) if kind == BALL else v for v in norms]
        order = sorted(range(r), key=lambda i: (-key[i], i))
        d = self.scales(r)
        perm = list(self.perm) if self.perm is not None else list(range(r))
        if sorted(perm) != list(range(r)):
            raise InvalidInputError(f"perm must be a permutation of 0..{r - 1}, got {perm}")
        dk = join_kinds(*(EXACT if isinstance(x, flint.fmpq) else BALL for x in d))
        with arb_precision():
            zero = convert(0, dk)
            A = [[zero] * r for _ in range(r)]
            for rank, unit in enumerate(order):
                A[perm[unit]][unit] = convert(d[rank], dk)
            return pack(A, dk)

    @at_arb_precision
    def reparameterize(self, net: ChainNet, theta: Any, pair: int = 0) -> Reparameterization:
        sym = Symmetry(net, "S2", pair)
        return Reparameterization(net, ((sym, self.element(sym, theta)),))


# ---------------------------------------------------------------- exact random elements
@at_arb_precision
def rational_orthogonal(r: int, rng: np.random.Generator) -> flint.fmpq_mat:
    """Exact rational orthogonal r x r matrix: the Cayley transform (I - S)(I + S)^-1 of a
    random integer skew matrix S, times random column signs."""
    S = [[flint.fmpq(0)] * r for _ in range(r)]
    for i in range(r):
        for j in range(i + 1, r):
            v = int(rng.integers(-2, 3))
            S[i][j], S[j][i] = flint.fmpq(v), flint.fmpq(-v)
    Sm = pack(S, EXACT)
    I = identity(r, EXACT)
    Q = (I - Sm) * (I + Sm).inv()
    signs = [1 if rng.integers(0, 2) else -1 for _ in range(r)]
    D = pack([[flint.fmpq(signs[i]) if i == j else flint.fmpq(0) for j in range(r)] for i in range(r)], EXACT)
    return Q * D


def _rational_in(lo: Fraction, hi: Fraction, rng: np.random.Generator, den: int = 8) -> Fraction:
    t = Fraction(int(rng.integers(0, den + 1)), den)
    return lo + t * (hi - lo)


@at_arb_precision
def rational_element(r: int, kappa: Any, rng: np.random.Generator) -> flint.fmpq_mat:
    """A = Q1 diag(d) Q2 with Q1, Q2 rational orthogonal and rational d, d_1 = kappa,
    d_r = 1 (r >= 2), others in [1, kappa]: kappa(A) = kappa exactly, sigma(A) = d."""
    k = Fraction(int(to_fmpq(kappa).p), int(to_fmpq(kappa).q))
    if k < 1:
        raise InvalidInputError(f"kappa must be >= 1, got {kappa}")
    d = [k] + sorted((_rational_in(Fraction(1), k, rng) for _ in range(r - 2)), reverse=True) + ([Fraction(1)] if r > 1 else [])
    D = pack([[to_fmpq(d[i]) if i == j else flint.fmpq(0) for j in range(r)] for i in range(r)], EXACT)
    return rational_orthogonal(r, rng) * D * rational_orthogonal(r, rng)


@at_arb_precision
def rational_unimodular_element(r: int, K: Any, rng: np.random.Generator) -> tuple[flint.fmpq_mat, Fraction]:
    """(A, kappa(A)) with A = Q1 diag(d) Q2 rational, prod d = 1 (|det A| = 1) and
    kappa(A) = max d / min d <= K exactly."""
    Kf = Fraction(int(to_fmpq(K).p), int(to_fmpq(K).q))
    xs = [_rational_in(Fraction(1, 2), Fraction(2), rng) * (Kf if rng.integers(0, 2) else Fraction(1)) ** (1 if rng.integers(0, 2) else -1)
          for _ in range(r - 1)]
    while True:
        prod = Fraction(1)
        for x in xs:
            prod *= x
        d = xs + [1 / prod]
        kap = max(d) / min(d)
        if kap <= Kf:
            break
        xs = [(x + 1) / 2 for x in xs]
    D = pack([[to_fmpq(d[i]) if i == j else flint.fmpq(0) for j in range(r)] for i in range(r)], EXACT)
    return rational_orthogonal(r, rng) * D * rational_orthogonal(r, rng), kap


@at_arb_precision
def rational_monomial(r: int, kappa: Any, rng: np.random.Generator) -> flint.fmpq_mat:
    """A = P D with P a random permutation and rational D > 0, max d / min d = kappa."""
    k = Fraction(int(to_fmpq(kappa).p), int(to_fmpq(kappa).q))
    d = [k] + [_rational_in(Fraction(1), k, rng) for _ in range(r - 2)] + ([Fraction(1)] if r > 1 else [])
    d = [d[i] for i in rng.permutation(r)]
    perm = [int(i) for i in rng.permutation(r)]
    A = [[flint.fmpq(0)] * r for _ in range(r)]
    for i in range(r):
        A[perm[i]][i] = to_fmpq(d[i])
    return pack(A, EXACT)


@at_arb_precision
def rational_svd_matrix(sigma: Sequence[Any], n_rows: int, n_cols: int,
                        rng: np.random.Generator) -> tuple[flint.fmpq_mat, flint.fmpq_mat, flint.fmpq_mat]:
    """(W, U, V) with W = U Sigma V^T exactly, U (n_rows) and V (n_cols) rational orthogonal,
    Sigma n_rows x n_cols with diagonal ``sigma`` (non-increasing, min(n_rows, n_cols) values)."""
    m = min(n_rows, n_cols)
    if len(sigma) != m:
        raise InvalidInputError(f"need {m} singular values, got {len(sigma)}")
    U, V = rational_orthogonal(n_rows, rng), rational_orthogonal(n_cols, rng)
    S = pack([[to_fmpq(sigma[i]) if (i == j and i < m) else flint.fmpq(0) for j in range(n_cols)]
              for i in range(n_rows)], EXACT)
    return U * S * V.transpose(), U, V
