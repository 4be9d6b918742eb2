"""Coverage view of the theory: per statement, the checks that exercise it and how tight they got.

A statement is only as strong as its tightest check: if every instance sits far inside the
bound, a wrong bound (a missing constant, a wrong exponent) would pass too. For each statement
id this module gathers

* the exact battery entries that check it -- each entry is one Hypothesis property
  (``property_tests/test_battery.py::test_entry[<entry>]``) and one block of ``convrate check``
  -- with their instance counts and worst relative margin (``CheckResult.margin``: the bound's
  slack over max(|bound|, |measured|, allowance); for equalities minus the residual, 0 when exact);
* optionally the real-network checks a report measured (``reports`` sections, CheckResult dicts);

and flags it ``slack`` when it has inequality checks and none of them came within
``SLACK_THRESHOLD`` (10 %) of its bound. Equality checks (identities, exact counts) are
reported but do not decide the flag: a residual of 0 is as tight as a check gets.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

from convrate.theory.core import CheckResult

#: a statement whose every inequality check has relative margin above this is flagged
SLACK_THRESHOLD = 0.1
#: the property test that runs a battery entry
ENTRY_TEST = "property_tests/test_battery.py::test_entry[{}]"


def _as_dict(r: CheckResult | Mapping[str, Any]) -> Mapping[str, Any]:
    return r.to_dict() if isinstance(r, CheckResult) else r


def _source(name: str, kind: str, rs: Sequence[Mapping[str, Any]], test_format: str | None = None) -> dict[str, Any]:
    ineq = [r for r in rs if r["relation"] in ("<=", ">=")]
    worst = min(rs, key=lambda r: r["margin"])
    tight = min(ineq, key=lambda r: r["margin"]) if ineq else None
    out: dict[str, Any] = {"source": name, "kind": kind, "checks": len(rs), "holds": all(r["holds"] for r in rs),
                           "worst_margin": worst["margin"], "inequality_checks": len(ineq),
                           "tightest_inequality_margin": tight["margin"] if tight else None,
                           "tightest_instance": (tight or worst)["instance"], "tightest_detail": (tight or worst)["detail"]}
    if test_format is not None:
        out["test"] = test_format.format(name)
    return out


def coverage(by_entry: Iterable[tuple[str, Sequence[CheckResult | Mapping[str, Any]]]],
             measured: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
             test_format: str | None = ENTRY_TEST) -> dict[str, dict[str, Any]]:
    """statement id -> {"sources", "tests", "checks", "worst_margin", "tightest_inequality_margin",
    "flag" ("tight" / "slack" / "identity"), "flag_rule"}.

    ``by_entry``: (battery entry name, its CheckResults), one source per entry and statement,
    named by the property test that runs it (``test_format``; None for entries that are not the
    project battery's, e.g. ``convrate check --defense``); ``measured``: statement id -> the
    real-network CheckResult dicts of a report, one source per statement."""
    per: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name, results in by_entry:
        grouped: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for r in results:
            d = _as_dict(r)
            grouped[d["statement"]].append(d)
        for sid, rs in grouped.items():
            per[sid].append(_source(name, "battery", rs, test_format))
    for sid, rs in (measured or {}).items():
        if rs:
            per[sid].append(_source("real networks (report sections)", "real", [_as_dict(r) for r in rs]))
    out = {}
    for sid in sorted(per):
        sources = per[sid]
        margins = [s["tightest_inequality_margin"] for s in sources if s["tightest_inequality_margin"] is not None]
        tight = min(margins) if margins else None
        if tight is None:
            flag = "identity"  # equality checks only
        elif tight > SLACK_THRESHOLD:
            flag = "slack"
        else:
            flag = "tight"
        out[sid] = {"id": sid, "sources": sources, "tests": [s["test"] for s in sources if "test" in s],
                    "checks": sum(s["checks"] for s in sources),
                    "worst_margin": min(s["worst_margin"] for s in sources),
                    "tightest_inequality_margin": tight, "flag": flag,
                    "flag_rule": f"slack: every inequality check has relative margin > {SLACK_THRESHOLD}"}
    return out


def flag_text(c: Mapping[str, Any] | None) -> str:
    """Short text for a table cell: the tightest inequality margin and the flag."""
    if c is None:
        return "-"
    m = c["tightest_inequality_margin"]
    if m is None:
        return "identities only"
    return f"{m:.2g}" + (" SLACK" if c["flag"] == "slack" else "")


__all__ = ["SLACK_THRESHOLD", "ENTRY_TEST", "coverage", "flag_text"]
