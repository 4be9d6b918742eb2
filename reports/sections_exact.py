"""The statements table: sympy derivations, the exact battery, and what the real-network
sections measured (``Context.measured``, filled before this section is built)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from convrate.reports.document import Section

if TYPE_CHECKING:
    from convrate.reports.builder import Context


STATEMENTS_TITLE = "Statements: derived, checked exactly, measured on real networks"


def derive_job() -> list[dict[str, Any]]:
    from convrate.theory import derive_runner

    return derive_runner.run_all()


def battery_job(battery: str, seed: int) -> list[dict[str, Any]]:
    from convrate.cli import summarize
    from convrate.numerics.battery import run_battery

    return summarize(run_battery(battery, seed=seed))


def _parts(ctx: "Context") -> list[tuple[Any, tuple]]:
    """The derivations and the exact battery do not depend on the other sections: two jobs
    that may run while they are built; the table is assembled once they all are."""
    return [(derive_job, ()), (battery_job, (ctx.profile.battery, ctx.seed))]


def _assemble(ctx: "Context", results: list[Any]) -> Section:
    """Every statement: derivation status, the exact battery's verdict, real-network checks."""
    from convrate.numerics.battery import PROFILES

    battery = ctx.profile.battery
    derived, summary = results
    checks = {r["id"]: r for r in summary}
    measured = {sid: _measured_summary(rs) for sid, rs in ctx.measured.items()}
    s = Section(STATEMENTS_TITLE)
    s.para("Derivation status comes from `convrate derive` (sympy on fully symbolic small matrices); "
           "'corrected' means THEORY.md's wording is false: the counterexample is recorded and the "
           "corrected statement is proved. The exact columns come from the battery "
           f"(`convrate check --profile {battery}`, {PROFILES[battery]} derandomized examples per entry): "
           "instances, worst relative margin (the bound's slack over max(|bound|, |measured|, allowance); "
           "for equalities minus the residual over max(|bound|, allowance): 0 when exact, >= -1 whenever "
           "the check holds), precision, verdict. The real-network "
           "columns count the checks of the later sections (digits MLP/CNN, MiniLM) and whether all hold.")
    rows = []
    ids = [d["id"] for d in derived] + sorted((set(checks) | set(measured)) - {d["id"] for d in derived})
    by_id = {d["id"]: d for d in derived}
    for sid in ids:
        d, c, m = by_id.get(sid, {}), checks.get(sid), measured.get(sid)
        rows.append([sid, d.get("status", "-"), d.get("title", "-"),
                     c["instances"] if c else "-", f"{c['worst_margin']:.3g}" if c else "-",
                     "; ".join(c["precision"]) if c else "-", _yes(c["holds"]) if c else "-",
                     m["instances"] if m else "-", _yes(m["holds"]) if m else "-"])
    s.table(["id", "derivation", "statement", "exact instances", "worst margin", "precision", "exact holds",
             "real-network checks", "real holds"], rows)
    for d in derived:
        if d["status"] in ("corrected", "false"):
            s.para(f"{d['id']}: counterexample: {d.get('counterexample')}. Corrected: {d.get('corrected')}")
    s.data = {"derive": derived, "check": list(checks.values()), "measured": measured}
    return s


def _measured_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"instances": len(results), "holds": all(r["holds"] for r in results),
            "worst_margin": min(r["margin"] for r in results)}


def _yes(holds: bool) -> str:
    return "yes" if holds else "NO"


def _planned() -> Any:
    from convrate.reports.builder import Planned

    return Planned(_parts, _assemble)


statements_section = _planned()


SECTIONS: list[tuple[str, Any]] = [
    ("statements", statements_section),
]
