"""Statements of the inserted compensation layer (THEORY.md section 6 "I"): I, PREC-ALPHA, M.

Registered by the name ``statements_inserted`` in ``theory.statements.STATEMENT_MODULES``.
"""
from __future__ import annotations

import sympy as sp

from convrate.theory.core import Statement
from convrate.theory.derive_inserted import derive_I, derive_M, derive_PREC_ALPHA
from convrate.theory.derive_transforms import tsym

_CONS = ("W (m x n) = U Σ Vᵀ; W' = U diag(d) Σ Vᵀ with d = (α × k, 1 × rest); output side C = U diag(1/d) Uᵀ "
         "(y = C(W'x + C⁻¹b)), input side C = V diag(1/d) Vᵀ (y = W'(Cx) + b); C bias-free")

STATEMENTS = [
    Statement(
        "I", "Inserted compensation layer: frozen and trained",
        "W = UΣVᵀ released as W' = UΣ̃Vᵀ (top-k singular values × α) plus a new layer C = UΣΣ̃⁻¹Uᵀ, C W' = W. With C "
        "frozen: a one-sided preconditioner CCᵀ (statements P, T2 apply). With C trained too: the update on W = CW' is "
        "−η(CCᵀG + G W'ᵀW') to first order — an unbalanced factorization.",
        (_CONS, "G = ∂L/∂W at W = C W'; row-major vec", "gradient flow for the conservation law; one GD step for the "
         "exact update", "output side with a bias b' on W': the law holds for the augmented [W' | b'] and [G | g_b]"),
        derive_I, bound="bounds_inserted.joint_preconditioner_range"),
    Statement(
        "PREC-ALPHA", "Precision limit of the inserted form",
        "Function error ≈ u·α·σ₁/σ_k in the inserted form; the largest safe α per dtype.",
        (_CONS, "weights stored and products evaluated in a format of unit roundoff u (PREC's model M1-M3)",
         "no overflow"),
        derive_PREC_ALPHA, bound="bounds_inserted.alpha_form_bound",
        corrected="The chain is a PREC pair (P = W', Q = C; input side P = C, Q = W'), so ‖fl(chain(x)) − Wx‖₂ ≤ "
                  "forward_error_bound(n, s, m; ‖x‖, ‖W'‖_F, ‖C‖_F, ‖W‖_F) rigorously, with ‖W'‖_F² = α²Σ_{i≤k}σ_i² + "
                  "Σ_{i>k}σ_i² and ‖C‖_F² = k/α² + s − k (s = m output side, n input side; "
                  "bounds_inserted.alpha_form_bound). To first order the error is (n + s + 2)u‖C‖_F‖W'‖_F‖x‖: relative "
                  "to ‖W‖₂‖x‖ it grows like u·ρ with ρ = ‖C‖₂‖W'‖₂/‖W‖₂ = α for k < s and ρ = 1 for k = s (no growth "
                  "at all); the ratio σ₁/σ_j appears only in the error relative to ‖Wx‖ for x along v_j, which the "
                  "undefended layer already has. The largest safe α per dtype is certified from the bound "
                  "(bounds_inserted.certified_safe_alpha) and measured on real models by bisection."),
    Statement(
        "M", "Merge recovery",
        "M merge recovery: C W' → W, exact, removes parameters.",
        (_CONS, "the attacker multiplies the chain out (C is part of the release)"),
        derive_M, bound="bounds_inserted.merge_error_bound"),
]


def _formulas() -> dict[str, sp.Basic]:
    G, C, Wp, W = (sp.MatrixSymbol(x, 2, 2) for x in ("G", "C", "W'", "W"))
    eta, u, n, s = sp.symbols("eta u n s", positive=True)
    dW = tsym("Delta W", r"\Delta W")
    return {
        "I": sp.Eq(dW, -eta * (C * C.T * G + G * Wp.T * Wp) + eta**2 * G * Wp.T * C.T * G, evaluate=False),
        "PREC-ALPHA": sp.Le(tsym("||fl(C W' x) - W x||", r"\|\mathrm{fl}(C\,\mathrm{fl}(W'x)) - Wx\|_2"),
                            (n + s + 2) * u * tsym("||C||_F", r"\|C\|_F") * tsym("||W'||_F", r"\|W'\|_F")
                            * tsym("||x||", r"\|x\|_2")),
        "M": sp.Eq(W, C * Wp, evaluate=False),
    }


FORMULAS: dict[str, sp.Basic] = _formulas()
