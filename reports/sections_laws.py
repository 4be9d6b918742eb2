"""Transformation laws and the curvature lower bound measured on real networks (T1, T2, W).

T1/T2 compare autograd gradients / Hessian-vector products of the defended model with
T^-T g and T^-T H T^-1 u of the undefended one (``models.checks``, float64, allowance from a
first-order forward-error estimate); W compares the Lanczos lambda_max of the defended
squared-loss Hessian with the weight-spectrum lower bounds of ``theory.bounds``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from convrate.reports.document import Figure, Section

if TYPE_CHECKING:
    from convrate.reports.builder import Context


def _row(d: dict[str, Any]) -> list[Any]:
    return [d["statement"], d["instance"], f"{float(d['measured']):.4g}", d["relation"], f"{float(d['bound']):.4g}",
            f"{float(d['err']):.2g}", "yes" if d["holds"] else "NO", d["detail"]]


def laws_section(ctx: "Context") -> Section:
    from convrate.models import zoo
    from convrate.models.checks import check_t1, check_t2, w_sweep
    from convrate.models.defense import SpecDef
    from convrate.models.families import discover_symmetries
    from convrate.models.runtime import single_thread

    p = ctx.profile
    out: list[Any] = []
    with single_thread():
        mlp = zoo.digits_mlp()
        X, y, _, _ = zoo.digits_data()
        Y = torch.nn.functional.one_hot(y, 10).double()
        for K in (10, 1000):
            rec = SpecDef(K).reparameterization(mlp)
            for f in (check_t1, check_t2):
                out.append(f(mlp, rec, X, y, loss="cross_entropy", device="cpu",
                             instance=f"digits MLP, SpecDef K={K:g}, cross-entropy, all {X.shape[0]} examples"))
        ctx.step("laws: CNN", 1, 4)
        cnn = zoo.digits_cnn()
        Xi, yi, _, _ = zoo.digits_data(image=True)
        rec = SpecDef(100).reparameterization(cnn)
        out.append(check_t2(cnn, rec, Xi, yi, loss="cross_entropy", device="cpu",
                            instance="digits CNN, SpecDef K=100, cross-entropy"))
        ctx.step("laws: MiniLM", 2, 4)
        m = zoo.minilm(n_layers=p.minilm_layers)
        heads = list(p.minilm_heads) if p.minilm_heads is not None else None
        syms = discover_symmetries(m, heads=heads)
        rec = SpecDef(100).reparameterization(m, syms)
        x = m.probe_inputs(2, seq_len=8)
        Yb = torch.randn(2, 8, int(m.config["hidden_size"]), generator=torch.Generator().manual_seed(ctx.seed),
                         dtype=torch.float64)
        which = "all heads" if heads is None else f"heads {', '.join(map(str, heads))}"
        for f in (check_t1, check_t2):
            out.append(f(m, rec, x, Yb, device="cpu",
                         instance=f"MiniLM {p.minilm_layers} layer(s), {which} ({len(syms)} S1 groups), "
                                  f"SpecDef K=100, squared loss on a random target"))
        ctx.step("laws: W sweep", 3, 4)
        w = w_sweep(mlp, X, Y, p.W_Ks, device="cpu")
    rows = ctx.record(out + w)
    s = Section("Transformation laws and curvature on real networks (T1, T2, W)")
    s.para("Residual of the transformation laws on the real loss, float64 autograd: measured residual "
           "norm vs 0 within the stated round-off allowance (err). W: Lanczos (ARPACK) lambda_max of the "
           "defended squared-loss Hessian of the digits MLP against the two lower bounds of statement W "
           "(interlacing with E[h'h'^T], and max_i D_i^2 E[h_i^2]), err = Ritz residual + round-off.")
    s.table(["statement", "instance", "measured", "rel", "bound", "err", "holds", "detail"], [_row(d) for d in rows])
    s.figure(_w_figure(p.W_Ks, rows[len(out):]))
    s.data = {"checks": rows}
    return s


def _w_figure(Ks: tuple[float, ...], rows: list[dict[str, Any]]) -> Figure:
    from convrate.reports.builder import png, pyplot

    plt = pyplot()
    # w_sweep returns, per K in order, the interlacing bound then the D_i^2 bound
    fig, ax = plt.subplots(figsize=(6, 3.6))
    pairs = [rows[2 * i: 2 * i + 2] for i in range(len(Ks))]
    ax.loglog(Ks, [float(a["measured"]) for a, _ in pairs], "o-", label="Lanczos lambda_max(H')")
    ax.loglog(Ks, [float(a["bound"]) for a, _ in pairs], "s--", label="lower bound lambda_max(E[h'h'^T])")
    ax.loglog(Ks, [float(b["bound"]) for _, b in pairs], "^:", label="lower bound max_i D_i^2 E[h_i^2]")
    ax.set_xlabel("SpecDef strength K")
    ax.set_ylabel("curvature")
    ax.set_title("W on the digits MLP (squared loss)")
    ax.legend(fontsize=8)
    return Figure("w_bound.png", png(fig), "Statement W: measured lambda_max of the defended Hessian vs its "
                                           "weight-spectrum lower bounds, digits MLP.")


SECTIONS: list[tuple[str, Any]] = [("real-network laws", laws_section)]
