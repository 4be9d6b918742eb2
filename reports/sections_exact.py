"""Report sections built from the exact side: derivations, the check battery, exact slowdowns."""
from __future__ import annotations

from typing import Any

from convrate.reports.document import Section


def statements_section(quick: bool, seed: int) -> Section:
    """Every statement: derivation status (sympy) and the exact battery's verdict."""
    from convrate.cli import summarize
    from convrate.numerics.battery import PROFILES, run_battery
    from convrate.theory import derive_runner

    derived = derive_runner.run_all()
    checks = {r["id"]: r for r in summarize(run_battery("quick" if quick else "full", seed=seed))}
    s = Section("Statements: derived and checked exactly")
    s.para("Status comes from `convrate derive` (sympy on fully symbolic small matrices); "
           "'corrected' means THEORY.md's wording is false, the counterexample is recorded and the "
           "corrected statement is proved. The check columns come from the exact battery "
           f"(`convrate check --profile {'quick' if quick else 'full'}`, {PROFILES['quick' if quick else 'full']} "
           "derandomized examples per entry): instances checked, worst relative margin (0 for exact "
           "identities), the precision used, and whether every instance holds.")
    rows = []
    for d in derived:
        c = checks.get(d["id"], {})
        rows.append([d["id"], d["status"], d["title"], c.get("instances", "-"),
                     f"{c['worst_margin']:.3g}" if c else "-", "; ".join(c.get("precision", [])) or "-",
                     ("yes" if c.get("holds") else "NO") if c else "-"])
    extra = sorted(set(checks) - {d["id"] for d in derived})
    for sid in extra:
        c = checks[sid]
        rows.append([sid, "-", "-", c["instances"], f"{c['worst_margin']:.3g}", "; ".join(c["precision"]),
                     "yes" if c["holds"] else "NO"])
    s.table(["id", "derivation", "statement", "instances", "worst margin", "precision", "holds"], rows)
    for d in derived:
        if d["status"] in ("corrected", "false"):
            s.para(f"{d['id']}: counterexample: {d.get('counterexample')}. Corrected: {d.get('corrected')}")
    s.data = {"derive": derived, "check": list(checks.values())}
    return s


SECTIONS: list[tuple[str, Any]] = [
    ("statements", statements_section),
]
