"""R2, canonicalization with no knowledge of T (THEORY.md section 4, corrected statement R2).

Replace theta by the minimizer of sum ||W||_F^2 over its orbit
(corrected R2: it exists and is unique when no group is degenerate):

* S2 (positive diagonal D on the units of a ReLU layer): per unit i, with in_i = (W_a[i], b_a[i])
  (all "A" slots) and out_i = W_b[:, i] (all "A_invT" slots),
  c_i = (||out_i|| / ||in_i||)^(1/2), i.e. c_i^2 = ||out_i|| / ||(in_i, b_i)||; this is the
  exact minimization over that layer's scales, and sweeps over the layers are block coordinate
  descent on sum ||W||^2, convex in the log-scales. **Stopping rule**: after a sweep in which
  every unit's correction satisfies |log c_i| <= ``tol`` (default 1e-12, about 10^4 float64
  round-offs of a norm ratio); ``max_sweeps`` (default 2000) without that raises PrecisionError.
  ``record.meta`` keeps the last correction and the contraction rho = (last / previous sweep's
  largest correction); for a linearly convergent sweep the log-scales are then within about
  last / (1 - rho) of the minimizer (a-posteriori geometric-tail estimate).
* S1 (GL(r) per attention head): with X = [W_a | b_a] (the "A" slots, r x p, e.g.
  [W_Q | b_Q]) and Y the "A_invT" slots (r x q, transformed as A^-T Y: [W_K | b_K], or
  W_O[:, head]^T), the orbit invariant is the product M = X^T Y (QK: [W_Q|b_Q]^T [W_K|b_K];
  VO: (W_O[:, head] [W_V | b_V])^T). With M = U Sigma V^T (sigma_1 >= ... >= sigma_r) the
  canonical factors are X_c = Sigma^(1/2) U^T, Y_c = Sigma^(1/2) V^T (balanced:
  X_c X_c^T = Y_c Y_c^T = Sigma, orbit minimum 2 ||M||_*), with the sign of each pair (u_k, v_k)
  fixed so that the entry of largest magnitude of u_k is positive. This fixes the orthogonal
  freedom Q of the balanced point, so the canonical weights are the same for every defense
  strength K (to round-off) and every optimizer, Adam included, becomes K-independent, not only
  GD. Computed in r dimensions: X = U_x S_x V_x^T, Y = U_y S_y V_y^T, S_x U_x^T U_y S_y = P S R^T,
  U = V_x P, and C = S^(1/2) P^T S_x^-1 U_x^T (so C X = X_c, C^-T Y = Y_c). One pass is exact
  for a group that shares no tensor with another canonicalized group (the S1 heads of BERT); a
  group that does (S5 V/O of a decoder, whose v columns carry the input RMSNorm's scaling)
  joins the sweeps. A repeated singular value leaves a rotation inside its eigenspace free
  (GD-invariant; the weights are then not unique).
* S6, S7 ``diagonal`` groups (signs allowed): the same per-unit balance of |c_i| in the sweeps,
  followed in each sweep by the sign convention: unit i is flipped when the entry of largest
  magnitude of in_i is negative (a flip counts as a correction of 2, so a sweep that flips
  does not end the iteration). Groups in list order: an RMSNorm's gamma > 0 is fixed before
  the SwiGLU units whose up rows its flips change; a signed group whose input side a later
  signed group touches is refused.
* S4 ``rope`` (the commutant of RoPE): per class of rotary pairs, the balance above in the
  class's own field -- complex for rotary and coinciding pairs (a pair's rows x_j, y_j as the
  complex row x_j + i y_j, the element a complex matrix Z, A^-T becoming Z^-H, transposes
  conjugate transposes, and the phase of each u_k fixed so that its entry of largest magnitude
  is real positive), real GL for the unrotated and half-turn pairs. For a single rotary pair
  this is |r|^2 = ||Y_j|| / ||X_j|| with the rotation phi fixed by the phase convention.
* Skipped (``R2_SKIPPED``, listed in ``record.meta["skipped"]``): orthogonal groups (the S7
  residual rotation: sum ||W||_F^2 is constant on the orbit, so no point is singled out; GD is
  invariant under it, Adam is not -- statement O) and permutations (sum ||W||^2 is constant on
  the orbit and every optimizer here is equivariant under coordinate permutations).

Groups that share a tensor (the S2 chain, a decoder's norms with its attention and MLP groups)
are balanced by sweeps: each group's balance is the exact minimization of sum ||W||^2 over
that group with the others fixed (block coordinate descent); sum ||W||^2 is geodesically convex
on the orbit (the Kempf-Ness setting of a reductive group acting linearly), and the S2 case is
convex in the log-scales. Two canonicalized groups acting on overlapping slices of the same
axis are refused (InvalidInputError): their elements would not commute.

Degenerate groups (no minimizer, corrected R2) get a documented representative that is still a
function of the orbit, and are listed in ``record.meta["degenerate"]``:
* S2 unit with out_i = 0: c_i = 1 / ||in_i|| (the in side gets norm 1); with in_i = 0:
  c_i = ||out_i|| (the out side gets norm 1); both zero: c_i = 1 (the orbit is a point).
* S1 group with numerical rank k = rank(M) < r (singular values <= max(p, q) u ||X||_2 ||Y||_2,
  u the model dtype's unit roundoff, the rule of numpy.linalg.matrix_rank for the stored
  factors): the r - k degenerate directions get sigma := 1 (unit-norm rows of X_c spanning the
  part of rowspace(X) orthogonal to U); they are fixed only up to an orthogonal map of those
  directions (GD-invariant, not Adam-invariant). If X itself has rank < r the roles of X and Y
  are exchanged; if both do, InvalidInputError.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from convrate.errors import InvalidInputError, PrecisionError
from convrate.models.checks import gamma
from convrate.models.families import discover_symmetries
from convrate.models.io import LoadedModel
from convrate.models.rope import embed_complex, rope_classes
from convrate.models.symmetry import TorchReparameterization, TorchSymmetry

R2_TOL = 1e-12
R2_MAX_SWEEPS = 2000
#: element kinds R2 leaves alone, and why
R2_SKIPPED = {
    "orthogonal": "sum ||W||_F^2 is constant on the orbit of an orthogonal map: no point is singled out "
                  "(GD is invariant under it, statement O; Adam is not)",
    "permutation": "sum ||W||_F^2 is constant on a permutation's orbit, and every optimizer here is equivariant "
                   "under coordinate permutations: nothing to undo",
}
MATRIX_KINDS = ("gl", "rope")


def require_finite(named: Mapping[str, torch.Tensor], what: str) -> None:
    for n, t in named.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InvalidInputError(f"{what} has non-finite entries in {n!r}")


def factor_block(sym: TorchSymmetry, params: Mapping[str, torch.Tensor], op: str) -> torch.Tensor:
    """The group's factor as an (r, -1) float64 block: all slots with ``op`` side by side
    ("A": X = [W_a | b_a], "A_invT": Y, the side transformed by A^-T)."""
    blocks = [params[s.param].detach().to(torch.float64).movedim(s.axis, 0)[s.start:s.stop].reshape(sym.width, -1)
              for s in sym.slots if s.op == op]
    if not blocks:
        raise InvalidInputError(f"group {sym.name} has no {op!r} slot")
    return torch.cat(blocks, dim=1)


def _s2_scales(sym: TorchSymmetry, params: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """Per-unit balance c_i = (||out_i|| / ||in_i||)^(1/2) (degenerate units: module doc)."""
    n_in = factor_block(sym, params, "A").norm(dim=1)
    n_out = factor_block(sym, params, "A_invT").norm(dim=1)
    c = torch.ones_like(n_in)
    ok = (n_in > 0) & (n_out > 0)
    c[ok] = (n_out[ok] / n_in[ok]).sqrt()
    dead_out = (n_in > 0) & (n_out == 0)
    dead_in = (n_in == 0) & (n_out > 0)
    c[dead_out] = 1.0 / n_in[dead_out]
    c[dead_in] = n_out[dead_in]
    degenerate = torch.nonzero(~ok).flatten().tolist()
    return c, degenerate


def _s1_balance(X: torch.Tensor, Y: torch.Tensor, u: float) -> tuple[torch.Tensor, int]:
    """C with C X = Sigma'^(1/2) U^H (module doc) and the numerical rank k of M = X^H Y; X, Y
    real or complex (then transposes are conjugate transposes and the sign convention a phase)."""
    r = X.shape[0]
    Ux, Sx, Vxh = torch.linalg.svd(X, full_matrices=False)
    Uy, Sy, _ = torch.linalg.svd(Y, full_matrices=False)
    core = Sx[:, None] * (Ux.mH @ Uy) * Sy[None, :]
    P, S, _ = torch.linalg.svd(core)
    Ucols = Vxh.mH @ P  # left singular vectors of M (p x r)
    idx = Ucols.abs().argmax(dim=0)
    lead = Ucols[idx, torch.arange(r)]
    phase = torch.where(lead.abs() > 0, lead / torch.where(lead.abs() > 0, lead.abs(), 1.0), torch.ones_like(lead))
    P = P * phase.conj()[None, :]
    thr = max(X.shape[1], Y.shape[1]) * u * float(Sx[0]) * float(Sy[0])
    k = int((S > thr).sum())
    s = torch.where(S > thr, S, torch.ones_like(S))
    C = s.sqrt()[:, None] * (P.mH / Sx[None, :]) @ Ux.mH
    return C, k


def _full_rank(M: torch.Tensor, u: float) -> bool:
    s = torch.linalg.svdvals(M)
    return bool(s[-1] > max(M.shape) * u * s[0])


def _balance(X: torch.Tensor, Y: torch.Tensor, u: float, name: str) -> tuple[torch.Tensor, int]:
    """``_s1_balance`` of (X, Y), or with the roles exchanged when X is rank-deficient."""
    if _full_rank(X, u):
        return _s1_balance(X, Y, u)
    if _full_rank(Y, u):  # exchange roles: C_y acts on Y, so C = C_y^-H acts on X
        Cy, k = _s1_balance(Y, X, u)
        return torch.linalg.inv(Cy).mH, k
    raise InvalidInputError(f"R2: group {name} has both factors of rank < r = {X.shape[0]} "
                            "(a head with rank-deficient query/value and key/output slices); no representative is defined")


def _matrix_element(sym: TorchSymmetry, params: Mapping[str, torch.Tensor], u: float) -> tuple[torch.Tensor, int]:
    """The balancing element of a gl group, or of a rope group class by class (module doc),
    and the numerical rank of the balanced product (summed over classes)."""
    X, Y = factor_block(sym, params, "A"), factor_block(sym, params, "A_invT")
    if sym.element_kind == "gl":
        return _balance(X, Y, u, sym.name)
    p = sym.width // 2
    C = torch.eye(sym.width, dtype=torch.float64)
    rank = 0
    for cls in rope_classes(sym.structure):
        idx = torch.tensor(cls.coordinates(p))
        m = len(cls.pairs)
        if cls.kind in ("unrotated", "half-turn"):
            blk, k = _balance(X[idx], Y[idx], u, sym.name)
        else:
            s = torch.tensor(cls.signs, dtype=torch.float64)[:, None]
            XC = torch.complex(X[idx[:m]], s * X[idx[m:]])
            YC = torch.complex(Y[idx[:m]], s * Y[idx[m:]])
            Z, k = _balance(XC, YC, u, sym.name)
            blk = embed_complex(Z, cls, p)[idx[:, None], idx[None, :]]
            k *= 2
        C[idx[:, None], idx[None, :]] = blk
        rank += k
    return C, rank


def _s_diag_signs(sym: TorchSymmetry, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """+-1 per unit: the sign making the entry of largest magnitude of in_i positive."""
    X = factor_block(sym, params, "A")
    lead = X[torch.arange(sym.width), X.abs().argmax(dim=1)]
    return torch.where(lead < 0, -1.0, 1.0).to(torch.float64)


def _contacts(a: TorchSymmetry, b: TorchSymmetry) -> str:
    """"" when a and b touch no common parameter except on disjoint slices of one axis;
    "axis" when they share a parameter along different axes (they commute); "overlap" when
    they act on overlapping slices of the same axis."""
    out = ""
    for s in a.acting_slots:
        for t in b.acting_slots:
            if s.param != t.param:
                continue
            if s.axis != t.axis:
                out = out or "axis"
            elif s.start < t.stop and t.start < s.stop:
                return "overlap"
    return out


def _unit_roundoff(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) / 2


def canonicalize(model: LoadedModel, symmetries: Sequence[TorchSymmetry] | None = None, *,
                 tol: float = R2_TOL, max_sweeps: int = R2_MAX_SWEEPS) -> tuple[LoadedModel, TorchReparameterization]:
    """R2: (the canonical representative of the weights' orbit, the element C mapping the input
    to it). Computed in float64, applied once to the input's weights (cast to their dtype); the
    input model is not modified. ``record.meta``: sweeps, largest final correction, degenerate
    groups, skipped groups. See the module doc for the math, the stopping rule and degenerate
    groups."""
    if not isinstance(model, LoadedModel):
        raise InvalidInputError(f"canonicalize expects a LoadedModel, got {type(model).__name__}")
    if not (math.isfinite(tol) and tol > 0):
        raise InvalidInputError(f"tol must be positive and finite, got {tol!r}")
    if isinstance(max_sweeps, bool) or not isinstance(max_sweeps, int) or max_sweeps < 1:
        raise InvalidInputError(f"max_sweeps must be a positive integer, got {max_sweeps!r}")
    all_syms = list(symmetries) if symmetries is not None else discover_symmetries(model)
    skipped = [{"group": s.name, "kind": s.element_kind, "reason": R2_SKIPPED[s.element_kind]}
               for s in all_syms if s.element_kind in R2_SKIPPED]
    syms = [s for s in all_syms if s.element_kind not in R2_SKIPPED]
    if not syms:
        raise InvalidInputError("R2: the model has no symmetry group to canonicalize"
                                + (f" ({len(skipped)} orthogonal / permutation group(s) skipped)" if skipped else ""))
    named = dict(model.module.named_parameters())
    require_finite(named, "the model")
    contact = [[_contacts(a, b) if a is not b else "" for b in syms] for a in syms]
    for i, row in enumerate(contact):
        if "overlap" in row:
            j = row.index("overlap")
            raise InvalidInputError(f"R2: groups {syms[i].name} and {syms[j].name} act on overlapping slices of one "
                                    "axis; canonicalization needs commuting groups")
    u = _unit_roundoff(model.dtype)
    names = list(dict.fromkeys(n for s in syms for n in s.params))
    missing = [n for n in names if n not in named]
    if missing:
        raise InvalidInputError(f"R2: the groups act on parameters absent from the model: {missing[:3]}")
    work = {n: named[n].detach().to(torch.float64).clone() for n in names}
    elements = {i: s.identity() for i, s in enumerate(syms)}
    rank: dict[int, int] = {}
    one_pass = [i for i, s in enumerate(syms) if s.element_kind in MATRIX_KINDS and not any(contact[i])]
    for i in one_pass:
        C, rank[i] = _matrix_element(syms[i], work, u)
        work.update(syms[i].apply(work, C))
        elements[i] = C
    swept = [i for i in range(len(syms)) if i not in one_pass]
    signed = [i for i in swept if syms[i].element_kind == "diagonal"]
    for k, i in enumerate(signed):
        a_side = {sl.param for sl in syms[i].acting_slots if sl.op == "A"}
        later = [syms[j].name for j in signed[k + 1:] if a_side & set(syms[j].params)]
        if later:
            raise InvalidInputError(f"R2: the sign convention of {syms[i].name} would be changed by {later[0]}; "
                                    "list the signed groups so that none touches an earlier one's input side")
    sweeps, worst, previous = 0, 0.0, math.inf
    dead: dict[str, list[int]] = {}
    while swept:
        sweeps += 1
        previous, worst = worst, 0.0
        for i in swept:
            s = syms[i]
            if s.element_kind in MATRIX_KINDS:
                C, rank[i] = _matrix_element(s, work, u)
                work.update(s.apply(work, C))
                elements[i] = C @ elements[i]
                worst = max(worst, float(torch.linalg.matrix_norm(C - torch.eye(s.width, dtype=C.dtype), 2)))
                continue
            c, bad = _s2_scales(s, work)
            work.update(s.apply(work, c))
            elements[i] = elements[i] * c
            worst = max(worst, float(c.log().abs().max()))
            if bad:
                dead[s.name] = bad
            if s.element_kind == "diagonal":  # the sign convention, within the sweep: later groups see it
                f = _s_diag_signs(s, work)
                if bool((f < 0).any()):
                    work.update(s.apply(work, f))
                    elements[i] = elements[i] * f
                    worst = max(worst, 2.0)
        if worst <= tol:
            break
        if sweeps >= max_sweeps:
            raise PrecisionError(f"R2: balancing did not converge in {max_sweeps} sweeps "
                                 f"(largest correction {worst:.3e} > tol {tol:.1e})")
    degenerate: list[dict[str, Any]] = [
        {"group": syms[i].name, "rank": k, "width": syms[i].width,
         "representative": "degenerate directions get sigma := 1 (unique up to O(r - k))"}
        for i, k in rank.items() if k < syms[i].width]
    for name, units in dead.items():
        degenerate.append({"group": name, "units": units,
                           "representative": "a unit with a zero side gets norm 1 on its other side"})
    rho = worst / previous if sweeps >= 2 and previous > 0 else 0.0
    record = TorchReparameterization([(s, elements[i]) for i, s in enumerate(syms)],
                                     {"recovery": "R2", "sweeps": sweeps, "final_correction": worst,
                                      "contraction": rho, "tol": tol, "degenerate": degenerate, "skipped": skipped})
    canonical = record.apply_to_module(model.module)
    return model.with_module(canonical, recovery="R2"), record


def orbit_norm_sq(module: nn.Module, symmetries: Sequence[TorchSymmetry]) -> float:
    """sum ||W||_F^2 over the parameters the groups touch (float64)."""
    named = dict(module.named_parameters())
    names = dict.fromkeys(n for s in symmetries for n in s.params)
    return float(sum(named[n].detach().to(torch.float64).pow(2).sum() for n in names))


def distance_to_canonical(model: LoadedModel, symmetries: Sequence[TorchSymmetry] | None = None) -> dict[str, Any]:
    """How far the weights are from their balanced point: ``norm_ratio`` =
    sum ||W||^2 / sum ||W_canonical||^2 over the touched parameters (>= 1 up to round-off: the
    canonical point minimizes it over the orbit), ``kappa_C`` = max over groups kappa(C),
    ``kappa_T_C`` = kappa of C as a map on the parameters, degenerate groups, sweeps."""
    syms = list(symmetries) if symmetries is not None else discover_symmetries(model)
    canon, rec = canonicalize(model, syms)
    a, b = orbit_norm_sq(model.module, syms), orbit_norm_sq(canon.module, syms)
    return {"groups": len(syms), "norm_sq": a, "canonical_norm_sq": b, "norm_ratio": a / b if b > 0 else math.inf,
            "kappa_C": rec.kappa_A(), "kappa_T_C": rec.kappa_T(), "degenerate": rec.meta["degenerate"],
            "sweeps": rec.meta["sweeps"]}


# ---------------------------------------------------------------- agreement of canonical points
def s2_log_error(meta: Mapping[str, Any]) -> float:
    """A-posteriori error of the S2 log-scales of one canonicalization (its ``record.meta``):
    (last correction + gamma_3) / (1 - rho), the geometric tail of sweeps contracting by rho,
    plus the shift of the fixed point by the input's own rounding gamma_3."""
    rho = meta["contraction"]
    if not 0 <= rho < 1:
        raise PrecisionError(f"R2: the balance sweeps do not contract (rho = {rho})")
    return (meta["final_correction"] + gamma(3)) / (1 - rho)


def s1_factor_allowance(sym: TorchSymmetry, reference: Mapping[str, torch.Tensor],
                        versions: Sequence[Mapping[str, torch.Tensor]]) -> float:
    """Relative Frobenius allowance for the canonical factors of one S1 group computed from each
    of ``versions`` (the stored weights canonicalized), first-order (Wedin): with
    eps = gamma_m ||X'||_2 ||Y'||_2 the rounding of M = X'^T Y' (m = 2 (r + p + q)), row k of
    Sigma^1/2 U^T moves by <= sqrt(sigma_k) eps / gap_k + eps / (2 sqrt(sigma_k)), gap_k the
    distance of sigma_k to the rest of the spectrum of M (0 included); summed over the versions.
    An estimate, not a proof."""
    X, Y = factor_block(sym, reference, "A"), factor_block(sym, reference, "A_invT")
    r = sym.width
    sig = torch.linalg.svdvals(X.T @ Y)
    s, rest = sig[:r], torch.cat([sig, torch.zeros(1, dtype=sig.dtype)])
    gaps = torch.stack([torch.cat([rest[:k], rest[k + 1:]]).sub(s[k]).abs().min() for k in range(r)])
    total = 0.0
    for v in versions:
        Xv, Yv = factor_block(sym, v, "A"), factor_block(sym, v, "A_invT")
        eps = gamma(2 * (r + Xv.shape[1] + Yv.shape[1])) * float(torch.linalg.matrix_norm(Xv, 2)
                                                                   * torch.linalg.matrix_norm(Yv, 2))
        dk = s.sqrt() * eps / gaps + eps / (2 * s.sqrt())
        total += float(dk.norm() / s.sum().sqrt())
    return total


def _max_relative(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max_i |x_i - ref_i| / |ref_i| (inf where ref_i = 0 but x_i differs)."""
    d = (x - ref).abs()
    zero = ref == 0
    if bool((d[zero] > 0).any()):
        return math.inf
    return float((d[~zero] / ref[~zero].abs()).max()) if bool((~zero).any()) else 0.0


def canonical_agreement(symmetries: Sequence[TorchSymmetry], a: nn.Module, b: nn.Module,
                        meta_a: Mapping[str, Any], meta_b: Mapping[str, Any],
                        reference: Mapping[str, torch.Tensor],
                        versions: Sequence[Mapping[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """Two canonicalizations ``a``, ``b`` of one orbit (R2: the same point), group by group
    (groups R2 skips are left out). Groups balanced independently (S2 chains, isolated S1
    heads): ``measured`` = diagonal: max entrywise relative difference of the group's
    parameters, matrix: max over the two factors of ||X_a - X_b||_F / ||X_b||_F; ``allowance`` =
    diagonal: 2 gamma_6 + expm1(2 (e_a + e_b)) with e = ``s2_log_error``; matrix:
    ``s1_factor_allowance`` of the ``versions`` (the stored weights each canonical point was
    computed from). When a matrix group shares a tensor with another group (a decoder), every
    group is compared by its factors (entries are mixed by the matrix groups, so entrywise
    ratios mean nothing), with allowance expm1(2 (e_a + e_b)) (each factor carries at most
    two unconverged corrections, rows and columns) plus ``s1_factor_allowance`` for matrix
    groups: an estimate, like the latter."""
    pa = {n: t.detach().to(torch.float64) for n, t in a.named_parameters()}
    pb = {n: t.detach().to(torch.float64) for n, t in b.named_parameters()}
    out = []
    groups = [s for s in symmetries if s.element_kind not in R2_SKIPPED]
    coupled = any(s.element_kind in MATRIX_KINDS and any(_contacts(s, t) for t in groups if t is not s) for s in groups)
    sweep_err = math.expm1(2 * (s2_log_error(meta_a) + s2_log_error(meta_b))) \
        if coupled or any(s.element_kind not in MATRIX_KINDS for s in groups) else 0.0
    for sym in groups:
        if sym.element_kind not in MATRIX_KINDS and not coupled:
            rel = max(_max_relative(pa[n], pb[n]) for n in sym.params)
            out.append({"group": sym.name, "family": sym.family, "measured": rel,
                        "allowance": 2 * gamma(6) + sweep_err})
            continue
        rel = max(float((factor_block(sym, pa, op) - factor_block(sym, pb, op)).norm()
                        / factor_block(sym, pb, op).norm()) for op in ("A", "A_invT"))
        allowance = (sweep_err if coupled else 0.0) + (
            s1_factor_allowance(sym, reference, versions) if sym.element_kind in MATRIX_KINDS else 2 * gamma(6))
        out.append({"group": sym.name, "family": sym.family, "measured": rel, "allowance": allowance})
    return out


__all__ = ["R2_MAX_SWEEPS", "R2_SKIPPED", "R2_TOL", "canonical_agreement", "canonicalize", "distance_to_canonical",
           "factor_block", "orbit_norm_sq", "require_finite", "s1_factor_allowance", "s2_log_error"]
