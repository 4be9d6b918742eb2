"""Command line of convrate (typer + rich); ``python -m convrate`` is the same program.

Every command takes ``--seed`` and a JSON output option; errors on bad input print one
line and exit with code 2; a violated statement exits with code 1.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from convrate.errors import ConvrateError, InvalidInputError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="convrate: convergence-rate control, derived, checked exactly, audited.")
console = Console(stderr=True, soft_wrap=True)  # one-line errors stay one line in pipes
out = Console()


def _fail(err: ConvrateError) -> None:
    console.print(f"[bold red]error:[/] {escape(str(err))}")
    raise typer.Exit(err.exit_code)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True,
                    disable=not console.is_terminal)  # in a pipe a transient bar leaves blank lines


def _write_new(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a crash never leaves a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@app.callback()
def _root() -> None:
    """convrate command line."""


@app.command()
def derive(
    out_dir: Optional[Path] = typer.Option(None, "--out", help="write derive.md, derive.tex, derive.json here"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON on stdout"),
    seed: int = typer.Option(0, "--seed", help="unused (derivations are symbolic); accepted for uniformity"),
) -> None:
    """Run every symbolic derivation; print each statement and whether sympy proved it, and how
    far: "(general)" (every identity verified in every dimension), "(general) + argued" (plus
    argued or cited steps), "(instances) + argued" (some identity verified on fixed-size
    instances only); --json lists the argued steps.

    Exit code 0 unless a statement is false with no proved correction.
    """
    from convrate.theory import derive_runner

    results = derive_runner.run_all(progress=None)
    if out_dir is not None:
        _write_new(out_dir / "derive.md", derive_runner.to_markdown(results))
        _write_new(out_dir / "derive.tex", derive_runner.to_latex(results))
        _write_new(out_dir / "derive.json", derive_runner.to_json(results))
    if as_json:
        out.print_json(derive_runner.to_json(results))
    else:
        table = Table(title="convrate derive: statements of THEORY.md")
        for col in ("id", "status", "title", "argued steps", "seconds"):
            table.add_column(col)
        colors = {"proved": "green", "corrected": "yellow", "checked-only": "cyan", "false": "red"}
        for r in results:
            st = r["status"]
            table.add_row(r["id"], f"[{colors.get(st, 'white')}]{r.get('label', st)}[/]", r["title"],
                          str(len(r.get("argued_steps", []))), f"{r['seconds']:.2f}")
        out.print(table)
        for r in results:
            if r["status"] in ("corrected", "false"):
                out.print(f"[bold]{r['id']}[/] counterexample: {r.get('counterexample')}")
                if r.get("corrected"):
                    out.print(f"    corrected: {r['corrected']}")
    if any(r["status"] == "false" for r in results):
        raise typer.Exit(1)


@app.command()
def check(
    profile: str = typer.Option("quick", "--profile", help="quick | full"),
    json_file: Optional[Path] = typer.Option(None, "--json", help="write the per-statement summary as JSON ('-' = stdout)"),
    seed: int = typer.Option(0, "--seed", help="seed of the derandomized instance generator"),
    only: Optional[list[str]] = typer.Option(None, "--only", help="check only these statement ids"),
    defense: Optional[str] = typer.Option(None, "--defense", help="check your own defense instead: "
                                          "package.module:callable (protocol: convrate.byod)"),
    models: str = typer.Option("mlp", "--models", help="with --defense: model kinds to draw (mlp, attention; comma list)"),
) -> None:
    """The exact numeric battery: every statement of THEORY.md section 5 on generated instances.
    With --defense, the statements of convrate.byod (FPLR, T-CLAIM, T1, T2, W, R1, R2) checked
    against that defense on drawn float64 models.

    The JSON rows carry ``coverage``: the entries (property tests) that check each statement,
    the tightest margin each reached, and ``flag`` = "slack" when no inequality check came within
    10 % of its bound (``numerics.coverage``).

    Exit code 1 on any violation, 2 on bad input (also a defense that raises, returns another
    architecture or NaN weights, or cannot be imported).
    """
    from convrate.numerics.battery import PROFILES, load_entries, run_entry, summarize

    if profile not in PROFILES:
        _fail(ConvrateError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}"))
    not_run: dict[str, str] = {}
    try:
        if defense is not None:
            from convrate.models.byod import defense_entries, run_defense_entry

            entries, not_run, name = defense_entries(defense, only or None, models)
        else:
            entries = [e for e in load_entries().values() if not only or set(only) & set(e.statements)]
            if only and not entries:
                _fail(ConvrateError(f"no battery entry checks {', '.join(only)}"))
        t0 = time.perf_counter()
        results = []
        by_entry = []
        with _progress() as prog:
            task = prog.add_task("checking", total=len(entries))
            for e in entries:
                prog.update(task, description=f"checking {e.name}")
                n = max(1, PROFILES[profile] // e.cost)
                if defense is None:
                    got = run_entry(e, n, seed)
                else:
                    got, why = run_defense_entry(e, n, seed)
                    if why:
                        not_run[e.statements[0]] = why
                results.extend(got)
                by_entry.append((e.name, got))
                prog.advance(task)
    except ConvrateError as err:
        _fail(err)
    from convrate.numerics.coverage import ENTRY_TEST, coverage, flag_text

    cov = coverage(by_entry, test_format=ENTRY_TEST if defense is None else None)
    rows = summarize(results)
    for r in rows:
        r["coverage"] = cov.get(r["id"])
    if only:
        rows = [r for r in rows if r["id"] in set(only)]
    what = f"--defense {name}" if defense is not None else f"--profile {profile}"
    table = Table(title=f"convrate check {what} ({time.perf_counter() - t0:.1f} s)")
    for col in ("statement", "instances", "worst margin", "tightest inequality", "entries", "precision", "holds"):
        table.add_column(col)
    for r in rows:
        c = r["coverage"]
        table.add_row(r["id"], str(r["instances"]), f"{r['worst_margin']:.3e}", flag_text(c),
                      str(len(c["sources"])) if c else "0", "; ".join(r["precision"]),
                      "[green]yes[/]" if r["holds"] else "[bold red]NO[/]")
    for sid, why in not_run.items():
        table.add_row(sid, "0", "-", "-", "0", "-", "[yellow]not run[/]")
    (console if json_file is not None and str(json_file) == "-" else out).print(table)
    for sid, why in not_run.items():
        console.print(f"[yellow]not run[/] {sid}: {why}")
    if json_file is not None:
        text = json.dumps(rows + [{"id": sid, "instances": 0, "holds": None, "not_run": why}
                                  for sid, why in not_run.items()], indent=2)
        if str(json_file) == "-":
            sys.stdout.write(text + "\n")
        else:
            _write_new(json_file, text)
    for r in rows:
        for v in r["violations"]:
            console.print(f"[bold red]VIOLATION[/] {v['statement']} on {v['instance']}: measured {v['measured']!r} "
                          f"{v['relation']} bound {v['bound']!r} fails ({v['precision']})")
    if not all(r["holds"] for r in rows):
        raise typer.Exit(1)


@app.command()
def report(
    quick: bool = typer.Option(False, "--quick", help="the quick profile (fits in 10 minutes on 2 CPU cores); "
                               "the same as --profile quick"),
    profile_name: Optional[str] = typer.Option(None, "--profile", help="quick | full (default; fits in 20 minutes "
                                               "on 2 CPU cores) | extended (the complete sweeps; about an hour)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="output directory (default reports/reference/, "
                                            "reports/reference-quick/ with --quick, reports/reference-extended/ "
                                            "with --profile extended)"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="print results.json on stdout as well"),
    jobs: Optional[int] = typer.Option(None, "--jobs", help="worker processes (default: the usable CPUs; 1 = "
                                       "serial in this process; the numbers do not depend on it)"),
    compare_to: Optional[Path] = typer.Option(None, "--compare", help="afterwards, compare the new report with this "
                                              "(committed) one within each number's sensitivity; exit 1 if one moved"),
) -> None:
    """Regenerate the bound-checking report (report.md, report.html, results.json, figures).

    With --compare DIR: then compare it with the report in DIR (see `convrate compare`)."""
    from convrate.reports.builder import build_report, default_jobs, default_out
    from convrate.reports.compare import load_results
    from convrate.reports.sections_exact import STATEMENTS_TITLE

    from convrate.reports.profiles import PROFILES

    if profile_name is not None and (profile_name not in PROFILES or (quick and profile_name != "quick")):
        _fail(InvalidInputError(f"--profile {profile_name!r}: choose one of {', '.join(PROFILES)}"
                                + (" (--quick is --profile quick)" if quick else "")))
    prof = PROFILES[profile_name or ("quick" if quick else "full")]
    quick = prof.name == "quick"
    if compare_to is not None:
        try:
            load_results(compare_to)  # refuse a bad --compare before the long run
        except ConvrateError as err:
            _fail(err)

    with _progress() as prog:
        task = prog.add_task("report", total=None)

        def step(name: str, i: int, n: int) -> None:
            prog.update(task, description=f"report: {name}", completed=i, total=n)

        try:
            results = build_report(out_dir, quick=quick, seed=seed, progress=step, report_profile=prof,
                                   jobs=default_jobs() if jobs is None else jobs)
        except ConvrateError as err:
            _fail(err)
    target = out_dir or default_out(quick, prof.name)
    console.print(f"report written to {target}")
    if as_json:
        out.print_json(json.dumps(results, default=str))
    table = results.get(STATEMENTS_TITLE, {})
    bad = sorted({c["id"] for c in table.get("check", []) if not c["holds"]}
                 | {sid for sid, m in table.get("measured", {}).items() if not m["holds"]})
    if bad:
        console.print(f"[bold red]{len(bad)} statement(s) violated[/]: {', '.join(bad)}")
        raise typer.Exit(1)
    if compare_to is not None:
        _compare_and_exit(target, compare_to, as_json=False)


def _compare_and_exit(new: Path, old: Path, as_json: bool) -> None:
    from convrate.reports.compare import compare_reports

    try:
        res = compare_reports(new, old)
    except ConvrateError as err:
        _fail(err)
    if as_json:
        out.print_json(json.dumps(res, default=str))
    table = Table(title=f"compare {new} with {old}")
    for col in ("path", "kind", "old", "new", "why"):
        table.add_column(col)
    for m in res["moved"]:
        table.add_row(m["path"], m["kind"], str(m["old"]), str(m["new"]), m["why"])
    (console if as_json else out).print(table)
    info = res["informational"]
    console.print(f"{len(res['moved'])} value(s) moved beyond their stated sensitivity ({res['ranged_compared']} "
                  f"ranged and {res['exact_compared']} exact values compared); {len(info)} other values differ (no "
                  f"sensitivity stated; largest relative change {res['informational_max_relative_change']:.2g})")
    if not res["ok"]:
        raise typer.Exit(1)


@app.command()
def compare(
    new: Path = typer.Argument(..., help="the regenerated report (directory or results.json)"),
    old: Path = typer.Argument(..., help="the committed report to compare with (directory or results.json)"),
    as_json: bool = typer.Option(False, "--json", help="print the comparison as JSON on stdout"),
    seed: int = typer.Option(0, "--seed", help="unused; accepted for uniformity"),
) -> None:
    """Compare two reports within each number's stated sensitivity (reports.compare): step counts
    and slowdowns must have intersecting sensitivity ranges, verdicts, exact counts and labels must
    be equal; other numbers are listed, not judged. Exit 1 if a number moved, 2 on bad input."""
    _compare_and_exit(new, old, as_json)


def main() -> None:
    try:
        app()
    except ConvrateError as err:  # one clear line for bad input
        console.print(f"[bold red]error:[/] {escape(str(err))}")
        sys.exit(err.exit_code)


from convrate import cli_models  # noqa: E402,F401  (registers defend, attack)
from convrate import cli_audit  # noqa: E402,F401  (registers audit)
from convrate import cli_hessian  # noqa: E402,F401  (registers hessian)
