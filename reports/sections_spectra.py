"""Hessian spectra of the attacker's loss before defense, after defense, and after each recovery.

Digits MLP (2410 parameters): the full Hessian (``curvature.dense_hessian``, float64) and its
eigenvalues (density), plus Lanczos (ARPACK) extremes with residuals and a Hutchinson trace.
MiniLM: Lanczos extremes and trace on the attention parameters of the first layer, on a small
batch of the text task. States: undefended; SpecDef at the largest K of the profile; R1 (the
Hessian in phi, which T2 makes T^T H' T = H: the undefended spectrum); R2 (the canonical point of
the defended release, the same for every K).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from convrate.reports.builder import Planned
from convrate.reports.document import Figure, Section

if TYPE_CHECKING:
    from convrate.reports.builder import Context


def _states(model: Any, K: float) -> list[tuple[str, Any]]:
    from convrate.models.defense import SpecDef
    from convrate.models.recovery import canonicalize, r1_module

    res = SpecDef(K).apply(model)
    return [("undefended", model.module), (f"SpecDef K={K:g}", res.model.module),
            (f"R1 of K={K:g}", r1_module(res.model.module, res.record)),
            (f"R2 of K={K:g}", canonicalize(res.model)[0].module)]


def _summary(obj: Any, dense: bool, seed: int, steps: int, probes: int) -> dict[str, Any]:
    """Both extremes from one fully reorthogonalized Lanczos run of ``steps`` products (each
    Ritz value with a fresh-product residual), a Hutchinson trace, and for ``dense`` the whole
    spectrum of the dense Hessian."""
    from convrate.models.curvature import dense_hessian, hutchinson_trace, lanczos

    obj.require_deterministic()
    op = obj.operator("hessian")
    theta, Y, k = lanczos(op, obj.n, steps, seed=seed, dtype=obj.dtype, device=obj.device)
    ends = {}
    for name, i in (("lambda_min", 0), ("lambda_max", len(theta) - 1)):
        y = Y[:, i] / Y[:, i].norm()
        ends[name] = (float(theta[i]), float((op(y) - float(theta[i]) * y).norm()))
    tr, se = hutchinson_trace(obj, samples=probes, seed=seed)
    out = {"n": obj.n, "lambda_max": ends["lambda_max"][0], "lambda_max_residual": ends["lambda_max"][1],
           "lambda_min": ends["lambda_min"][0], "lambda_min_residual": ends["lambda_min"][1],
           "lanczos_steps": k, "trace": tr, "trace_stderr": se, "trace_probes": probes, "products": obj.matvecs}
    if dense:
        ev = torch.linalg.eigvalsh(dense_hessian(obj))
        # eigenvalues within n u ||H||_2 of 0 are round-off of the (numerically singular) Hessian
        tol = ev.numel() * torch.finfo(ev.dtype).eps / 2 * float(ev.abs().max())
        out.update({"eigenvalues": ev.tolist(), "dense_trace": float(ev.sum()), "negative_tolerance": tol,
                    "negative_eigenvalues": int((ev < -tol).sum())})
    return out


def mlp_job(p: Any, seed: int) -> list[dict[str, Any]]:
    """The digits MLP's four states (dense spectrum too): one job of the report builder."""
    from convrate.models import zoo
    from convrate.models.curvature import Objective
    from convrate.models.runtime import single_thread
    from convrate.models.tasks import digits_relabel_task

    digits = digits_relabel_task(seed, standardize=False)
    out = []
    with single_thread():
        for name, mod in _states(zoo.digits_mlp(), max(p.W_Ks)):
            obj = Objective(mod, digits.X_train, digits.y_train, loss="cross_entropy", device="cpu")
            out.append({"state": name, **_summary(obj, True, seed, 80, 32)})
    return out


def minilm_job(p: Any, seed: int) -> list[dict[str, Any]]:
    """MiniLM's four states (layer 0 attention, 8 sequences): one job of the report builder."""
    from convrate.models import zoo
    from convrate.models.curvature import Objective
    from convrate.models.experiments import encoder_wrap
    from convrate.models.runtime import single_thread
    from convrate.models.tasks import minilm_tokenizer, select, text_task

    text = text_task(minilm_tokenizer(), max_length=p.text_tokens, per_class=p.text_per_class, seed=seed)
    Xt, yt = select(text.X_train, torch.arange(8)), text.y_train[:8]
    wrap = encoder_wrap(text, seed)
    out = []
    with single_thread():
        for name, mod in _states(zoo.minilm(n_layers=1), max(p.W_Ks)):
            net = wrap(mod)
            params = [n for n, q in net.named_parameters() if ".layer.0.attention." in n and q.requires_grad]
            obj = Objective(net, Xt, yt, loss="cross_entropy", params=params, device="cpu")
            out.append({"state": name, **_summary(obj, False, seed, p.spectra_lanczos_steps, p.spectra_probes)})
    return out


def _parts(ctx: "Context") -> list[tuple[Any, tuple]]:
    return [(mlp_job, (ctx.profile, ctx.seed)), (minilm_job, (ctx.profile, ctx.seed))]


def _assemble(ctx: "Context", results: list[Any]) -> Section:
    K = max(ctx.profile.W_Ks)
    nets: dict[str, list[dict[str, Any]]] = {"digits MLP": results[0], "MiniLM (layer 0 attention)": results[1]}
    s = Section("Hessian spectra before and after defense and recovery")
    s.para("Loss: the attacker's task at the released weights (digits relabel, all 1437 training examples; "
           "MiniLM: 8 sequences of the text task, Hessian restricted to layer 0's attention weights). "
           "lambda_max / lambda_min: the extreme Ritz values of one fully reorthogonalized Lanczos run, each "
           "with its fresh-product residual (an eigenvalue lies within it); trace by Hutchinson (Rademacher "
           "probes, with its standard error); for the MLP the dense Hessian's eigenvalues "
           "give the density, an exact trace and the number of negative eigenvalues (below -n u ||H||_2, u = 2^-53: "
           "smaller ones are round-off of the numerically singular Hessian). By Sylvester's law of inertia (T2) "
           "that count is the same in every state. R1's Hessian is taken in the attacker's coordinates phi.")
    for label, rows in nets.items():
        s.para(f"**{label}**")
        s.table(["state", "n", "lambda_max", "+-", "lambda_min", "+-", "trace (Hutchinson)", "+-", "exact trace",
                 "negative eigenvalues (< -n u ||H||)"],
                [[r["state"], r["n"], f"{r['lambda_max']:.5g}", f"{r['lambda_max_residual']:.1e}",
                  f"{r['lambda_min']:.5g}", f"{r['lambda_min_residual']:.1e}", f"{r['trace']:.5g}",
                  f"{r['trace_stderr']:.2g}", f"{r['dense_trace']:.5g}" if "dense_trace" in r else "-",
                  r.get("negative_eigenvalues", "-")] for r in rows])
    s.figure(_density(nets["digits MLP"]))
    s.data = {"networks": nets, "K": K}
    return s


def _density(rows: list[dict[str, Any]]) -> Figure:
    import numpy as np

    from convrate.reports.builder import png, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.6, 4))
    allv = np.concatenate([np.asarray(r["eigenvalues"]) for r in rows])
    lim = float(np.abs(allv).max())
    # symmetric log bins: |lambda| from 1e-8 lim to lim on both signs
    edges = np.geomspace(1e-8 * lim, lim, 60)
    bins = np.concatenate([-edges[::-1], edges])
    for r in rows:
        ax.hist(np.asarray(r["eigenvalues"]), bins=bins, histtype="step", label=r["state"], lw=1.1)
    ax.set_xscale("symlog", linthresh=1e-8 * lim)
    ax.set_yscale("log")
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("count")
    ax.set_title("digits MLP: Hessian eigenvalue density")
    ax.legend(fontsize=7)
    return Figure("spectra_mlp.png", png(fig), "Eigenvalue density of the digits MLP's Hessian (attacker's loss): "
                                              "undefended, defended, and after each recovery.")


spectra_section = Planned(_parts, _assemble)
SECTIONS: list[tuple[str, Any]] = [("spectra", spectra_section)]
