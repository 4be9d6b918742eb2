"""``convrate audit MODEL [--reference ORIGINAL] [--task TASK] --out DIR [--json] [--seed] [--quick]``.

Validates and loads the checkpoints (both formats of ``models.io``), runs
``models.audit.audit`` and writes into ``--out``: ``audit.json`` (the audit dict, schema in
README), ``audit.md``, a self-contained ``audit.html`` (figures embedded) and the figures
``loss_curves.png`` and ``spectra.png``. Every number in the Markdown/HTML is read from the
same dict as ``audit.json``. Nothing is written before both inputs validated; files go to a
temporary directory beside ``--out`` and are moved in only when complete; ``--out`` may not
be (or lie inside, or contain) an input directory, and an existing ``--out`` may hold only
an earlier audit's files. Exit codes: 0 audited, 2 bad input (one line), 1 when the verdict is
``fplr-not-recovered`` (a finding against THEORY.md R1).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import typer

from convrate.cli import _fail, _progress, app, console, out
from convrate.errors import ConvrateError
from convrate.reports.outdir import check_out_dir, write_out_dir

AUDIT_FILES = ("audit.md", "audit.html", "audit.json")
TITLE = "convrate audit"


# ---------------------------------------------------------------- figures
def loss_curves_figure(result: Mapping[str, Any]) -> bytes:
    """Training loss vs step at each variant's best lr (damping): one panel per optimizer in its
    fixed colour (``reports.style``), one line style and marker per variant (baseline thick),
    target dashed, y-range from the data (runs that blew up are clipped at 10x the start)."""
    import math

    from convrate.reports import style
    from convrate.reports.builder import png, pyplot

    plt = pyplot()
    attacks = result["attacks"]
    ncols = min(4, len(attacks))
    nrows = math.ceil(len(attacks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(attacks):]:
        ax.axis("off")
    for ax, (opt, a) in zip(axes.flat, attacks.items()):
        color = style.attacker_color(opt)
        start = max((c["losses"][0] for c in a["curves"].values() if c["losses"] and c["losses"][0]), default=1.0)
        seen = [a["target"]["target"]]
        for v, c in a["curves"].items():
            ys = [y if y is not None and y > 0 else float("nan") for y in c["losses"]]
            seen += [y for y in ys if math.isfinite(y) and y <= 10 * start]
            ax.plot(range(len(ys)), ys, style.VARIANT_LINES.get(v, "-"), color=color,
                    lw=2.4 if v == a["baseline"] else 1.2, alpha=1.0 if v in (a["baseline"], "claimed") else 0.75,
                    marker=style.VARIANT_MARKERS.get(v, "x"), markevery=max(1, len(ys) // 6), ms=4,
                    mfc="white" if v != a["baseline"] else color, label=f"{v} (lr {c['lr']:.3g})")
        ax.axhline(a["target"]["target"], color="k", ls="--", lw=0.8, label="target")
        ax.set_yscale("log")
        ax.set_ylim(*style.log_limits(seen, pad=1.3))
        ax.set_xlabel("step")
        ax.set_ylabel(f"training loss ({result['task']['loss']})")
        ax.set_title(opt, fontweight="bold")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def spectra_figure(result: Mapping[str, Any]) -> bytes:
    """Lanczos Ritz values of the Hessian of the baseline and the claimed model (symlog)."""
    from convrate.reports.builder import png, pyplot

    plt = pyplot()

    from convrate.reports import style

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, c in result["curvature"].items():
        if "ritz_values" in c:
            ax.plot(range(len(c["ritz_values"])), c["ritz_values"], style.VARIANT_LINES.get(name, "-"),
                    marker=style.VARIANT_MARKERS.get(name, "o"), ms=3, color="k" if name != "claimed" else "#D55E00",
                    label=name)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("Ritz index (ascending)")
    ax.set_ylabel("Hessian Ritz value")
    ax.legend(fontsize=8)
    return png(fig)


# ---------------------------------------------------------------- document
def _f(x: Any, fmt: str = ".4g") -> str:
    return "n/a" if x is None else (format(x, fmt) if isinstance(x, float) else str(x))


def _ratio(r: Mapping[str, Any]) -> str:
    if r["ratio"] is None:
        return "undefined"
    return (">= " if r["lower_bound"] else "") + f"{r['ratio']:.3g}x"


def sections(result: Mapping[str, Any], figures: Sequence[Any]) -> list[Any]:
    """The audit document, every number read from ``result``."""
    from convrate.reports.document import Section

    secs = []
    v = Section("Verdict")
    v.para(f"Class: {result['class']}. Verdict: {result['verdict']}.")
    for e in result["evidence"]:
        v.para(f"- {e}")
    secs.append(v)

    i = Section("Inputs")
    arch = result["architecture"]
    i.table(["item", "value"], [
        ["model", result["model"]], ["reference", result["reference"] or "none"],
        ["architecture", f"{arch['kind']} ({arch['format']}, {arch['dtype']}"
                         + (f", {arch['n_layers']} layers" if arch.get("n_layers") else "") + ")"],
        ["parameters", result["model_parameters"]], ["symmetry groups", result["symmetry_groups"]],
        ["task", f"{result['task']['name']}: {result['task']['description']}"],
        ["profile", result["profile"]["name"]], ["seed", result["seed"]],
    ])
    secs.append(i)

    fw = Section("Function and weights")
    if result["reference"] is None:
        fw.para("No reference: the claimed model is compared with the canonical point of its own symmetry orbit.")
    else:
        fit = result["fplr"]
        fw.table(["quantity", "value"], [
            ["function deviation (max relative, float64 probes)", _f(result["function_deviation"], ".3e")],
            ["function tolerance", _f(result["function_tolerance"], ".1e")],
            ["weight distance (max relative over tensors)", _f(result["weight_distance"], ".3e")],
            ["FPLR residual", _f(fit["residual"], ".3e")], ["FPLR rtol", _f(fit["rtol"], ".3e")],
            ["T found", fit["found"]], ["kappa(T)", _f(result["kappa_T"])],
            ["max kappa(A) over groups", _f(fit["kappa_A_max"])],
            ["kappa(A) per group kind", ", ".join(f"{k} {v:.4g}" for k, v in (result.get("kappa_A") or {}).items())
             or "n/a"],
            ["S2 sign mismatches", fit["sign_mismatches"]],
        ])
        if fit["reason"]:
            fw.para(f"No T: {fit['reason']}")
        fw.table(["worst parameter", "relative residual"], [[w["name"], _f(w["residual"], ".3e")]
                                                             for w in fit["worst_parameters"]])
    secs.append(fw)

    c = Section("Curvature")
    rows = []
    for name, cv in result["curvature"].items():
        if "lambda_max" in cv:
            rows.append([name, cv["n_parameters"], f"{cv['lambda_max']['value']:.4g} ± {cv['lambda_max']['residual']:.2g}",
                         f"{cv['lambda_min']['value']:.4g} ± {cv['lambda_min']['residual']:.2g}",
                         f"{cv['trace']:.4g} ± {cv['trace_se']:.2g}", cv["lanczos_steps"]])
    c.table(["model", "parameters", "top Ritz value ± residual", "bottom Ritz value ± residual",
             "trace ± s.e.", "Lanczos steps"], rows)
    ost = result["curvature"].get("ostrowski")
    if ost and ost.get("applies"):
        c.para(f"T2/Ostrowski: lambda_max(H') should lie in [{ost['interval'][0]:.4g}, {ost['interval'][1]:.4g}] "
               f"(from the reference's top Ritz value and sigma(T)); measured {ost['measured']:.4g} "
               f"(slack {ost['slack']:.2g}): {'consistent' if ost['consistent'] else 'NOT consistent'}.")
    c.figure(figures[1])
    secs.append(c)

    a = Section("Attacks")
    for opt, at in result["attacks"].items():
        t = at["target"]
        a.para(f"{opt}: target loss {t['target']:.4g} (initial {t['initial_loss']:.4g}, lowest in the "
               f"{t['pilot_budget']}-step pilot of the {at['baseline']} model {t['pilot_min_loss']:.4g}, "
               f"progress {t['progress']}).")
        base = at["searches"][at["baseline"]]["best_steps"]
        rows = []
        for vname, s in at["searches"].items():
            steps = s["best_steps"] if s["reached"] else f">{s['budget']}"
            ratio = "baseline" if vname == at["baseline"] else (
                "undefined" if not base else (">= " if not s["reached"] else "")
                + f"{(s['best_steps'] if s['reached'] else s['budget']) / base:.3g}x")
            rows.append([vname, f"{s['best_lr']:.3g}" + (" (grid edge)" if s["best_lr_at_grid_edge"] else ""),
                         steps, ratio, len(s["table"])])
        a.table(["model", "best lr", "steps to target", "vs baseline", "lr trials"], rows)
    a.figure(figures[0])
    secs.append(a)

    if "inserted" in result:
        from convrate.cli_inserted import inserted_section

        secs.append(inserted_section(result))
    r = Section("Recoveries")
    opts = list(result["slowdown"])
    rows = [["claimed (no recovery)", "-", "-", *[_ratio(result["slowdown"][o]) for o in opts]]]
    for rec, d in result["recovered_slowdown"].items():
        rows.append([rec, result["extra_parameters"][rec], f"{100 * result['extra_parameters_fraction'][rec]:.3g}%",
                     *[_ratio(d[o]) for o in opts]])
    r.table(["recovery", "extra parameters", "of the model", *[f"slowdown {o}" for o in opts]], rows)
    can = result["canonical"]
    crow = [[k, _f(d["norm_ratio"]), _f(d["kappa_C"]), d["sweeps"], len(d["degenerate"])]
            for k, d in can.items() if isinstance(d, Mapping)]
    r.table(["model", "Σ‖W‖² / canonical", "max kappa(C)", "sweeps", "degenerate groups"], crow)
    if "gap" in can:
        r.para(f"Canonical weights of claimed and reference differ by {can['gap']:.3e} (max relative over tensors); "
               "R2 predicts 0 up to round-off for an FPLR pair.")
    secs.append(r)

    w = result.get("work")
    if w:
        pilots = f"{w['pilot_steps_run']} pilot steps and " if "pilot_steps_run" in w else ""
        r.para(f"Work: {pilots}{w['attack_steps_run']} search steps run, of at most "
               f"{w['attack_steps_unpruned']} for the same trials unpruned ({w['attack_steps_saved']} saved: "
               f"{w['trials_pruned']} of {w['trials']} trials stopped at the incumbent's step count or a halving "
               f"round, {w['trials_from_pilot']} read off the "
               f"pilot, best curves not re-run); the best learning rates are those of an unpruned search. "
               f"Curvature: Lanczos basis {', '.join(w['curvature_basis'])}, peak resident memory "
               f"{(w['curvature_peak_rss'] or 0) / 2**20:.0f} MiB.")
    p = Section("Provenance")
    p.para(f"Schema {result['schema']}; profile {result['profile']['name']}, seed {result['seed']}; "
           f"wall time {result['wall_seconds']:.1f} s. Thresholds: slowdown {result['thresholds']['slowdown']}x, "
           f"recovery {result['thresholds']['recovery']}x.")
    secs.append(p)
    return secs


def render(result: Mapping[str, Any]) -> dict[str, bytes | str]:
    """name -> content of every output file."""
    from convrate.reports.document import Figure, to_html, to_markdown

    figs = [Figure("loss_curves.png", loss_curves_figure(result), "Training loss at each model's best learning rate"),
            Figure("spectra.png", spectra_figure(result), "Hessian Ritz values (Lanczos) of baseline and claimed model")]
    secs = sections(result, figs)
    files: dict[str, bytes | str] = {f.name: f.png for f in figs}
    files["audit.md"] = to_markdown(TITLE, secs)
    files["audit.html"] = to_html(TITLE, secs)
    files["audit.json"] = json.dumps(result, indent=2, allow_nan=False) + "\n"
    return files


# ---------------------------------------------------------------- command
@app.command()
def audit(
    model: Path = typer.Argument(..., help="the claimed (defended) checkpoint directory or zoo name"),
    reference: Optional[Path] = typer.Option(None, "--reference", "-r",
                                             help="the original checkpoint (directory or zoo name)"),
    task: str = typer.Option("auto", "--task", help="auto | digits-relabel | text | lm-text | lm-tokens"),
    out_dir: Path = typer.Option(..., "--out", help="output directory (audit.md, audit.html, audit.json, figures)"),
    as_json: bool = typer.Option(False, "--json", help="print audit.json on stdout as well"),
    seed: int = typer.Option(0, "--seed", help="seed of the task, probes, attacks and Lanczos"),
    quick: bool = typer.Option(False, "--quick", help="the quick profile (small budgets)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
) -> None:
    """Judge a claimed training-resistance defense against the theory (class, verdict, evidence)."""
    from convrate.models.audit import PROFILES, audit as run_audit, load_for_audit
    from convrate.models.tasks import task_name_for
    from convrate.models.curvature import resolve_device
    from convrate.models.fplr import check_same_architecture
    from convrate.models.audit_inserted import resolve_chains

    profile = PROFILES["quick" if quick else "default"]
    try:
        from convrate.cli_models import checkpoint_dir

        model, reference = checkpoint_dir(model), (checkpoint_dir(reference) if reference is not None else None)
        check_out_dir(out_dir, "audit", AUDIT_FILES, [model] + ([reference] if reference is not None else []))
        resolve_device(device)
        claimed = load_for_audit(model, profile)
        ref = load_for_audit(reference, profile) if reference is not None else None
        if ref is not None and not resolve_chains(claimed, ref):  # a grown release is compared once merged
            check_same_architecture(ref, claimed)
        task_name_for(claimed, task)
        with _progress() as prog:
            bar = prog.add_task("audit", total=None)

            def step(label: str, i: int, n: int) -> None:
                prog.update(bar, description=f"audit: {label}", completed=i, total=n)

            result = run_audit(claimed, ref, task=task, profile=profile, seed=seed, device=device, progress=step)
        write_out_dir(out_dir, render(result), "audit")
    except ConvrateError as err:
        _fail(err)
    console.print(f"audit written to {out_dir}: class {result['class']}, verdict {result['verdict']}")
    if as_json:
        out.print_json(json.dumps(result))
    if result["verdict"] == "fplr-not-recovered":
        raise typer.Exit(1)
