"""Mutation testing of convrate's core with mutmut 3 (``make mutation [MODULES=...]``).

mutmut 3 derives a mutant's module name from its file path (``src/convrate/theory/bounds.py``
-> ``convrate.theory.bounds``) and needs the tests to import the code under that name. The
repository maps ``theory/`` -> ``convrate.theory`` etc. through setuptools ``package-dir``, so
this script stages, per module, a src-layout copy of the package under
``build/mutation/<module>/`` (``src/convrate/{theory,numerics,models,reports}``, the property
tests, a ``pyproject.toml`` holding the mutmut and pytest settings) and runs ``mutmut run``
there. mutmut puts ``mutants/src`` first on ``sys.path``, ahead of the editable install's
finder (which setuptools appends to ``sys.meta_path``), so the tests exercise the mutants.

Each module is run against the property tests listed for it in ``TESTS`` (mutmut then runs,
per mutant, only those of them that call the mutated function), under the Hypothesis
``mutation`` profile: the examples of ``ci`` -- the profile ``make test`` uses -- without
shrinking, so a mutant counts as killed only if CI would catch it. Results go to ``tools/mutation/results.json`` (per module: counts, score, the
mutants not killed, with their diffs) and ``tools/mutation/RESULTS.md``; a survivor is
*accounted for* when ``tools/mutation/equivalent.json`` explains it (matched by module,
function and the changed lines, so the explanation survives renumbering); ``--render``
re-applies the explanations without running mutmut; ``--resume`` keeps a module's mutants and
results under ``build/mutation/`` and tests again only what was not killed and the mutants of
functions whose code changed (after strengthening tests); ``--mutants NAME...`` resumes testing
again only the named mutants (a new test's targets) and the mutants of changed functions.

Score = (killed + timeout) / (mutants - equivalent); "no tests" and unexplained survivors count
against it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tools" / "mutation"
STAGE = ROOT / "build" / "mutation"
#: repository folder -> subpackage of convrate (pyproject package-dir)
PACKAGES = {"convrate": "", "theory": "theory", "numerics": "numerics", "models": "models", "reports": "reports"}

#: module -> the property tests it is checked against (real-network tests on the digits MLP and
#: MiniLM are left out, see DESELECT: their tiny-model counterparts exercise the same code)
TESTS: dict[str, tuple[str, ...]] = {
    "theory/bounds.py": ("test_theory.py", "test_battery.py", "test_quadratic.py", "test_nets.py"),
    "theory/bounds_nets.py": ("test_battery.py", "test_nets.py", "test_theory.py"),
    "theory/bounds_optim.py": ("test_quadratic.py", "test_battery.py", "test_theory.py"),
    "theory/bounds_precision.py": ("test_fp_precision.py", "test_battery.py", "test_theory.py"),
    "numerics/steps.py": ("test_quadratic.py", "test_battery.py", "test_theory.py", "test_steps.py"),
    "numerics/krylov.py": ("test_krylov.py", "test_quadratic.py", "test_battery.py"),
    "numerics/reparam.py": ("test_nets.py", "test_battery.py", "test_quadratic.py", "test_reparam.py"),
    "models/symmetry.py": ("test_models_symmetry.py", "test_models_defense.py", "test_models_recovery.py",
                           "test_fplr.py", "test_models_laws.py", "test_llm_groups.py"),
    "models/recovery.py": ("test_models_recovery.py", "test_llm_groups.py"),
    "models/fplr.py": ("test_fplr.py", "test_llm_groups.py"),
    "models/audit_verdict.py": ("test_audit_verdict.py",),
    "models/attacks/search.py": ("test_search_parts.py", "test_search_pruning.py", "test_models_attacks.py"),
    "models/curvature/objective.py": ("test_models_curvature.py", "test_curvature_lanczos.py",
                                      "test_curvature_distributed.py"),
}
MODULES = tuple(TESTS)
#: pytest -k expression deselecting the slow real-network tests (seconds each, per mutant) and the
#: tests that run every sympy derivation (tens of seconds per mutant; the bounds functions they
#: call are the battery's, which test_battery and test_theory's direct tests exercise)
DESELECT = ("not minilm and not digits_mlp and not every_derivation and not false_statements and not derive_json "
            "and not renderers")

#: lines never mutated: the wording of error messages (a ``raise`` line) and logging; every
#: condition that decides to raise is on its own line and is mutated
DO_NOT_MUTATE = [r"^\s*raise \w+(Error|Exception)\(", r"^\s*(warnings\.warn|print)\("]


def _slug(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def _paths(module: str) -> tuple[Path, str, Path]:
    """(stage folder, the module's path in the staged source, its mutmut results file)."""
    where = STAGE / _slug(module)
    target = f"src/convrate/{module}" if module.split("/")[0] != "convrate" else f"src/{module}"
    return where, target, where / "mutants" / f"{target}.meta"


def stage(module: str, resume: bool = False, only: frozenset[str] | None = None) -> Path:
    """A fresh src-layout copy of the repository for ``module`` (see the module docstring).

    ``resume``: keep the mutants and their results from the previous run of ``module`` and refresh
    everything else (sources, tests, settings); the mutants that were not killed, and every mutant
    of a function whose code changed (mutmut compares each function's hash), are tested again.
    ``only`` (with ``resume``): of the mutants kept, test again only these names (and still every
    mutant of a changed function)."""
    where, target, meta = _paths(module)
    if resume and meta.exists():
        staged = where / target
        if not staged.exists() or staged.read_bytes() != (ROOT / module).read_bytes():
            # the module changed: which tests call which function is collected afresh (new functions)
            (where / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
        for sub in ("src", "property_tests"):
            shutil.rmtree(where / sub, ignore_errors=True)
        keep = {f"{target}{suffix}" for suffix in ("", ".meta", ".spans")}
        for f in (where / "mutants" / "src").rglob("*"):  # mutmut copies only what is missing
            if f.is_file() and str(f.relative_to(where / "mutants")) not in keep:
                f.unlink()
        shutil.rmtree(where / "mutants" / "property_tests", ignore_errors=True)
        data = json.loads(meta.read_text())
        again = (lambda k, c: k in only) if only is not None else (lambda k, c: _status(c) not in KILLED)
        data["exit_code_by_key"] = {k: (None if again(k, c) else c) for k, c in data["exit_code_by_key"].items()}
        meta.write_text(json.dumps(data))
    elif where.exists():
        shutil.rmtree(where)
    src = where / "src" / "convrate"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "reference", "reference-quick")
    for folder, sub in PACKAGES.items():
        shutil.copytree(ROOT / folder, src / sub if sub else src, ignore=ignore, dirs_exist_ok=True)
    shutil.copytree(ROOT / "property_tests", where / "property_tests", ignore=ignore)
    tests = [f"property_tests/{t}" for t in TESTS[module]]
    cfg = [
        "[tool.mutmut]",
        'source_paths = ["src"]',
        f"only_mutate = {json.dumps([target])}",
        'also_copy = ["property_tests"]',
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        f'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:xdist", "-k", "{DESELECT}"]',
        f"do_not_mutate_patterns = {json.dumps(DO_NOT_MUTATE)}",
        'process_isolation = "forkserver"',
        # CPU-second limit per mutant = (tests' time + 5) * 3 * 2: a mutant that makes its tests
        # several times slower (an endless loop) counts as a timeout, i.e. killed
        "timeout_multiplier = 3.0",
        "timeout_constant = 5.0",
        "use_git_change_detection = false",
        "",
        "[tool.pytest.ini_options]",
        'testpaths = ["property_tests"]',
        "",
    ]
    (where / "pyproject.toml").write_text("\n".join(cfg))
    return where


def _mutmut(where: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYPOTHESIS_PROFILE": "mutation", "PYTHONDONTWRITEBYTECODE": "1"}
    exe = Path(sys.executable).with_name("mutmut")
    return subprocess.run([str(exe), *args], cwd=where, env=env, check=check, capture_output=True, text=True)


def _statuses(where: Path) -> dict[str, int | None]:
    """mutant name -> exit code, from the ``.meta`` files mutmut writes beside each mutated file."""
    out: dict[str, int | None] = {}
    for meta in (where / "mutants").rglob("*.meta"):
        out.update(json.loads(meta.read_text())["exit_code_by_key"])
    return out


def _status(code: int | None) -> str:
    from mutmut.stats import status_by_exit_code

    return status_by_exit_code[code]


def _changed_lines(diff: str) -> list[str]:
    """The -/+ lines of a unified diff, whitespace-normalized (the key of an explanation)."""
    return [re.sub(r"\s+", " ", ln).strip() for ln in diff.splitlines()
            if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]


def _function(name: str) -> str:
    """``convrate.models.recovery.x_r1_module__mutmut_3`` -> ``r1_module`` (methods: Class.method)."""
    mangled = name.rpartition(".")[2].partition("__mutmut_")[0]
    if mangled.startswith("x_"):
        return mangled[2:]
    _, cls, meth = mangled.split("ǁ")
    return f"{cls}.{meth}"


def _explanations() -> list[dict]:
    path = OUT / "equivalent.json"
    return json.loads(path.read_text()) if path.exists() else []


def _explain(module: str, function: str, lines: list[str], table: list[dict]) -> dict | None:
    for e in table:
        if e["module"] == module and e["function"] == function and e["lines"] == lines:
            return e
    return None


def run_module(module: str, jobs: int, resume: bool = False, only: frozenset[str] | None = None) -> dict:
    """Stage, run mutmut, and record one module (``record``). ``resume``, ``only``: see ``stage``;
    ``seconds`` then adds this run's time to the previous record's."""
    t0 = time.time()
    resume = resume and _paths(module)[2].exists()  # nothing to resume: a full run
    before = _load_record(module) if resume else None
    where = stage(module, resume, only if resume else None)
    proc = _mutmut(where, "run", "--max-children", str(jobs), check=False)
    if proc.returncode != 0 or not _statuses(where):
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise SystemExit(f"mutmut failed on {module} (exit {proc.returncode}):\n{tail}")
    return record(module, time.time() - t0 + ((before or {}).get("seconds") or 0.0),
                  (before or {}).get("resumed", 0) + (1 if resume else 0))


def record(module: str, seconds: float | None, resumed: int = 0) -> dict:
    """The record of ``module`` from its staged mutmut state: the counts per status and every
    mutant that was not killed, with its diff (explanations are applied when the results are
    summarized). Mutants a stopped run left "not checked" are counted (against the score) and
    named in the record's note, without diffs."""
    where = _paths(module)[0]
    codes = _statuses(where)
    counts: dict[str, int] = {}
    unkilled = []
    for name, code in sorted(codes.items()):
        status = _status(code)
        counts[status] = counts.get(status, 0) + 1
        if status in KILLED or status == "not checked":
            continue
        diff = _mutmut(where, "show", name, check=False).stdout
        unkilled.append({"mutant": name, "function": _function(name), "status": status, "lines": _changed_lines(diff)})
    out = {"module": module, "tests": list(TESTS[module]), "deselect": DESELECT, "mutants": len(codes),
           "counts": counts, "unkilled": unkilled, "mutmut": _version(),
           "seconds": None if seconds is None else round(seconds, 1),
           "resumed": resumed}
    if counts.get("not checked"):
        out["note"] = (f"partial: the run was stopped with {counts['not checked']} of {len(codes)} mutants not "
                       "checked; they count against the score")
    return out


#: statuses that count as killed (a timeout: the tests did not finish, CI would fail)
KILLED = ("killed", "timeout", "caught by type check", "segfault")


def summarize(r: dict, table: list[dict]) -> dict:
    """Apply the explanations of ``equivalent.json`` to one module's record: score and lists."""
    survivors, equivalent, accepted = [], [], []
    for m in r["unkilled"]:
        e = _explain(r["module"], m["function"], m["lines"], table)
        if e is None:
            survivors.append(m)
        else:
            (accepted if e.get("kind") == "accepted" else equivalent).append({**m, "reason": e["reason"]})
    killed = sum(n for st_, n in r["counts"].items() if st_ in KILLED)
    denominator = r["mutants"] - len(equivalent)
    return {**r, "killed": killed, "timeouts": r["counts"].get("timeout", 0), "equivalent": len(equivalent),
            "accepted": len(accepted), "unexplained": len(survivors),
            "score": killed / denominator if denominator else 1.0,
            "survivors": survivors, "equivalent_mutants": equivalent, "accepted_mutants": accepted}


def _version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def _load() -> dict:
    path = OUT / "results.json"
    return json.loads(path.read_text()) if path.exists() else {"modules": {}}


def _overall(mods: list[dict]) -> dict:
    total = sum(m["mutants"] for m in mods)
    eq = sum(m["equivalent"] for m in mods)
    killed = sum(m["killed"] for m in mods)
    return {"mutants": total, "killed": killed, "equivalent": eq, "timeouts": sum(m["timeouts"] for m in mods),
            "accepted": sum(m["accepted"] for m in mods), "unexplained": sum(m["unexplained"] for m in mods),
            "score": killed / (total - eq) if total > eq else 1.0,
            "modules_run": len(mods), "modules_listed": len(MODULES)}


def render(results: dict) -> str:
    """RESULTS.md: the score per module and every survivor with its diff or explanation."""
    table = _explanations()
    mods = {m: summarize(r, table) for m, r in results["modules"].items()}
    o = _overall([mods[m] for m in MODULES if m in mods])
    lines = ["# Mutation testing of the core (`make mutation`)", "",
             "Generated by `tools/mutation.py` (mutmut, Hypothesis profile `mutation` = the `ci` examples without "
             "shrinking). Score = (killed + timeout) / (mutants - equivalent). Every survivor is accounted for in "
             "`tools/mutation/equivalent.json`: *equivalent* (no test can kill it: the program's behaviour is the "
             "same, with the reason) -- left out of the score -- or *accepted* (a real difference that the suite "
             "does not reach, with why: it counts against the score). UNEXPLAINED survivors have no entry yet.", "",
             f"**Overall: {o['score']:.1%}** ({o['killed']} of {o['mutants'] - o['equivalent']} non-equivalent "
             f"mutants killed, {o['timeouts']} of them by timeout; {o['equivalent']} equivalent; {o['accepted']} "
             f"accepted survivors; {o['unexplained']} unexplained; {o['modules_run']} of {o['modules_listed']} "
             "modules run).", "",
             "| module | mutants | killed | timeouts | equivalent | accepted | unexplained | score | tests | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in MODULES:
        r = mods.get(m)
        if r is None:
            lines.append(f"| {m} | not run | | | | | | | | |")
            continue
        lines.append(f"| {m} | {r['mutants']} | {r['killed']} | {r['timeouts']} | {r['equivalent']} | {r['accepted']} | "
                     f"{r['unexplained']} | {r['score']:.1%} | {', '.join(r['tests'])} | {r['seconds'] or '-'} |")
    notes = [f"- {m}: {mods[m]['note']}" for m in MODULES if m in mods and mods[m].get("note")]
    if notes:
        lines += ["", "Notes:", *notes]
    for m in MODULES:
        r = mods.get(m)
        if r is None or not (r["survivors"] or r["equivalent_mutants"] or r["accepted_mutants"]):
            continue
        lines += ["", f"## {m}", ""]
        for x in r["survivors"]:
            lines.append(f"- **UNEXPLAINED** `{x['mutant']}` ({x['status']}): `{' | '.join(x['lines'])}`")
        for x in r["accepted_mutants"]:
            lines.append(f"- accepted `{x['mutant']}` ({x['status']}): `{' | '.join(x['lines'])}` -- {x['reason']}")
        for x in r["equivalent_mutants"]:
            lines.append(f"- equivalent `{x['mutant']}`: `{' | '.join(x['lines'])}` -- {x['reason']}")
    return "\n".join(lines) + "\n"


RECORDS = STAGE / "records"  # one file per module: concurrent runs of different modules do not clobber each other


def _load_record(module: str) -> dict | None:
    f = RECORDS / f"{_slug(module)}.json"
    return json.loads(f.read_text()) if f.exists() else _load()["modules"].get(module)


def _merge_records(results: dict) -> dict:
    """results.json's modules, each replaced by its newer per-module record where one exists."""
    RECORDS.mkdir(parents=True, exist_ok=True)
    for m, r in results["modules"].items():
        f = RECORDS / f"{_slug(m)}.json"
        if not f.exists():
            f.write_text(json.dumps(r))
    for f in RECORDS.glob("*.json"):
        r = json.loads(f.read_text())
        results["modules"][r["module"]] = r
    return results


def _write(results: dict) -> dict:
    results = _merge_records({"modules": {**_load()["modules"], **results["modules"]}})
    table = _explanations()
    mods = [summarize(results["modules"][m], table) for m in MODULES if m in results["modules"]]
    results["overall"] = _overall(mods)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    (OUT / "RESULTS.md").write_text(render(results))
    return results["overall"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", nargs="*", default=list(MODULES),
                    help="repository paths, e.g. models/recovery.py (default: every core module)")
    ap.add_argument("--jobs", type=int, default=2, help="mutants tested in parallel")
    ap.add_argument("--resume", action="store_true",
                    help="keep each module's mutants and results from its last run (build/mutation/) and test "
                         "again only the survivors and the mutants of changed functions: after strengthening tests")
    ap.add_argument("--mutants", nargs="+", metavar="MUTANT", default=None,
                    help="resume and test again only these recorded mutants (e.g. the survivors a new test "
                         "targets), with the current tests; their modules are taken from the names")
    ap.add_argument("--record-only", action="store_true",
                    help="record the given modules from their staged state under build/mutation/ without running "
                         "mutmut (after a stopped run: the mutants it did not reach count as not checked)")
    ap.add_argument("--render", action="store_true",
                    help="only re-apply equivalent.json to the recorded results and rewrite RESULTS.md")
    ap.add_argument("--explain", nargs=2, metavar=("MUTANT", "REASON"),
                    help="record why a recorded survivor is equivalent (appended to equivalent.json), then render")
    ap.add_argument("--accepted", action="store_true",
                    help="with --explain: the survivor is a real difference the suite does not reach (counts "
                         "against the score), not an equivalent mutant")
    args = ap.parse_args(argv)
    results = _merge_records(_load())
    if args.explain:
        name, reason = args.explain
        hit = [(r["module"], u) for r in results["modules"].values() for u in r["unkilled"] if u["mutant"] == name]
        if not hit:
            print(f"error: no recorded survivor {name}", file=sys.stderr)
            return 2
        module, u = hit[0]
        table = _explanations()
        table = [e for e in table if not (e["module"] == module and e["function"] == u["function"]
                                          and e["lines"] == u["lines"])]
        table.append({"module": module, "function": u["function"], "lines": u["lines"], "reason": reason,
                      "kind": "accepted" if args.accepted else "equivalent"})
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "equivalent.json").write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n")
        args.render = True
    if args.render:
        o = _write(results)
        print(f"overall {o['score']:.1%} over {o['modules_run']} modules; {o['unexplained']} unexplained survivors")
        return 0
    mods = [m for spec in args.modules for m in spec.replace(",", " ").split()]
    only: dict[str, frozenset[str]] = {}
    if args.mutants:
        by_slug = {f"convrate.{_slug(m)}": m for m in MODULES}
        for name in args.mutants:
            m = by_slug.get(name.rpartition(".")[0])
            if m is None or not _paths(m)[2].exists():
                print(f"error: {name} is not a mutant of a core module with a staged run under {STAGE}", file=sys.stderr)
                return 2
            only[m] = only.get(m, frozenset()) | {name}
        mods, args.resume = list(only), True
    unknown = [m for m in mods if m not in TESTS]
    if unknown:
        print(f"error: not a core module: {', '.join(unknown)}; choose from {', '.join(MODULES)}", file=sys.stderr)
        return 2
    for m in mods:
        print(f"mutation: {m} ...", flush=True)
        if args.record_only:
            if not _paths(m)[2].exists():
                print(f"error: {m} has no staged mutmut state under {STAGE}", file=sys.stderr)
                return 2
            before = _load_record(m) or {}
            rec = record(m, before.get("seconds"), before.get("resumed", 0))  # None: the stopped run's time is unknown
        else:
            rec = run_module(m, args.jobs, args.resume, only.get(m))
        RECORDS.mkdir(parents=True, exist_ok=True)
        (RECORDS / f"{_slug(m)}.json").write_text(json.dumps(rec))
        results["modules"][m] = rec
        o = _write(results)
        r = summarize(results["modules"][m], _explanations())
        print(f"  {r['mutants']} mutants, score {r['score']:.1%}, {r['unexplained']} unexplained survivors "
              f"({r['seconds'] or '-'} s)", flush=True)
    print(f"overall {o['score']:.1%} over {o['modules_run']} modules; results in {OUT / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
