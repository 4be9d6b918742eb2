"""The inserted form on the command line: ``convrate defend MODEL --form inserted ...`` and the
"Inserted layers" section of ``convrate audit``'s document (THEORY.md I, PREC-ALPHA, M).

``defend_inserted`` validates (k >= 1 and within every chosen layer, alpha > 0 and finite, a
pattern that matches, a model without inserted layers), grows the model
(``models.inserted.InsertedSpecDef``), refuses an alpha that breaks function preservation in the
release dtype (naming the largest safe alpha), and writes the release atomically: into a
temporary directory beside ``--out``, renamed into place when complete. The inserted form has no
secret record: C is part of the release.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

from convrate.errors import InvalidInputError


def write_release_atomically(model: Any, out_dir: Path) -> Path:
    """``io.save_model`` into a temporary sibling of ``out_dir``, then rename it into place
    (``out_dir`` must be absent or an empty directory)."""
    from convrate.models.io import save_model

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        save_model(model, tmp, overwrite=True)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked by the caller)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def defend_inserted(loaded: Any, k: Optional[int], alpha: Optional[float], side: str, layers: Optional[str],
                    top: Optional[int], out_dir: Path) -> tuple[Any, dict[str, Any]]:
    """Grow ``loaded`` and write the release; returns (result, JSON summary)."""
    from convrate.models.inserted import InsertedSpecDef
    from convrate.theory.bounds_inserted import check_alpha

    if k is None or alpha is None:
        raise InvalidInputError("--form inserted needs -k K and --alpha A")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha)):
        raise InvalidInputError(f"alpha must be a finite number > 0, got {alpha!r}")
    check_alpha(alpha)
    res = InsertedSpecDef(k, alpha, layers=layers, top=top, side=side).apply(loaded)
    release = write_release_atomically(res.model, out_dir)
    n = sum(p.numel() for p in loaded.module.parameters())
    summary = {
        "form": "inserted", "k": k, "alpha": float(alpha), "side": side, "layers_pattern": layers, "top": top,
        "release": release, "release_dtype": res.release_dtype, "record": None,
        "layers": [i.to_json() for i in res.layers], "n_layers": len(res.layers),
        "inserted_parameters": res.inserted_parameters, "model_parameters": n,
        "kappa_C": max(i.kappa_C for i in res.layers), "amplification": max(i.amplification for i in res.layers),
        "preservation": {d: {"deviation": p.deviation, "baseline": p.baseline, "tolerance": p.tolerance, "ok": p.ok}
                         for d, p in res.preservation.items()},
    }
    return res, summary


def inserted_section(result: Mapping[str, Any]) -> Any:
    """The audit document's "Inserted layers" section, every number from ``result["inserted"]``."""
    from convrate.reports.document import Section

    ins = result["inserted"]
    s = Section("Inserted layers")
    p = ins["preservation"]
    s.para(f"{ins['chains']} chain(s) of linear layers, {ins['inserted_parameters']} inserted parameters, release "
           f"dtype {ins['release_dtype']}. Evaluated in {p['dtype']}: deviation {p['deviation']:.3g} (tolerance "
           f"{p['tolerance']:.2g}): {'function-preserving' if p['ok'] else 'NOT function-preserving'}"
           + (f"; largest safe alpha for {p['dtype']} about {ins['safe_alpha']:.4g}" if ins["safe_alpha"] else "")
           + ".")
    rows = []
    for r in ins["layers"]:
        cert = (r.get("certified_safe_alpha") or {}).get({"float64": "fp64", "float32": "fp32", "bfloat16": "bf16",
                                                          "float16": "fp16"}.get(ins["release_dtype"], ""), None)
        rows.append([r["layer"], ", ".join(r["inserted"]), r["side"], "x".join(map(str, r["shape"])),
                     r["inserted_parameters"], f"{r['kappa_C']:.4g}", f"{r['alpha']:.4g}",
                     "-" if r["k"] is None else r["k"], f"{r['amplification']:.4g}",
                     "-" if r["safe_alpha"] is None else f"{r['safe_alpha']:.4g}",
                     "-" if cert is None else f"{cert:.3g}",
                     "-" if "product_residual" not in r else f"{r['product_residual']:.2e} / {r['tolerance']:.1e}"])
    s.table(["layer", "inserted", "side", "shape", "parameters", "kappa(C)", "alpha", "k", "amplification",
             "safe alpha (measured)", "safe alpha (certified)", "product residual / tol"], rows)
    fr = result.get("slowdown_C_frozen", {})
    if fr:
        s.table(["optimizer", "slowdown (C trainable)", "slowdown (C frozen)"],
                [[o, _ratio(result["slowdown"][o]), _ratio(fr[o])] for o in fr])
    return s


def _ratio(r: Mapping[str, Any]) -> str:
    if r["ratio"] is None:
        return "undefined"
    return (">= " if r["lower_bound"] else "") + f"{r['ratio']:.3g}x"


__all__ = ["defend_inserted", "inserted_section", "write_release_atomically"]
