"""Statements S4-S7 and O of THEORY.md section 6 (decoder LLMs: RoPE, GQA, SwiGLU, RMSNorm, the
residual stream; optimizers under an orthogonal T), with their derivations (``derive_llm``)
and bound functions (``bounds_llm``)."""
from __future__ import annotations

import sympy as sp

from convrate.theory.core import Statement
from convrate.theory.derive_llm import derive_O, derive_S4, derive_S5, derive_S6, derive_S7
from convrate.theory.derive_transforms import tsym

STATEMENTS = [
    Statement(
        "S4", "RoPE-constrained QK",
        "(Llama family): with rotary pairs (j, j + d/2) and distinct frequencies, the maps A on a head's query rows "
        "with A⁻ᵀ-type partner on its key rows that keep every q_mᵀR_{n−m}k_n are exactly the per-pair scaled "
        "rotations: q → r_j R(φ_j), k → r_j⁻¹ R(φ_j) (a complex scalar per frequency). Coinciding frequencies enlarge "
        "the group; unrotated dimensions keep GL. Under GQA one element per KV group, shared by its query heads.",
        ("RoPE as transformers applies it: position n rotates pair j by n w_j",
         "scores at offsets 0 and -1 occur (sequences of length >= 2)"),
        derive_S4, bound="bounds_llm.rope_commutant_dimension",
        corrected="With e^{iw_j} pairwise distinct, non-real and not conjugate to one another (w_j mod 2π distinct up "
                  "to sign and not in {0, π}; standard RoPE, w_j = θ^(−2j/d) ∈ (0, 1], satisfies it), the maps are "
                  "exactly N = M⁻ᵀ with M the per-pair scaled rotations q → r_j R(φ_j), k → r_j⁻¹ R(φ_j). In general M "
                  "ranges over the commutant of R_1: GL(m, C) on m pairs sharing e^{iw} up to conjugation, GL(2m, R) on "
                  "the pairs with e^{iw} = 1 (unrotated) or −1 (half-turn); one element per KV group under GQA."),
    Statement(
        "S5", "V/O per KV group",
        "B_g on v rows, B_g⁻¹ on the o columns of every query head of the group.",
        ("softmax attention weights sum to 1 over the keys",),
        derive_S5),
    Statement(
        "S6", "SwiGLU",
        "up rows × D, down columns × D⁻¹ (D any nonzero diagonal); gate rows admit no scaling; hidden-unit "
        "permutations.",
        ("MLP down(silu(gate x) * up x)",),
        derive_S6),
    Statement(
        "S7", "RMSNorm and the residual stream",
        "γ × c with consumer columns ÷ c; after folding γ, any orthogonal Q on the residual stream.",
        ("RMSNorm(x) = γ * x / sqrt(mean(x²) + ε), ε > 0", "pre-norm residual blocks; final norm before lm_head",
         "the rotation's domain is γ = 1: it is an FPLR of the other parameters (training γ leaves the domain)"),
        derive_S7),
    Statement(
        "O", "Optimizers under an orthogonal T",
        "GD, heavy ball, Nesterov, exact Newton commute with an orthogonal T (no slowdown); Adam, RMSprop, Sophia do not "
        "(per-coordinate statistics are basis-dependent): bound and measure their change.",
        ("T orthogonal (T⁻ᵀ = T)", "moments initialized at 0"),
        derive_O, bound="bounds_llm.adam_first_step_decrease_ratio_bounds",
        corrected="GD (any schedule), heavy ball, Nesterov and exact Newton commute with every orthogonal T. Adam, "
                  "RMSprop and Adagrad commute with an orthogonal T for every gradient history iff T is a signed "
                  "permutation; for any other orthogonal T some gradient changes their first step. With ε → 0 the first "
                  "step from gradient g on L' mapped back is −η Tᵀ sign(T g); its first-order decrease η‖Tg‖₁ differs "
                  "from the undefended η‖g‖₁ by a factor in [‖g‖₂/‖g‖₁, √n‖g‖₂/‖g‖₁], with mean n c_n ‖g‖₂/‖g‖₁, "
                  "c_n = Γ(n/2)/(√π Γ((n+1)/2)), for a Haar-random T (bounds_llm). Sophia's clipped coordinates behave "
                  "as the ε → 0 step (argued)."),
]

FORMULAS: dict[str, sp.Basic] = {
    "S4": sp.Eq(tsym("A_S4", r"A\big|_{\text{pair } j}"), tsym("r_j", "r_j") * sp.Function("R")(tsym("phi_j", r"\phi_j")),
                evaluate=False),
    "S5": sp.Eq(tsym("(W_v, W_o)", r"(W_v, W_{o,h})"), sp.Tuple(tsym("B W_v", "B_g W_v"), tsym("W_o B^-1", r"W_{o,h} B_g^{-1}")),
                evaluate=False),
    "S6": sp.Eq(tsym("(W_up, W_down)", r"(W_{\mathrm{up}}, W_{\mathrm{down}})"),
                sp.Tuple(tsym("D W_up", r"D W_{\mathrm{up}}"), tsym("W_down D^-1", r"W_{\mathrm{down}} D^{-1}")), evaluate=False),
    "S7": sp.Eq(tsym("RMSNorm(Q x)", r"\mathrm{RMSNorm}(Qx)"), tsym("Q RMSNorm(x)", r"Q\,\mathrm{RMSNorm}(x)"), evaluate=False),
    "O": sp.And(sp.Le(tsym("||g||_2/||g||_1", r"\|g\|_2/\|g\|_1"), tsym("||Tg||_1/||g||_1", r"\|Tg\|_1/\|g\|_1")),
                sp.Le(tsym("||Tg||_1/||g||_1", r"\|Tg\|_1/\|g\|_1"), tsym("sqrt(n)||g||_2/||g||_1", r"\sqrt{n}\,\|g\|_2/\|g\|_1")),
                evaluate=False),
}
