"""Recoveries of an attacker against a function-preserving reparameterization T.

R1 (knowledge of T). (a) Reparameterize: train phi with theta' = T phi, i.e. the net with
frozen layers A and A^-1 inserted around each defended pair,
    f_R1(x; phi) = ... W_b A^-1 act(A (W_a x + b_a)) ... = f(x; T phi);
by T1, grad_phi L(T phi) = T^T T^-T grad L(phi) = grad L(phi), so GD from phi_0 = T^-1 theta'_0
reproduces the undefended iterates exactly. Extra stored entries: 2 r^2 per S1 pair (dense
A, A^-1), 2 r per S2 pair (monomial P D and its inverse).
(b) Precondition GD on L' with P' = T T^T: T^-1 theta'_{t+1} = T^-1 theta'_t - eta T^T T^-T
grad L(T^-1 theta'_t), again the undefended run.

R2 (no knowledge of T). Replace theta by the minimizer of sum ||W||_F^2 over its orbit:
S2: per unit c_i^2 = ||out_i|| / ||(in_i, b_i)|| (in_i -> c_i in_i, b_i -> c_i b_i,
out_i -> out_i / c_i), then units sorted by phi(out_i (in_i, b_i)^T) = sum_j key_j sqrt(p_j)
(the key is scale invariant; phi is injective on rational keys), so the representative is
unique up to units equal after balancing; S1: with X = [W_a | b_a] (the bias is an extra input column,
augmented input x~ = (x, 1)) and G_a = X X^T, G_b = W_b^T W_b (both > 0 iff W_b X has rank r),
the balanced point is (A X, W_b A^-1) with A = P^(1/2), P = G_a^-1 # G_b the unique SPD
solution of P G_a P = G_b; it satisfies (A X)(A X)^T = (W_b A^-1)^T (W_b A^-1) and equals the
SVD-balanced factors (S^1/2 V^T, U S^1/2) of W_b X = U S V^T up to an orthogonal Q (GD is
invariant under orthogonal T). Irrational quantities are arb balls at ``nets.ARB_PREC`` bits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import flint

from convrate.errors import InvalidInputError, PrecisionError
from convrate.numerics.nets import (
    BALL,
    EXACT,
    ChainNet,
    LayerSpec,
    arb_precision,
    at_arb_precision,
    as_field_rows,
    as_vector,
    column,
    convert,
    pack,
    to_arb,
)
from convrate.numerics.reparam import Reparameterization, Symmetry


# ---------------------------------------------------------------- R1
@dataclass(frozen=True)
class R1Recovery:
    """The attacker's net with frozen A, A^-1 layers inserted (trainable: the original layers)."""

    defended_net: ChainNet
    rep: Reparameterization
    net: ChainNet

    @property
    def extra_parameters(self) -> int:
        """Entries stored by the inserted frozen layers (dense: r^2 each, monomial: r each)."""
        return sum(l.stored_entries for l in self.net.layers)

    @at_arb_precision
    def start(self, theta_defended: Any) -> Any:
        """phi_0 = T^-1 theta'_0."""
        return self.rep.inverse().apply(theta_defended)

    @at_arb_precision
    def defended_point(self, phi: Any) -> Any:
        """theta' = T phi."""
        return self.rep.apply(phi)


@at_arb_precision
def r1_reparameterize(rep: Reparameterization) -> R1Recovery:
    """Insert frozen A_1..A_k (activation after the last) and A_k^-1..A_1^-1 after the first
    layer of every defended pair."""
    net = rep.net
    inserts: dict[int, list[tuple[Symmetry, Any]]] = {}
    for sym, A in rep.parts:
        inserts.setdefault(sym.a.layer, []).append((sym, A))
    layers: list[LayerSpec] = []
    with arb_precision():
        for l, spec in enumerate(net.layers):
            if l not in inserts:
                layers.append(spec)
                continue
            layers.append(LayerSpec(spec.n_in, spec.n_out, spec.bias, "linear", spec.frozen, spec.structure))
            group = inserts[l]
            r = spec.n_out
            for k, (sym, A) in enumerate(group):
                kind, rows = sym.validate(A)
                act = spec.activation if k == len(group) - 1 else "linear"
                layers.append(LayerSpec(r, r, False, act, pack(rows, kind), "monomial" if sym.family == "S2" else "dense"))
            for sym, A in reversed(group):
                layers.append(LayerSpec(r, r, False, "linear", sym.inverse_element(A),
                                        "monomial" if sym.family == "S2" else "dense"))
    rec = ChainNet(layers, net.X, net.Y, name=f"R1[{net.name}]")
    return R1Recovery(net, rep, rec)


@at_arb_precision
def r1_preconditioner(rep: Reparameterization) -> Any:
    """P' = T T^T: preconditioned GD on the defended loss undoes T exactly."""
    T = rep.matrix()
    return T * T.transpose()


# ---------------------------------------------------------------- R2
@at_arb_precision
def _sqrt_spd(M: Any) -> Any:
    """Principal square root of a symmetric positive definite ball / exact r x r matrix,
    as a ball matrix: r = 1 directly, r = 2 by sqrt(M) = (M + s I) / sqrt(tr M + 2 s),
    s = sqrt(det M); r >= 3 from a certified eigen-decomposition M = R diag(l) R^-1 (arb,
    Rump's method; needs simple eigenvalues)."""
    kind, rows = as_field_rows(M, BALL)
    r = len(rows)
    A = pack(rows, BALL)
    if r == 1:
        if not rows[0][0] > 0:
            raise InvalidInputError(f"matrix square root needs a positive definite matrix, got {rows[0][0]}")
        return pack([[rows[0][0].sqrt()]], BALL)
    if r == 2:
        det = A.det()
        if not (det > 0 and rows[0][0] > 0):
            raise InvalidInputError("matrix square root needs a positive definite matrix (det or trace not certified > 0)")
        s = det.sqrt()
        t = (rows[0][0] + rows[1][1] + 2 * s).sqrt()
        I = pack([[flint.arb(1), flint.arb(0)], [flint.arb(0), flint.arb(1)]], BALL)
        return (A + I * s) * (1 / t)
    try:
        E, R = flint.acb_mat(A).eig(right=True, algorithm="rump")
    except ValueError as exc:
        raise PrecisionError(f"cannot isolate the eigenvalues of a {r}x{r} SPD matrix for its square root") from exc
    lam = [e.real for e in E]
    if not all(x > 0 for x in lam):
        raise InvalidInputError("matrix square root needs a positive definite matrix")
    Rr = flint.arb_mat([[R[i, j].real for j in range(r)] for i in range(r)])
    D = flint.arb_mat([[lam[i].sqrt() if i == j else flint.arb(0) for j in range(r)] for i in range(r)])
    return Rr * D * Rr.inv()


@at_arb_precision
def balance_s1(X: Any, W_b: Any) -> tuple[Any, Any]:
    """(A X, W_b A^-1) with A = P^(1/2), P = G_a^-1/2 (G_a^1/2 G_b G_a^1/2)^1/2 G_a^-1/2,
    G_a = X X^T, G_b = W_b^T W_b: the balanced point (A X)(A X)^T = (W_b A^-1)^T (W_b A^-1)."""
    with arb_precision():
        _, xr = as_field_rows(X, BALL)
        _, br = as_field_rows(W_b, BALL)
        Xm, Bm = pack(xr, BALL), pack(br, BALL)
        r = Xm.nrows()
        Ga, Gb = Xm * Xm.transpose(), Bm.transpose() * Bm
        for name, G in (("W_a (with bias column)", Ga), ("W_b", Gb)):
            d = G.det()
            if not d > 0:
                raise InvalidInputError(
                    f"R2 (S1) needs {name} of full rank r = {r} (W_b W_a of rank r): Gram determinant {d} is not > 0; "
                    "otherwise the norm minimum over the orbit is not attained")
        Gah = _sqrt_spd(Ga)
        Gaih = Gah.inv()
        C = Gah * Gb * Gah
        P = Gaih * _sqrt_spd(C) * Gaih
        A = _sqrt_spd(P)
        return A * Xm, Bm * A.inv()


def _primes(n: int) -> list[int]:
    """The first n primes."""
    out, k = [], 2
    while len(out) < n:
        if all(k % p for p in out):
            out.append(k)
        k += 1
    return out


@at_arb_precision
def balance_s2(W_a: Any, b_a: Any, W_b: Any) -> tuple[list[list[Any]], list[Any] | None, list[list[Any]], list[int]]:
    """Per-unit balance c_i = (||out_i||^2 / ||(in_i, b_i)||^2)^(1/4) and the unit order by the
    scale-invariant key out_i (in_i, b_i)^T (through the injective functional phi below).
    Returns (W_a, b_a, W_b, order) as balls."""
    ka, Wa = as_field_rows(W_a)
    kb, Wb = as_field_rows(W_b)
    bb = [x for r in as_field_rows(b_a)[1] for x in r] if b_a is not None else None
    kind = EXACT if (ka == EXACT and kb == EXACT and (b_a is None or as_field_rows(b_a)[0] == EXACT)) else BALL
    with arb_precision():
        Wa = [[convert(x, kind) for x in r] for r in Wa]
        Wb = [[convert(x, kind) for x in r] for r in Wb]
        bb = [convert(x, kind) for x in bb] if bb is not None else None
        r = len(Wa)
        ins = [Wa[i] + ([bb[i]] if bb is not None else []) for i in range(r)]
        outs = [[Wb[o][i] for o in range(len(Wb))] for i in range(r)]
        zero = convert(0, kind)
        keys = [[o * v for o in outs[i] for v in ins[i]] for i in range(r)]
        for i in range(r):
            ni = sum((v * v for v in ins[i]), zero)
            no = sum((v * v for v in outs[i]), zero)
            if not (ni > 0 and no > 0):
                raise InvalidInputError(
                    f"R2 (S2): unit {i} has ||(in, b)||^2 = {ni} and ||out||^2 = {no}; a zero side has no balanced scale")

        # order by phi(key_i) = sum_j key_ij sqrt(p_j), p_j the j-th prime: for rational keys
        # phi is injective (square roots of distinct primes are linearly independent over Q),
        # so the order of distinct units is unique; balls that overlap are equal keys (units
        # equal up to scale, identical after balancing: their order is immaterial) unless the
        # precision is too low, which the R2 check would expose as a mismatch.
        primes = _primes(len(keys[0]))
        phi = [sum((to_arb(k) * flint.arb(p).sqrt() for k, p in zip(key, primes)), flint.arb(0)) for key in keys]

        def less(i: int, j: int) -> bool:
            return bool(phi[i] < phi[j])

        order: list[int] = []
        for i in range(r):  # stable insertion sort
            pos = len(order)
            while pos > 0 and less(i, order[pos - 1]):
                pos -= 1
            order.insert(pos, i)
        cs = []
        for i in range(r):
            ni = sum((to_arb(v) * to_arb(v) for v in ins[i]), flint.arb(0))
            no = sum((to_arb(v) * to_arb(v) for v in outs[i]), flint.arb(0))
            cs.append((no / ni).sqrt().sqrt())
        Wa_c = [[to_arb(v) * cs[i] for v in Wa[i]] for i in order]
        b_c = [to_arb(bb[i]) * cs[i] for i in order] if bb is not None else None
        Wb_c = [[to_arb(Wb[o][i]) / cs[i] for i in order] for o in range(len(Wb))]
        return Wa_c, b_c, Wb_c, order


@at_arb_precision
def canonicalize_pair(theta: Any, sym: Symmetry) -> Any:
    """R2 for one pair: the balanced (norm-minimizing) representative of theta's orbit under
    ``sym``'s family, as a ball column (the other parameters are unchanged, as balls)."""
    net = sym.net
    with arb_precision():
        kind, flat = as_vector(theta)
        params = net.unflatten([to_arb(x) for x in flat])
        Wa, ba = params[sym.pair]
        Wb, bb = params[sym.pair + 1]
        if sym.family == "S2":
            Wa_c, b_c, Wb_c, _ = balance_s2(net.unflatten(flat)[sym.pair][0], net.unflatten(flat)[sym.pair][1],
                                            net.unflatten(flat)[sym.pair + 1][0])
            params[sym.pair] = (pack(Wa_c, BALL), column(b_c, BALL) if b_c is not None else None)
            params[sym.pair + 1] = (pack(Wb_c, BALL), bb)
        else:
            _, xr = as_field_rows(Wa, BALL)
            if ba is not None:
                xr = [row + [ba[i, 0]] for i, row in enumerate(xr)]
            Xc, Wbc = balance_s1(pack(xr, BALL), Wb)
            n_in = sym.a.n_in
            Wa_c = [[Xc[i, j] for j in range(n_in)] for i in range(sym.r)]
            b_c = [Xc[i, n_in] for i in range(sym.r)] if ba is not None else None
            params[sym.pair] = (pack(Wa_c, BALL), column(b_c, BALL) if b_c is not None else None)
            params[sym.pair + 1] = (Wbc, bb)
        return net.flatten(params)


@at_arb_precision
def canonicalize(theta: Any, symmetries: Sequence[Symmetry], sweeps: int = 1) -> Any:
    """R2 over several pairs: ``sweeps`` passes of pairwise balancing in order. One pass is
    exact for a single pair; for pairs sharing a layer (deeper nets) the passes are block
    coordinate descent on the convex function sum ||W||^2 of the log-scales and converge to
    the minimizer as sweeps grow."""
    if sweeps < 1:
        raise InvalidInputError(f"sweeps must be >= 1, got {sweeps}")
    th = theta
    for _ in range(sweeps):
        for sym in symmetries:
            th = canonicalize_pair(th, sym)
    return th


@at_arb_precision
def parameter_norm_sq(theta: Any) -> Any:
    """sum ||W||_F^2 = ||theta||^2 (exact or a ball)."""
    kind, flat = as_vector(theta)
    with arb_precision():
        return sum((x * x for x in flat), convert(0, kind))
