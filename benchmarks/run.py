#!/usr/bin/env python3
"""The benchmark command: convrate side by side with the tools users would otherwise use.

    python benchmarks/run.py [--quick] [--out DIR] [--seed S] [--threads T]
                             [--suite | --no-suite] [--only eigs,hvp,...] [--setup-only] [--render]

1. Environment: ``benchmarks/.venv`` (made with ``python3 -m venv`` when missing), with
   ``torch==2.13.0`` installed first and then ``pyhessian==0.1`` and this project
   (``-e .[test,minilm]``) pinned by ``constraints.txt``; reinstalled when pyproject.toml,
   constraints.txt or the anchor pins change. This script re-executes itself there.
2. Benchmarks, each a module runnable alone (``benchmarks/.venv/bin/python
   benchmarks/bench_<name>.py --help``), run one after the other in fresh processes:
   ``eigs`` (top/bottom Hessian eigenvalue: Lanczos vs PyHessian vs power iteration),
   ``hvp`` (one HVP vs one gradient: time, peak memory, FLOPs), ``steps`` (``steps_to`` vs
   naive iteration), ``enclosures`` (certified eigenvalues vs mpmath), ``suite`` (CI tests
   and ``convrate report --quick``; on by default in a full run, off with ``--quick``).
3. Output: ``DIR/benchmarks.md`` and ``DIR/benchmarks.json`` (default DIR:
   benchmarks/results; schema in benchmarks/README.md). Every target is a ratio measured in
   this one run; a missed target says by how much and why. ``--render`` rewrites the
   Markdown from an existing JSON (no measurement). Exit status 1 when a benchmark failed
   or a cross-check disagreed, 2 on bad options.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = HERE / ".venv"
VENV_PY = VENV / "bin" / "python"
STAMP = VENV / ".convrate-bench-installed"
TORCH_PIN = "torch==2.13.0"
ANCHORS = ("pyhessian==0.1",)
STAGES = ("eigs", "hvp", "steps", "enclosures", "scale", "suite")
SCHEMA = "convrate-benchmarks/1"


# ---------------------------------------------------------------- environment (stdlib only)
def _env_key() -> str:
    h = hashlib.sha256()
    for f in ("pyproject.toml", "constraints.txt"):
        h.update((REPO / f).read_bytes())
    h.update(" ".join((TORCH_PIN, *ANCHORS, sys.version.split()[0])).encode())
    return h.hexdigest()


def _pip(args: list[str], log: Path) -> None:
    with log.open("a") as fh:
        fh.write(f"\n$ pip {' '.join(args)}\n")
        fh.flush()
        p = subprocess.run([str(VENV_PY), "-m", "pip", *args], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        sys.exit(f"error: pip {' '.join(args)} failed (exit {p.returncode}); see {log}:\n" + "\n".join(tail))


def ensure_env() -> None:
    """Create / update benchmarks/.venv (torch first, then everything pinned to it)."""
    key = _env_key()
    if VENV_PY.exists() and STAMP.exists() and STAMP.read_text().strip() == key:
        return
    if not VENV_PY.exists():
        print(f"creating {VENV.relative_to(REPO)} ...", file=sys.stderr, flush=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(VENV)], check=True)
    log = VENV / "install.log"
    print(f"installing {TORCH_PIN}, {', '.join(ANCHORS)} and convrate into {VENV.relative_to(REPO)} "
          f"(log: {log.relative_to(REPO)}) ...", file=sys.stderr, flush=True)
    _pip(["install", "-q", TORCH_PIN], log)
    _pip(["install", "-q", "-c", "constraints.txt", *ANCHORS, "-e", ".[test,minilm]"], log)
    STAMP.write_text(key + "\n")


def in_env() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


# ---------------------------------------------------------------- running the stages
def stage_command(stage: str, args: argparse.Namespace, out_json: Path) -> list[str]:
    cmd = [sys.executable, str(HERE / f"bench_{stage}.py"), "--json", str(out_json), "--seed", str(args.seed),
           "--threads", str(args.threads)]
    if args.quick:
        cmd.append("--quick")
    if stage == "scale" and args.scale_parts:
        cmd += ["--parts", args.scale_parts]
    return cmd


def run_stages(stages: list[str], args: argparse.Namespace) -> dict[str, dict]:
    from rich.console import Console

    console = Console(stderr=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="convrate-bench-") as tmp:
        for i, stage in enumerate(stages, 1):
            console.rule(f"[bold]{i}/{len(stages)} {stage}")
            part = Path(tmp) / f"{stage}.json"
            t0 = time.perf_counter()
            p = subprocess.run(stage_command(stage, args, part), cwd=REPO, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            if part.exists():
                results[stage] = json.loads(part.read_text())
                results[stage]["stage_seconds"] = wall
                results[stage]["exit_status"] = p.returncode
            else:
                results[stage] = {"benchmark": stage, "error": f"exited with status {p.returncode} and no result",
                                  "exit_status": p.returncode, "stage_seconds": wall}
            console.print(f"{stage}: {wall:.1f} s, exit {p.returncode}")
    return results


# ---------------------------------------------------------------- the document
SECTION_TITLES = {
    "eigs": "1. Top and bottom Hessian eigenvalue",
    "hvp": "2. Cost of one Hessian-vector product",
    "steps": "3a. Exact step counting: `steps_to` vs naive iteration",
    "enclosures": "3b. Certified eigenvalue enclosures vs mpmath",
    "scale": "5. Past one process: O(n) Lanczos memory, `hessian --nproc`, the MiniLM audit",
    "suite": "4. Suite cost",
}
SECTION_NOTES = {
    "eigs": ("Same module (a deep copy per tool), batch, loss, parameters and float64 everywhere; the same start "
             "vector (PyHessian's seeded draw, reproduced and checked); products counted where they happen; wall "
             "times exclude the instrumentation. Cells: HVPs / seconds after which the estimate stays within the "
             "tolerance (top: relative to lambda_max; bottom: relative to ||H||_2). PyHessian and convrate's default HVP "
             "('reuse', used by the Lanczos and the power-iteration rows) both keep the gradient graph of the "
             "fixed theta and do one backward per product (the 's per HVP' column; Lanczos' includes its "
             "reorthogonalization)."),
    "hvp": ("Seconds: minimum over interleaved rounds after a warm-up. 'from scratch' = forward, gradient and "
            "product for 'double_backward' and 'func'; 'reuse' (convrate's default) = one more backward through the "
            "gradient graph kept for this theta (the first product builds it: its own row); 'graph reused' = "
            "PyHessian's product on its retained graph (amortized cost inside an eigensolver run)."),
    "steps": "GD at eta* = 2/(1 + kappa) to q_t <= tol q_0; closed form: best of 3; iteration: one run.",
    "enclosures": ("Random symmetric rational matrices; seconds: minimum of 3 interleaved rounds; 'consistent': "
                   "convrate's and flint's rigorous intervals intersect."),
    "scale": ("Each measurement in a fresh process; peak memory = resident-set high-water mark above the level at "
              "the start of the call (curvature.MemoryMeter); wall times on a shared machine are noisy, ratios are "
              "taken within the run. The report's serial vs parallel wall time: `python benchmarks/run.py --only "
              "scale --scale-parts report` (builds the full report twice)."),
    "suite": "Run once each from the repository root with this environment's interpreter.",
}


def _module(stage: str):
    import importlib

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module(f"bench_{stage}")


def collect_targets(results: dict[str, dict]) -> list[dict]:
    out = []
    for stage, res in results.items():
        mod = _module(stage)
        if "error" not in res and hasattr(mod, "targets"):
            out += mod.targets(res)
    return out


def document(results: dict[str, dict], targets: list[dict], meta: dict, command: str) -> str:
    def cell(x: object) -> str:
        return str(x).replace("|", "/")

    lines = ["# convrate benchmarks", "",
             f"Generated by `{command}` on {meta['date']}: {meta['machine']}, {meta['cpus']} CPUs, torch "
             f"{meta['torch']} with {meta['torch_threads']} thread(s), commit {meta['commit']}. All numbers come from "
             "this one run; wall times on a shared machine are noisy, ratios are taken within the run.", "",
             "## Targets", "", "| target | instance | statement | measured | threshold | met | why (when missed) |",
             "|---|---|---|---|---|:---:|---|"]
    for t in targets:
        lines.append(f"| {t['id']} | {cell(t['instance'])} | {cell(t['statement'])} | {cell(t['measured'])} | "
                     f"{cell(t['threshold'])} | {'yes' if t['met'] else '**no**'} | {cell(t['why'])} |")
    for stage, res in results.items():
        lines += ["", f"## {SECTION_TITLES[stage]}", "", SECTION_NOTES[stage], ""]
        if "error" in res:
            lines.append(f"**Not measured**: {res['error']}.")
            continue
        lines.append(_module(stage).markdown(res))
        lines.append(f"\n({stage}: {res['stage_seconds']:.0f} s)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller instances and budgets; no suite unless --suite")
    ap.add_argument("--out", default=str(HERE / "results"), help="output directory (default benchmarks/results)")
    ap.add_argument("--seed", type=int, default=0, help="seed of every benchmark (default 0)")
    ap.add_argument("--threads", type=int, default=1, help="torch / BLAS threads in every benchmark (default 1)")
    ap.add_argument("--json", metavar="FILE", default=None, help="also write the JSON here ('-' = stdout)")
    suite = ap.add_mutually_exclusive_group()
    suite.add_argument("--suite", dest="suite", action="store_true", default=None, help="time the CI tests and report")
    suite.add_argument("--no-suite", dest="suite", action="store_false", help="skip the suite timing")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--scale-parts", default=None, help="scale stage: comma-separated parts (default "
                    "lanczos,hessian,audit; 'report' builds the full report serially and in parallel)")
    ap.add_argument("--setup-only", action="store_true", help="create benchmarks/.venv and exit")
    ap.add_argument("--render", action="store_true",
                    help="rewrite OUT/benchmarks.md from OUT/benchmarks.json (no measurement)")
    args = ap.parse_args(argv)
    stages = [s for s in STAGES if args.only is None or s in args.only.split(",")]
    unknown = set(args.only.split(",")) - set(STAGES) if args.only else set()
    if unknown or not stages:
        print(f"error: unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2
    if args.threads < 1:
        print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    if "suite" in stages and not (args.suite if args.suite is not None else not args.quick):
        stages.remove("suite")
    out = Path(args.out).resolve()
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} exists and is not a directory", file=sys.stderr)
        return 2
    if not in_env():
        ensure_env()
        if args.setup_only:
            return 0
        os.execv(str(VENV_PY), [str(VENV_PY), str(Path(__file__).resolve()), *(argv if argv is not None else sys.argv[1:])])
    if args.setup_only:
        return 0
    from bench_common import meta as run_meta, write_json  # noqa: E402 (benchmarks/ is sys.path[0])

    if args.render:
        doc = json.loads((out / "benchmarks.json").read_text())
        (out / "benchmarks.md").write_text(document(doc["results"], doc["targets"], doc["meta"], doc["command"]))
        print(f"rewrote {out / 'benchmarks.md'} from {out / 'benchmarks.json'}", file=sys.stderr)
        return 0

    results = run_stages(stages, args)
    targets = collect_targets(results)
    command = "python benchmarks/run.py" + (" --quick" if args.quick else "") + \
        (" --suite" if args.quick and "suite" in stages else "")
    meta = run_meta(quick=args.quick, seed=args.seed, threads=args.threads, stages=stages)
    meta["torch_threads"] = args.threads
    doc = {"schema": SCHEMA, "meta": meta, "command": command, "targets": targets, "results": results}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "benchmarks.json", doc)
    (out / "benchmarks.md").write_text(document(results, targets, meta, command))
    if args.json:
        write_json(args.json, doc)
    print(f"wrote {out / 'benchmarks.md'} and {out / 'benchmarks.json'}", file=sys.stderr)
    failed = any(r.get("exit_status", 0) != 0 or r.get("failed") for r in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
