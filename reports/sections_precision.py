"""The precision limit (statement PREC): function error of a defended release vs K per dtype.

Exact side (``numerics.fp_precision``): an S1 pair with controlled spectra, defended exactly in
rational arithmetic, stored in each dtype; measured max relative output error against the exact
function, the rigorous forward-error bound, and the largest safe K (measured and certified).
Real networks (``models.defense.largest_safe_strengths``): the largest SpecDef strength each
dtype tolerates on the digits MLP and MiniLM under the stated preservation tolerance.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from convrate.reports.document import Figure, Section

if TYPE_CHECKING:
    from convrate.reports.builder import Context


def precision_section(ctx: "Context") -> Section:
    from convrate.models import zoo
    from convrate.models.defense import SpecDef, largest_safe_strengths
    from convrate.models.runtime import single_thread
    from convrate.numerics.fp_precision import DTYPES, controlled_pair, error_vs_K, precision_table

    p = ctx.profile
    table = precision_table(ctx.seed)
    Wa, Wb, X = controlled_pair(ctx.seed, 8, 16, 16, 16)
    curve = [asdict(pt) for pt in error_vs_K(Wa, Wb, X, p.precision_Ks)]
    ctx.step("precision: real networks", 1, 2)
    real = {}
    with single_thread():
        for label, model in (("digits MLP", zoo.digits_mlp()), (f"MiniLM ({p.minilm_layers} layer(s))",
                                                                 zoo.minilm(n_layers=p.minilm_layers))):
            real[label] = largest_safe_strengths(SpecDef(2.0), model, K_max=1e12)
    s = Section("Precision limit: function error vs K per dtype (PREC)")
    s.para("Exact instance: an S1 pair (r = 8, n_in = n_out = 16, 16 probe inputs, singular values "
           "geometric over one decade) defended by SpecDef exactly in rationals; weights stored in each "
           "dtype, forward pass in that dtype (torch CPU), error against the exact function enclosed in "
           "arb balls (128 bits). 'safe K' is the largest K whose max relative error stays under the "
           "tolerance (bisection in log10 K); 'certified K' is where the rigorous bound alone guarantees "
           "it; the growth exponent is the fitted slope of log error vs log K (PREC predicts 1).")
    s.table(["dtype", "u", "safe K @1e-2", "cause", "certified K @1e-2", "safe K @1e-3", "certified K @1e-3",
             "growth exponent"],
            [[r["dtype"], f"{r['u']:.3g}", _safe(r["safe_K@0.01"]), r["cause@0.01"], _safe(r["certified_K@0.01"]),
              _safe(r["safe_K@0.001"]), _safe(r["certified_K@0.001"]),
              "-" if r["growth_exponent"] is None else f"{r['growth_exponent']:.3f}"] for r in table])
    s.figure(_figure(curve, DTYPES))
    s.para("Real networks: largest SpecDef strength K (geometric profile, searched up to 1e12) keeping the "
           "max relative output deviation on probe inputs within the stated tolerance per dtype (or twice "
           "the undefended model's own deviation in that dtype, whichever is larger). On the MLP the "
           "defense is diagonal (S2): each weight is scaled by one factor, so its rounding error stays "
           "relative to itself and does not grow with K; only the exponent range (overflow, e.g. fp16 "
           "above 65504) limits K there. The u kappa(A) growth of PREC is the dense S1 case (MiniLM's heads).")
    s.table(["network", "dtype", "safe K", "tolerance", "deviation at K = 1e12"],
            [[net, dt, f"{v['safe_K']:.3g}" + (" (no failure found)" if v["passes_at_K_max"] else ""),
              f"{v['tolerance']:.2g}", f"{v['deviation_at_K_max']:.3g}" if math.isfinite(v["deviation_at_K_max"])
              else "non-finite"] for net, per in real.items() for dt, v in per.items()])
    s.data = {"exact_table": table, "error_vs_K": curve, "real_networks": real}
    return s


def _safe(K: float) -> str:
    """A safe strength for the table; K = 0 means even the undefended pair (K = 1) fails."""
    return "none (K = 1 fails)" if K < 1 else f"{K:.3g}"


def _figure(curve: list[dict[str, Any]], dtypes: tuple[str, ...]) -> Figure:
    from convrate.reports.builder import png, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for d in dtypes:
        pts = [c for c in curve if c["dtype"] == d and not c["overflow"] and c["max_rel"] > 0]
        line, = ax.loglog([c["K"] for c in pts], [c["max_rel"] for c in pts], "o-", ms=3, label=f"{d} measured")
        b = [c for c in pts if c["bound_max_rel"] is not None]
        ax.loglog([c["K"] for c in b], [c["bound_max_rel"] for c in b], "--", color=line.get_color(), lw=0.8,
                  label=f"{d} rigorous bound")
    ax.set_xlabel("SpecDef strength K = kappa(A)")
    ax.set_ylabel("max relative output error")
    ax.set_title("PREC: function error of a defended pair")
    ax.legend(fontsize=7, ncol=2)
    return Figure("precision.png", png(fig), "Function error vs K per dtype (measured, solid; rigorous bound, dashed).")


SECTIONS: list[tuple[str, Any]] = [("precision", precision_section)]
