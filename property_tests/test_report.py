"""The report machinery (reports.builder, reports.outdir, `convrate report`) on stand-in sections.

The real sections train and attack networks for minutes (`convrate report --quick`); here the
builder runs on two tiny sections so that what it guarantees is tested in CI: every file is
written, the HTML is self-contained, results.json holds every section's data, the statements
table (built last) is shown first and sees what the other sections measured, a foreign or
input-overlapping --out is refused with nothing written, a failing section leaves an earlier
report untouched, and a violated measured statement makes the command exit 1.
"""
from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from convrate.cli import app
from convrate.errors import InvalidInputError
from convrate.reports import builder
from convrate.reports.document import Figure, Section
from convrate.reports.sections_exact import STATEMENTS_TITLE
from convrate.theory.core import compare

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16  # the signature is all the builder passes through


def _measuring(holds: bool):
    def build(ctx: builder.Context) -> Section:
        r = compare("T1", "stand-in", 0.0 if holds else 1.0, "==", 0.0, precision="exact")
        s = Section("Measured")
        rows = ctx.record([r])
        s.table(["statement", "holds"], [[d["statement"], d["holds"]] for d in rows])
        s.figure(Figure("fig.png", PNG, "a figure"))
        s.data = {"checks": rows}
        return s
    return build


def _statements(ctx: builder.Context) -> Section:
    s = Section(STATEMENTS_TITLE)
    s.data = {"check": [], "measured": {k: {"holds": all(d["holds"] for d in v), "instances": len(v)}
                                       for k, v in ctx.measured.items()}}
    s.para(f"measured: {sorted(ctx.measured)}")
    return s


@pytest.fixture
def stand_in(monkeypatch):
    def use(holds: bool = True, fail: bool = False):
        def broken(ctx):
            raise RuntimeError("section failed")
        todo = [("measured", _measuring(holds))] + ([("broken", broken)] if fail else []) + [("statements", _statements)]
        monkeypatch.setattr(builder, "sections", lambda: todo)
    return use


def test_report_files_and_self_contained_html(tmp_path, stand_in):
    stand_in()
    out = tmp_path / "rep"
    results = builder.build_report(out, quick=True, seed=3)
    assert sorted(p.name for p in out.iterdir()) == ["fig.png", "report.html", "report.md", "results.json"]
    assert list(results) == [STATEMENTS_TITLE, "Measured", "Provenance"]  # statements first, provenance last
    assert results[STATEMENTS_TITLE]["measured"] == {"T1": {"holds": True, "instances": 1}}
    assert json.loads((out / "results.json").read_text())["Provenance"]["seed"] == 3
    html = (out / "report.html").read_text()
    # self-contained: every image is a data URI, nothing is fetched
    assert re.findall(r"src='([^']*)'", html) and all(s.startswith("data:image/png;base64,")
                                                      for s in re.findall(r"src='([^']*)'", html))
    assert not re.search(r"(href|src)=['\"]https?:", html)
    assert "![a figure](fig.png)" in (out / "report.md").read_text()


def test_foreign_out_dir_refused_nothing_written(tmp_path, stand_in):
    stand_in()
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidInputError, match="not a convrate report"):
        builder.build_report(out, quick=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary directory left behind


def test_failing_section_keeps_the_earlier_report(tmp_path, stand_in):
    stand_in()
    out = tmp_path / "rep"
    builder.build_report(out, quick=True)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    stand_in(fail=True)
    with pytest.raises(RuntimeError, match="section failed"):
        builder.build_report(out, quick=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_cli_exit_codes(tmp_path, stand_in):
    runner = CliRunner()
    stand_in(holds=True)
    r = runner.invoke(app, ["report", "--quick", "--out", str(tmp_path / "ok")])
    assert r.exit_code == 0, r.output
    stand_in(holds=False)
    r = runner.invoke(app, ["report", "--quick", "--out", str(tmp_path / "bad")])
    assert r.exit_code == 1 and "T1" in r.stderr
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.csv").write_text("1")
    r = runner.invoke(app, ["report", "--quick", "--out", str(tmp_path / "foreign")])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1


def test_report_profiles_and_their_default_outputs(tmp_path):
    """--profile picks quick / full / extended; an unknown name, or --quick with another profile,
    is one line and exit 2 with nothing written. EXTENDED holds every strength, optimizer and
    defense of FULL (it is FULL with the sweeps that do not fit the 20-minute budget)."""
    from dataclasses import fields

    from convrate.reports.profiles import EXTENDED, FULL, PROFILES, NetSweep

    assert {k: v.name for k, v in PROFILES.items()} == {"quick": "quick", "full": "full", "extended": "extended"}
    assert builder.default_out(False, "extended").name == "reference-extended"
    assert builder.default_out(True) == builder.DEFAULT_OUT_QUICK and builder.default_out(False, "full") == builder.DEFAULT_OUT
    for f in fields(FULL):
        small, big = getattr(FULL, f.name), getattr(EXTENDED, f.name)
        if isinstance(small, NetSweep):
            assert set(small.Ks) <= set(big.Ks) and set(small.optimizers) <= set(big.optimizers), f.name
            assert set(small.defenses) <= set(big.defenses), f.name
    runner = CliRunner()
    for argv in (["--profile", "bogus"], ["--quick", "--profile", "full"]):
        r = runner.invoke(app, ["report", *argv, "--out", str(tmp_path / "r")])
        assert r.exit_code == 2 and "--profile" in r.stdout + r.stderr
        assert not (tmp_path / "r").exists()


def test_inserted_slowdown_figure_marks_budget_hits_as_lower_bounds(monkeypatch):
    """Every plotted slowdown reaches ``style.mark_points`` with its own lower-bound flag (a
    budget-hit run is drawn open with a caret), in the variant's one colour, on every panel."""
    from convrate.reports import sections_inserted, style

    calls = []
    real = style.mark_points
    monkeypatch.setattr(style, "mark_points", lambda ax, xs, ys, lower, color, marker: (
        calls.append((list(xs), list(ys), list(lower), color, marker)), real(ax, xs, ys, lower, color, marker)))

    def row(defense, K, slowdown, lower, opt="sgd"):
        return {"defense": defense, "K": K, "optimizer": opt, "slowdown": slowdown, "slowdown_is_lower_bound": lower}

    rows = [row("inserted", 10, 2.0, False), row("inserted", 1000, 8.0, True), row("specdef", 10, 0.5, False),
            row("specdef", 1000, None, False), row("inserted", 10, 3.0, True, "adam")]
    fig = sections_inserted._slowdown_figure("digits MLP", rows)
    assert fig.png.startswith(b"\x89PNG")
    got = sorted(calls)
    assert got == sorted([
        ([10, 1000], [2.0, 8.0], [False, True], sections_inserted._VARIANT_COLORS["inserted"], style.defense_marker("inserted")),
        ([10], [0.5], [False], sections_inserted._VARIANT_COLORS["specdef"], style.defense_marker("specdef")),
        ([10], [3.0], [True], sections_inserted._VARIANT_COLORS["inserted"], style.defense_marker("inserted")),
    ])
