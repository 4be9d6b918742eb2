"""The coverage view (numerics.coverage): per statement, the checks that exercise it, the tightest
margin they reached, and the SLACK flag -- in ``convrate check --json`` and the report's
statements table."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from convrate.cli import app
from convrate.numerics import battery
from convrate.numerics.coverage import ENTRY_TEST, SLACK_THRESHOLD, coverage, flag_text
from convrate.theory.core import compare


def _r(sid: str, measured: float, rel: str, bound: float):
    return compare(sid, f"{sid} {measured} {rel} {bound}", measured, rel, bound, precision="exact")


def test_flags_from_the_tightest_inequality():
    by_entry = [("e1", [_r("X", 0.5, "<=", 1.0), _r("Y", 0.0, "==", 0.0)]),
                ("e2", [_r("X", 0.95, "<=", 1.0), _r("Z", 2.0, ">=", 1.0)])]
    real = {"Z": [_r("Z", 1.0, ">=", 1.0).to_dict()]}
    cov = coverage(by_entry, real)
    assert cov["X"]["flag"] == "tight" and abs(cov["X"]["tightest_inequality_margin"] - 0.05) < 1e-12
    assert cov["X"]["tests"] == [ENTRY_TEST.format("e1"), ENTRY_TEST.format("e2")]
    assert cov["Y"]["flag"] == "identity" and cov["Y"]["tightest_inequality_margin"] is None
    assert cov["Z"]["flag"] == "tight" and cov["Z"]["tightest_inequality_margin"] == 0.0  # the real check attains it
    assert coverage(by_entry[1:])["Z"]["flag"] == "slack"  # battery alone: margin 1/2 > 10 %
    assert [s["kind"] for s in cov["Z"]["sources"]] == ["battery", "real"]
    assert flag_text(coverage(by_entry[1:])["Z"]) == "0.5 SLACK" and flag_text(cov["Y"]) == "identities only"
    assert SLACK_THRESHOLD == 0.1


def test_check_json_reports_coverage_of_B():
    """The aligned instances bring B within 10 % of its corrected bound; the random T of the
    original entry alone would not (its tightest margin is recorded per entry)."""
    r = CliRunner().invoke(app, ["check", "--profile", "quick", "--only", "B", "--json", "-"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout[r.stdout.index("["):])
    (b,) = [x for x in rows if x["id"] == "B"]
    cov = b["coverage"]
    assert {s["source"] for s in cov["sources"]} == {"quad_B_defended_gd", "tight_B_T3_aligned"}
    assert cov["flag"] == "tight" and cov["tightest_inequality_margin"] < SLACK_THRESHOLD
    by = {s["source"]: s for s in cov["sources"]}
    assert by["tight_B_T3_aligned"]["tightest_inequality_margin"] < by["quad_B_defended_gd"]["tightest_inequality_margin"]
    assert all(s["test"].startswith("property_tests/test_battery.py::test_entry[") for s in cov["sources"])


def test_statements_table_shows_scope_and_coverage(monkeypatch):
    from convrate.reports import builder
    from convrate.reports.profiles import QUICK
    from convrate.reports.sections_exact import statements_section
    from convrate.theory import derive_runner

    full = derive_runner.run_all
    monkeypatch.setattr(derive_runner, "run_all", lambda: full(only=["T3", "W'"]))
    entries = battery.load_entries()
    monkeypatch.setattr(battery, "load_entries", lambda: {k: entries[k] for k in ("quad_T3_condition", "nets_R1")})
    ctx = builder.Context(True, 0, QUICK)
    ctx.record([_r("T3", 1.0, "<=", 1.0)])
    s = statements_section(ctx)
    text = "\n".join(str(b) for _, b in s.blocks)
    assert "proved (general) + argued" in text and "proved (instances) + argued" in text
    cov = s.data["coverage"]
    assert cov["T3"]["flag"] == "tight" and cov["T3"]["tightest_inequality_margin"] == 0.0  # the measured check
    assert cov["R1"]["flag"] == "slack"  # its only inequality, the linear cost bound, is loose by construction
    assert "SLACK" in text and "R1 (tightest" in text
