"""The statements table: sympy derivations (with how far each proof goes), the exact battery,
what the real-network sections measured (``Context.measured``, filled before this section is
built), and the coverage view (``numerics.coverage``: which checks exercise each statement and
how tight they got; statements whose checks all have large slack are flagged)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from convrate.reports.builder import Planned
from convrate.reports.document import Section

if TYPE_CHECKING:
    from convrate.reports.builder import Context


STATEMENTS_TITLE = "Statements: derived, checked exactly, measured on real networks"


def derive_job() -> list[dict[str, Any]]:
    from convrate.theory import derive_runner

    return derive_runner.run_all()


def battery_job(battery: str, seed: int) -> list[tuple[str, list[Any]]]:
    """The exact battery under profile ``battery``, entry by entry (name, results): the coverage
    view needs to know which entry checked what."""
    from convrate.numerics.battery import PROFILES, load_entries, run_entry

    return [(e.name, run_entry(e, max(1, PROFILES[battery] // e.cost), seed)) for e in load_entries().values()]


def _parts(ctx: "Context") -> list[tuple[Any, tuple]]:
    """The derivations and the exact battery do not depend on the other sections: two jobs
    that may run while they are built; the table is assembled once they all are."""
    return [(derive_job, ()), (battery_job, (ctx.profile.battery, ctx.seed))]


def _assemble(ctx: "Context", results: list[Any]) -> Section:
    """Every statement: derivation status, the exact battery's verdict, real-network checks."""
    from convrate.numerics.battery import PROFILES, summarize
    from convrate.numerics.coverage import SLACK_THRESHOLD, coverage, flag_text

    battery = ctx.profile.battery
    derived, by_entry = results
    checks = {r["id"]: r for r in summarize([r for _, rs in by_entry for r in rs])}
    measured = {sid: _measured_summary(rs) for sid, rs in ctx.measured.items()}
    exact_cov = coverage(by_entry)
    real_cov = coverage([], ctx.measured)
    all_cov = coverage(by_entry, ctx.measured)
    s = Section(STATEMENTS_TITLE)
    s.para("Derivation status comes from `convrate derive` (sympy on fully symbolic small matrices); "
           "'corrected' means THEORY.md's wording is false: the counterexample is recorded and the "
           "corrected statement is proved. The exact columns come from the battery "
           f"(`convrate check --profile {battery}`, {PROFILES[battery]} derandomized examples per entry): "
           "instances, worst relative margin (the bound's slack over max(|bound|, |measured|, allowance); "
           "for equalities minus the residual over max(|bound|, allowance): 0 when exact, >= -1 whenever "
           "the check holds), precision, verdict. The real-network "
           "columns count the checks of the later sections (digits MLP/CNN, MiniLM) and whether all hold. "
           "Derivation: '(general)' when every identity was verified by sympy in every dimension (matrix expressions "
           "of symbolic size, or scalar laws that are the general case), '+ argued' when written or cited steps "
           "remain (`convrate derive --json` lists them), '(instances)' when some identity was verified only on "
           "fixed-size symbolic instances. Coverage: the battery entries (one Hypothesis property each, "
           "`property_tests/test_battery.py::test_entry[...]`) and the real-network checks that exercise the "
           "statement, and the tightest relative margin their inequality checks reached (0: the bound is "
           f"attained); SLACK marks a statement none of whose inequality checks came within {SLACK_THRESHOLD:.0%} "
           "of its bound, so a somewhat wrong bound would pass too.")
    rows = []
    ids = [d["id"] for d in derived] + sorted((set(checks) | set(measured)) - {d["id"] for d in derived})
    by_id = {d["id"]: d for d in derived}
    for sid in ids:
        d, c, m = by_id.get(sid, {}), checks.get(sid), measured.get(sid)
        cov = all_cov.get(sid)
        rows.append([sid, d.get("label", d.get("status", "-")), d.get("title", "-"),
                     c["instances"] if c else "-", f"{c['worst_margin']:.3g}" if c else "-",
                     "; ".join(c["precision"]) if c else "-", _yes(c["holds"]) if c else "-",
                     m["instances"] if m else "-", _yes(m["holds"]) if m else "-",
                     len(exact_cov[sid]["tests"]) if sid in exact_cov else 0,
                     flag_text(exact_cov.get(sid)), flag_text(real_cov.get(sid)),
                     cov["flag"] if cov else "-"])
    s.table(["id", "derivation", "statement", "exact instances", "worst margin", "precision", "exact holds",
             "real-network checks", "real holds", "battery tests", "tightest exact inequality",
             "tightest real inequality", "coverage"], rows)
    loose = sorted(sid for sid, cv in all_cov.items() if cv["flag"] == "slack")
    if loose:
        s.para("SLACK (no check within 10 % of the bound): " + ", ".join(
            f"{sid} (tightest {all_cov[sid]['tightest_inequality_margin']:.2g})" for sid in loose) + ".")
    for d in derived:
        if d["status"] in ("corrected", "false"):
            s.para(f"{d['id']}: counterexample: {d.get('counterexample')}. Corrected: {d.get('corrected')}")
    s.data = {"derive": derived, "check": list(checks.values()), "measured": measured, "coverage": all_cov}
    return s


def _measured_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"instances": len(results), "holds": all(r["holds"] for r in results),
            "worst_margin": min(r["margin"] for r in results)}


def _yes(holds: bool) -> str:
    return "yes" if holds else "NO"


statements_section = Planned(_parts, _assemble)


SECTIONS: list[tuple[str, Any]] = [
    ("statements", statements_section),
]
