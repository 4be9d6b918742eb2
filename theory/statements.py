"""The statement registry: every statement of THEORY.md with its derivation and bound function.

``REGISTRY`` maps a statement id to a ``Statement``: title, the text as THEORY.md gives it,
assumptions, ``derive`` (a sympy derivation returning a ``Derivation``), ``bound`` (the name of
the plain function that checks call: a bare name in ``convrate.theory.bounds``, ``module.name``
in ``convrate.theory.module``; see ``bound_function``) and, for statements that
are false as written, ``corrected`` (the corrected statement, which the derivation proves).
``FORMULAS`` gives each statement's key relation as a sympy object (rendered with
``sympy.latex`` by ``convrate derive``).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

import sympy as sp

from convrate.theory import bounds
from convrate.theory.core import Statement
from convrate.theory.derive_curvature import derive_orbit_null, derive_specdef_opt, derive_W, derive_W_prime
from convrate.theory.derive_recovery import derive_PREC, derive_R1, derive_R2
from convrate.theory.derive_slowdown import derive_A, derive_B, derive_C, derive_F1, derive_F2, derive_LM, derive_N, derive_P
from convrate.theory.derive_transforms import derive_T1, derive_T2, derive_T3, derive_T4, tsym

_S1 = "S1 map (W_a, b_a, W_b) -> (A W_a, A b_a, W_b A^-1), T = diag(A (x) I_n_in, A, I_n_out (x) A^-T), row-major vec"
_Q = "local quadratic model q(theta) = 1/2 e^T H e, H > 0 symmetric"

_STATEMENTS = [
    Statement(
        "T1", "Gradient transformation law",
        "∇L'(Tθ) = T⁻ᵀ ∇L(θ), with L'(θ') = L(T⁻¹θ') and T a function-preserving linear reparameterization "
        "(S1: T = diag(A ⊗ I_{n_in}, A, I_{n_out} ⊗ A⁻ᵀ); singular values σ(A) (multiplicity n_in+1) ∪ σ(A⁻¹) "
        "(multiplicity n_out)).",
        (_S1, "L differentiable at theta; for S2 (ReLU) no pre-activation exactly 0 on the data"),
        derive_T1),
    Statement(
        "T2", "Hessian transformation law, inertia, Ostrowski",
        "∇²L'(Tθ) = T⁻ᵀ ∇²L(θ) T⁻¹. Inertia is preserved (Sylvester). Ostrowski: λ_k(H') = ρ_k λ_k(H) with "
        "ρ_k ∈ [σ_min(T⁻¹)², σ_max(T⁻¹)²].",
        (_S1, "L twice differentiable at theta"),
        derive_T2, bound="ostrowski_interval"),
    Statement(
        "T3", "Condition-number interval",
        "For H ≻ 0, κ(H)/κ(T)² ≤ κ(H') ≤ κ(T)² κ(H).",
        ("H > 0", "H' = T^-T H T^-1"),
        derive_T3, bound="condition_interval"),
    Statement(
        "T4", "Third-derivative law",
        "∇³L' = ∇³L ∘ (T⁻¹, T⁻¹, T⁻¹), so the Hessian Lipschitz constant obeys M' ≤ ‖T⁻¹‖³ M.",
        ("L three times differentiable", "norm of trilinear forms submultiplicative under mode products"),
        derive_T4, bound="third_derivative_bound"),
    Statement(
        "W", "Curvature is bounded below by the weight spectrum",
        "Let z = W_b h with h = W_a x (S1) or h = relu(W_a x) (S2), and the loss μ_ℓ-strongly convex in z. Then the "
        "W_b block of the Hessian is exactly E[h hᵀ] ⊗ ∇²ℓ (up to ordering) and λ_max(∇²L) ≥ μ_ℓ λ_max(E[h hᵀ]) ≥ "
        "μ_ℓ σ_max(W_a)² λ_min(E[x xᵀ]) (S1); for S2 with D: λ_max ≥ μ_ℓ max_i D_i² E[h_i²]. Under SpecDef: "
        "λ_max(H') ≥ μ_ℓ (max_i s_i σ_i(W_a))² λ_min(E[x xᵀ]).",
        ("W_b is the last linear layer", "hess ell(z) >= mu_ell I", "S2: no pre-activation exactly 0 on the data"),
        derive_W, bound="lambda_max_lower_bound_linear"),
    Statement(
        "W'", "The W_a block shrinks; closed forms",
        "λ_min(H'_aa) ≤ λ_max(H_aa)/s_max², hence for H' ≻ 0, κ(H') grows at least like s_max⁴ up to data "
        "constants. Exact closed forms for the 2-layer linear net and for a deep linear net.",
        ("s_max = sigma_max(A)", "H' > 0 for the kappa claim: this fails at every critical point of a linear net "
         "(statement ORBIT-NULL); the closed forms are for the blocks and the block-diagonal Gauss-Newton part",
         "closed forms: aligned weights, E[x x^T] = I, squared loss"),
        derive_W_prime, bound="aa_block_lambda_min_upper_bound"),
    Statement(
        "ORBIT-NULL", "Orbit tangents are null directions (added)",
        "For every B ∈ R^{r×r}, v(B) = (vec(B W_a), B b_a, −vec(W_b B)) satisfies J_f v = 0 (so the Gauss-Newton "
        "matrix is singular everywhere) and H v = −Ĝ(B)ᵀ∇L, so H v = 0 at every critical point: neither H nor H' is "
        "positive definite at a critical point of a linear pair.",
        (_S1,),
        derive_orbit_null),
    Statement(
        "SPECDEF-OPT", "Optimality of the geometric SpecDef profile",
        "Among A with κ(A) ≤ K and |det A| = 1, the geometric profile (s_1 = √K on the top singular direction, 1/√K on "
        "the bottom, geometric in between) maximizes σ_max(A·W_a).",
        ("A in GL(r)", "kappa(A) <= K", "|det A| = 1"),
        derive_specdef_opt, bound="specdef_max_gain",
        corrected="Among A ∈ GL(r) with κ(A) ≤ K and |det A| = 1, max σ_max(A W_a) = K^((r−1)/r) σ_max(W_a), attained by "
                  "the spike profile s = (K^((r−1)/r), K^(−1/r), …, K^(−1/r)) aligned with the top left singular vector "
                  "of W_a (bounds.specdef_spike_profile, bounds.specdef_max_gain). The geometric profile attains "
                  "√K σ_max(W_a): optimal for r ≤ 2 only, strictly worse for r ≥ 3 and K > 1."),
    Statement(
        "F1", "Fixed-step gradient descent on a quadratic",
        "e_t = (I − ηH)^t e_0, so with c_i the components of e_0 in H's eigenbasis, q_t = ½ Σ λ_i c_i² (1 − ηλ_i)^{2t}. "
        "GD diverges iff η > 2/λ_max over active components. Exact steps to q_t ≤ ε q_0 follow in closed form "
        "(monotone in t: bisection, no iteration). With the best fixed step, the worst-case count is ≈ (κ/2)·ln(1/ε): "
        "slowdown ≈ κ'/κ.",
        (_Q, "eta > 0"),
        derive_F1, bound="gd_worst_case_steps",
        corrected="As stated, except the constant: with the best fixed step η* = 2/(λ_min+λ_max) the worst-case count "
                  "is exactly ⌈ln ε / (2 ln((κ−1)/(κ+1)))⌉ = (κ/4) ln(1/ε) (1 + O(κ⁻²)) (bounds.gd_worst_case_steps); "
                  "(κ/2) ln(1/ε) is the count for η = 1/λ_max, or for the error-norm target ‖e_t‖ ≤ ε‖e_0‖. The "
                  "slowdown ≈ κ'/κ is unchanged."),
    Statement(
        "F2", "Every Krylov first-order method is at least as slow as CG",
        "For every Krylov method (θ_t ∈ θ_0 + span of past gradients: GD with any schedule, heavy ball, Nesterov, CG): "
        "q_t ≥ q_t^CG, because CG minimizes the H-norm error over the Krylov space. The exact CG count is an "
        "instance-exact lower bound for the whole class; the worst case is Θ(√κ ln(1/ε)), slowdown ≈ √(κ'/κ).",
        (_Q,),
        derive_F2, bound="cg_steps_upper_bound"),
    Statement(
        "P", "A defense is a preconditioner",
        "GD on L' from Tθ0 is, mapped back by T⁻¹, exactly preconditioned GD on L with P = T⁻¹T⁻ᵀ; Krylov methods "
        "likewise. A convergence-rate defense is an adversarial preconditioner.",
        ("T invertible linear", "L' = L o T^-1"),
        derive_P),
    Statement(
        "N", "Exact Newton is invariant",
        "Newton iterates satisfy θ'_t = Tθ_t for every t, so no FPLR slows exact Newton.",
        ("Hessian invertible along the trajectory",),
        derive_N),
    Statement(
        "LM", "Damped Newton (Levenberg-Marquardt)",
        "LM on L' (damping λ > 0) equals LM on L with the anisotropic damping matrix λ TᵀT; it is slowed where "
        "λσ_max(T)² ≫ λ_min(H).",
        ("damping lambda > 0", "rate statement on the quadratic model, H > 0"),
        derive_LM, bound="lm_rate_interval"),
    Statement(
        "A", "Adaptive methods under diagonal defenses",
        "Adam, RMSprop, Adagrad with diagonal T = D > 0: the method on L' equals the same method on L with "
        "per-coordinate step η/D_i and ε_i = εD_i. Diagonal defenses act on them to the first power of D, on SGD "
        "(P = D⁻²) to the second: adaptive optimizers are largely immune to S2.",
        ("T = D diagonal, D_i > 0", "moments initialized at 0"),
        derive_A, bound="adam_equivalent_hyperparameters"),
    Statement(
        "C", "Cubic-regularized Newton",
        "Cubic-regularized Newton's rate depends on M, which T4 bounds.",
        ("L has an M-Lipschitz Hessian",),
        derive_C, bound="third_derivative_bound"),
    Statement(
        "R1", "Linear-size recovery with knowledge of T",
        "Reparameterize θ' = Tφ (insert frozen layers A and A⁻¹ around each defended pair) or, equivalently, "
        "precondition with P' = TTᵀ. Then every step equals the undefended run, for every step size: the slowdown is "
        "exactly 1. Extra parameters: Σ_pairs 2r_p² for S1 (r_p for S2), which is at most 2·(r_p / min(n_in,p, "
        "n_out,p))·(defended parameters): linear in model size.",
        ("T known to the attacker",),
        derive_R1, bound="recovery_extra_parameters_bound",
        corrected="As stated, with the parameter count made consistent: inserting both frozen layers costs 2r_p² per "
                  "S1 pair and 2r_p per S2 group (bounds.recovery_extra_parameters); storing only A (resp. D) and "
                  "applying its inverse by a solve costs r_p² (resp. r_p). Either count is at most "
                  "2·(r_p / min(n_in,p, n_out,p))·(defended parameters of the pair)."),
    Statement(
        "R2", "Canonicalization with no knowledge of T",
        "The minimizer of Σ‖W‖_F² over the symmetry orbit is unique (S2: per-unit balance c_i² = ‖out_i‖/‖(in_i, b_i)‖, "
        "iterated over layers; S1: the SVD balanced factors of the product W_b W_a = UΣVᵀ, W_a = Σ^½Vᵀ, W_b = UΣ^½, "
        "unique up to an orthogonal Q, and GD is invariant under orthogonal T). Hence after canonicalization the "
        "attack is independent of the defense strength K.",
        ("attacker knows the symmetry family, not T",),
        derive_R2,
        corrected="If every S2 unit has nonzero in- and out-weights and every S1 pair has rank(W_b [W_a | b_a]) = r, the "
                  "minimizer of Σ‖W‖_F² over the orbit exists and is unique up to permutations (S2) and a left "
                  "orthogonal factor Q (S1): per-unit balance c_i² = ‖out_i‖/‖(in_i, b_i)‖ (iterated over layers, "
                  "convergent), and the balanced factors of W_b [W_a | b_a] (= W_b W_a without bias). Degenerate "
                  "units/pairs have no minimizer; a canonicalization that fixes a representative on them (e.g. "
                  "‖(in_i, b_i)‖ = 1 for a unit with out_i = 0) is still a function of the orbit. Since GD is "
                  "invariant under orthogonal maps, after canonicalization the attack is independent of K."),
    Statement(
        "B", "Upper bound on any FPLR defense",
        "GD slowdown ≤ κ(T)² (via T3).",
        (_Q, "best fixed step on both problems"),
        derive_B, bound="gd_slowdown_bound",
        corrected="(i) Absolute: for every e_0, GD with the best fixed step on H' = T⁻ᵀHT⁻¹ reaches q_t ≤ ε q_0 within "
                  "gd_worst_case_steps(κ(T)² κ(H), ε) steps (bounds.gd_defended_steps_upper_bound). (ii) Asymptotic "
                  "worst case: lim_{ε→0} N(H')/N(H) = artanh(1/κ(H))/artanh(1/κ(H')) ≤ κ(T)²/(1 − κ(H)⁻²) "
                  "(bounds.gd_slowdown_bound). A bound κ(T)² on the ratio of step counts is false."),
    Statement(
        "PREC", "Precision limit of a defended release",
        "In floating point of unit roundoff u, the defended model's function error grows like u·κ(A)·(layer norms); "
        "measure the largest K each dtype (fp64, fp32, bf16, fp16) tolerates before function preservation fails a "
        "stated tolerance, or overflows.",
        ("weights stored and products evaluated in the format of unit roundoff u", "no overflow or underflow"),
        derive_PREC, bound="bounds_precision.kappa_form_bound"),
]

#: modules holding further statements (THEORY.md section 6 and later), each defining
#: ``STATEMENTS: list[Statement]`` and ``FORMULAS: dict[str, sympy.Basic]`` (key relation per id)
STATEMENT_MODULES: tuple[str, ...] = (
    "statements_inserted",
    "statements_second_order",
    "statements_llm",
)

for _mod in STATEMENT_MODULES:
    _STATEMENTS += importlib.import_module(f"convrate.theory.{_mod}").STATEMENTS

REGISTRY: dict[str, Statement] = {s.id: s for s in _STATEMENTS}
if len(REGISTRY) != len(_STATEMENTS):
    raise ImportError("two statements share an id")


def bound_function(sid: str) -> Callable[..., Any] | None:
    """The bound function a statement names: a bare name lives in ``convrate.theory.bounds``,
    ``module.name`` in ``convrate.theory.module``."""
    name = REGISTRY[sid].bound
    if name is None:
        return None
    mod, _, fn = name.rpartition(".")
    module = importlib.import_module(f"convrate.theory.{mod}") if mod else bounds
    return getattr(module, fn)


for _s in _STATEMENTS:
    if _s.bound is not None and not callable(bound_function(_s.id)):
        raise ImportError(f"statement {_s.id} names bound {_s.bound}, which is not a function")


def _formulas() -> dict[str, str]:
    """Each statement's key relation as a sympy object, rendered by sympy.latex."""
    n = sp.Symbol("n", integer=True, positive=True)
    T, H = sp.MatrixSymbol("T", n, n), sp.MatrixSymbol("H", n, n)
    kH, kT, K, r, eps, kap, eta, lam, M = sp.symbols("kappa_H kappa_T K r epsilon kappa eta lambda M", positive=True)
    kHp = tsym("kappa_H'", r"\kappa_{H'}", positive=True)
    Ti = T.I
    t = tsym  # noqa: N806 - short alias for the table below
    Tn3 = t("||T^-1||", r"\|T^{-1}\|_2") ** 3
    Di = sp.Symbol("D_i", positive=True)
    f: dict[str, sp.Basic] = {
        "T1": sp.Eq(t("grad L'(T theta)", r"\nabla L'(T\theta)"), Ti.T * sp.MatrixSymbol(r"\nabla L(\theta)", n, 1),
                    evaluate=False),
        "T2": sp.Eq(t("hess L'(T theta)", r"\nabla^2 L'(T\theta)"), Ti.T * H * Ti, evaluate=False),
        "T3": sp.And(sp.Le(kH / kT**2, kHp), sp.Le(kHp, kT**2 * kH), evaluate=False),
        "T4": sp.Le(sp.Symbol("M'"), Tn3 * M),
        "W": sp.Ge(t("lambda_max(H)", r"\lambda_{\max}(\nabla^2 L)"),
                   t("mu_ell", r"\mu_\ell") * t("sigma_max(W_a)", r"\sigma_{\max}(W_a)") ** 2
                   * t("lambda_min(Sxx)", r"\lambda_{\min}(\Sigma_{xx})")),
        "W'": sp.Le(t("lambda_min(H'_aa)", r"\lambda_{\min}(H'_{aa})"),
                    t("lambda_max(H_aa)", r"\lambda_{\max}(H_{aa})") / t("s_max", r"s_{\max}") ** 2),
        "ORBIT-NULL": sp.Eq(t("J_f v(B)", r"J_f\, v(B)"), 0, evaluate=False),
        "SPECDEF-OPT": sp.Eq(t("max sigma_max(A W_a)", r"\max_{\kappa(A)\le K,\ |\det A| = 1} \sigma_{\max}(A W_a)"),
                             K ** ((r - 1) / r) * t("sigma_max(W_a)", r"\sigma_{\max}(W_a)"), evaluate=False),
        "F1": sp.Eq(sp.Symbol("N"), sp.ceiling(sp.log(eps) / (2 * sp.log((kap - 1) / (kap + 1)))), evaluate=False),
        "F2": sp.Ge(sp.Symbol("q_t"), t("q_t^CG", r"q_t^{\mathrm{CG}}")),
        "P": sp.Eq(sp.Symbol("P"), Ti * Ti.T, evaluate=False),
        "N": sp.Eq(t("theta'_t", r"\theta'_t"), T * sp.MatrixSymbol(r"\theta_t", n, 1), evaluate=False),
        "LM": sp.Eq(t("LM'", r"T^{-1}(H' + \lambda I)^{-1} T^{-T}"), (H + lam * T.T * T).I, evaluate=False),
        "A": sp.Eq(t("(eta_i, eps_i)", r"(\eta_i, \epsilon_i)"), sp.Tuple(eta / Di, eps * Di), evaluate=False),
        "C": sp.Le(sp.Symbol("M'"), Tn3 * M),
        "R1": sp.Eq(t("theta'_t", r"\theta'_t"), T * sp.MatrixSymbol(r"\theta_t", n, 1), evaluate=False),
        "R2": sp.Eq(sp.Symbol("c_i") ** 2, t("||out_i||", r"\|\mathrm{out}_i\|") / t("||in_i||", r"\|(\mathrm{in}_i, b_i)\|"),
                    evaluate=False),
        "B": sp.Le(t("lim N(H')/N(H)", r"\lim_{\epsilon\to 0} N(H')/N(H)"), kT**2 / (1 - kH**-2)),
        "PREC": sp.Le(t("||z_hat - z||", r"\|\hat z - z\|_2"),
                      sp.Symbol("c") * t("kappa(A)", r"\kappa(A)") * t("||W_b||_F", r"\|W_b\|_F")
                      * t("||W_a||_F", r"\|W_a\|_F") * t("||x||", r"\|x\|_2")),
    }
    for mod in STATEMENT_MODULES:
        f.update(importlib.import_module(f"convrate.theory.{mod}").FORMULAS)
    return {k: sp.latex(v) for k, v in f.items()}


FORMULAS: dict[str, str] = _formulas()
