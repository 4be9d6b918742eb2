"""Statements SO-*: second-order and preconditioned attackers under an FPLR T (THEORY.md section 6).

Which attackers a reparameterization cannot slow (covariant preconditioners), which it slows and
by which power of kappa, and where the expected shape of THEORY.md is false (SO-GN, SO-SOPHIA).
Derivations in ``derive_second_order``, bound functions in ``bounds_second_order``, exact checks
in ``numerics.checks_second_order``, attackers in ``models.attacks``.
"""
from __future__ import annotations

import sympy as sp

from convrate.theory.core import Statement
from convrate.theory.derive_second_order import (derive_gn, derive_kfac, derive_lbfgs, derive_muon, derive_newton_cg,
                                                 derive_shampoo, derive_sophia)
from convrate.theory.derive_transforms import tsym

_T = "T an FPLR (S1 pair or S2 group), L'(theta') = L(T^-1 theta')"

STATEMENTS = [
    Statement(
        "SO-NEWTON-CG", "Hessian-free Newton-CG",
        "Newton-CG (k CG steps on (H + λI)p = −g per outer step) on L' equals, mapped back by T⁻¹, Newton-CG on L with "
        "damping matrix λTᵀT and the inner CG preconditioned by P = T⁻¹T⁻ᵀ. With λ = 0 and an exact inner solve it is "
        "exact Newton, invariant (N); truncated, its inner solve converges at κ(H') ≤ κ(T)²κ(H): outer contraction "
        "≤ 2ρ'^k, ρ' = (√κ(H')−1)/(√κ(H')+1).",
        (_T, "H + lambda T^T T > 0 along the run for the exact-solve case"),
        derive_newton_cg, bound="bounds_second_order.newton_cg_defended_rate"),
    Statement(
        "SO-GN", "Gauss-Newton / natural gradient",
        "A preconditioner built from covariant quantities is invariant: undamped Gauss-Newton (G' = T⁻ᵀGT⁻¹) is "
        "invariant under every FPLR; damping λ breaks it by λTᵀT (as LM).",
        (_T, "G = J^T (hess ell) J"),
        derive_gn, bound="lm_rate_interval",
        corrected="Damped Gauss-Newton on L' equals GN on L with damping matrix λTᵀT (rate as LM with G in place of H, "
                  "bounds.lm_rate_interval). Undamped GN is invariant only where G is invertible; but every continuous "
                  "FPLR group makes G singular everywhere (orbit tangents lie in null(J)), and then the undamped limit "
                  "(the minimum-norm step, λ → 0) is the TᵀT-minimum-norm step on L, not the Euclidean one: the "
                  "iterates differ (counterexample) and only the function-space step J p is invariant, to first order."),
    Statement(
        "SO-KFAC", "K-FAC with exact factors",
        "Across an S1 pair (S2 group) the input-activation covariance becomes A X Aᵀ and the output-gradient "
        "covariance A⁻ᵀ S A⁻¹, so the Kronecker-factored step S⁻¹ ∇W X⁻¹ maps by T exactly: K-FAC with exact factors "
        "and no damping is invariant; factored damping γ on L' is damping γAᵀA and γA⁻¹A⁻ᵀ on L.",
        (_T, "factors invertible (gamma -> 0)", "Linear / convolution layers; S2 needs positive D"),
        derive_kfac),
    Statement(
        "SO-SHAMPOO", "Shampoo and SOAP (gradient Gram matrices)",
        "Shampoo (W ← W − η L^−p G R^−p, L = εI + ΣGGᵀ, R = εI + ΣGᵀG) and SOAP are equivariant under orthogonal maps on "
        "either side; under W' = cQW (ε = 0) Shampoo's mapped-back step is c^(4p−2) times the undefended one; on "
        "row-aligned instances a one-sided A = diag(s) gives per-row steps η s_i^(4p−2): a spread κ(A)^|2−4p| of "
        "effective steps (κ(A) at the default p = 1/4, 1 at p = 1/2, κ(A)² at p = 0 = GD); a non-orthogonal A is not "
        "covariant (counterexample). SOAP on row-aligned instances is Adam (statement A).",
        (_T, "matrix parameter W with the one-sided map W' = A W (or W A^-1)"),
        derive_shampoo, bound="bounds_second_order.shampoo_step_scale"),
    Statement(
        "SO-SOPHIA", "Sophia (per-coordinate curvature, clipped)",
        "Preconditioners built from per-coordinate statistics (Sophia) are not covariant under a one-sided A except "
        "for orthogonal A; under a diagonal D, Sophia on L' is Sophia on L with rescaled hyperparameters.",
        (_T, "Hessian-diagonal estimate h transforming as h / D^2 (GNB or exact diagonal)"),
        derive_sophia, bound="bounds_second_order.sophia_equivalent_hyperparameters",
        corrected="Under a diagonal D, Sophia on L' equals Sophia on L with per-coordinate (η_i, γ_i, ε_i) = "
                  "(η/D_i, γ/D_i, εD_i): unclipped coordinates are invariant (diagonal Newton), clipped ones move by "
                  "(η/D_i) sign(m_i), the first power of D. Like Adam (statement O) it is NOT equivariant under "
                  "orthogonal maps: only under signed permutations (counterexample); 'except for orthogonal A' holds for "
                  "Shampoo, SOAP and Muon, not for Sophia or Adam."),
    Statement(
        "SO-LBFGS", "L-BFGS is a Krylov method",
        "On a quadratic, L-BFGS with memory m is Krylov-like, so F2 bounds it by CG. With exact line searches it "
        "produces the CG iterates for every m ≥ 1; on L' it is L-BFGS on L started from the adversarial "
        "preconditioner γT⁻¹T⁻ᵀ: at most cg_steps_upper_bound(κ(T)²κ(H), ε) steps, a slowdown ~√(κ(H')/κ(H)) ≤ κ(T).",
        (_T, "quadratic model, H > 0", "exact line search for the CG identity; any step for the Krylov bound"),
        derive_lbfgs, bound="bounds_second_order.lbfgs_exact_line_search_steps"),
    Statement(
        "SO-MUON", "Muon (orthogonalized updates)",
        "Muon's update polar(M) (exact, or by Newton-Schulz) is equivariant under orthogonal maps on either side; "
        "under W' = cQW the mapped-back update is (1/c) polar(M) (an effective lr η/c); under a general one-sided A "
        "the mapped-back update A⁻¹ polar(A⁻ᵀM) has singular values in [1/σ_max(A), 1/σ_min(A)]: a spread κ(A), the "
        "first power, between GD's κ² and Newton's 1; not invariant for non-orthogonal A.",
        (_T, "matrix parameter, momentum M full rank"),
        derive_muon, bound="bounds_second_order.muon_step_singular_interval"),
]


def _formulas() -> dict[str, sp.Basic]:
    t = tsym
    kT, kH, k, p, c, lam = sp.symbols("kappa_T kappa_H k p c lambda", positive=True)
    kp = kT**2 * kH
    Di = sp.Symbol("D_i", positive=True)
    eta, gam, eps = sp.symbols("eta gamma epsilon", positive=True)
    return {
        "SO-NEWTON-CG": sp.Le(t("||e_+||_H / ||e||_H", r"\|e_+\|_{H'}/\|e\|_{H'}"),
                              2 * ((sp.sqrt(kp) - 1) / (sp.sqrt(kp) + 1)) ** k),
        "SO-GN": sp.Eq(t("T^-1 (G' + lambda I)^-1 g'", r"T^{-1}(G' + \lambda I)^{-1} g'"),
                       t("(G + lambda T^T T)^-1 g", r"(G + \lambda T^\top T)^{-1} g"), evaluate=False),
        "SO-KFAC": sp.Eq(t("S'^-1 grad' X'^-1", r"S'^{-1} \nabla' X'^{-1}"), t("A S^-1 grad X^-1", r"A\, S^{-1}\nabla X^{-1}"),
                         evaluate=False),
        "SO-SHAMPOO": sp.Eq(t("mapped-back step / step", r"\Delta_{\mathrm{back}}/\Delta"), c ** (4 * p - 2), evaluate=False),
        "SO-SOPHIA": sp.Eq(t("(eta_i, gamma_i, eps_i)", r"(\eta_i, \gamma_i, \epsilon_i)"),
                           sp.Tuple(eta / Di, gam / Di, eps * Di), evaluate=False),
        "SO-LBFGS": sp.Eq(t("q_t^L-BFGS(m)", r"q_t^{\mathrm{L\text{-}BFGS}(m)}"), t("q_t^CG", r"q_t^{\mathrm{CG}}"),
                          evaluate=False),
        "SO-MUON": sp.Le(t("sigma(A^-1 polar(A^-T M))", r"\sigma(A^{-1}\mathrm{polar}(A^{-\top}M))"),
                         1 / t("sigma_min(A)", r"\sigma_{\min}(A)")),
    }


FORMULAS: dict[str, sp.Basic] = _formulas()
