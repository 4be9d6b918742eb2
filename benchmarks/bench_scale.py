#!/usr/bin/env python
"""Benchmark: curvature and the main commands past one process, on MiniLM and the report.

Parts (``--parts``, default ``lanczos,hessian,audit``; ``report`` is opt-in: it builds the
full report twice):

- ``lanczos``: peak memory of Lanczos on MiniLM's attention parameters (all six layers, 3.5M
  parameters; ``--examples`` paragraphs of the text task, float64): the full-basis solver
  (``curvature.lanczos``, every basis vector kept) against the O(n) one
  (``curvature.lanczos_run`` basis "none"), the same number of steps, each in a fresh process.
  Memory: ``curvature.MemoryMeter`` (resident-set high-water mark of the call above the level
  at its start; and the Lanczos vectors held by design); time: wall and CPU seconds.
- ``hessian``: ``convrate hessian minilm`` at ``--nproc 1`` and ``--nproc 2`` (one run each,
  the same options): wall seconds of the whole command, CPU seconds summed over ranks, and
  the ratio; the eigenvalues must agree.
- ``audit``: the MiniLM default audit (``convrate audit`` of a SpecDef release against MiniLM,
  profile "default"). Its pieces are measured -- one full-batch attack step (micro-batched as
  the profile does) and one Hessian-vector product, each with its peak memory. The work every
  run does whatever the losses (``AuditProfile.minimum_work``: one step per pilot trial, the
  determinism, first-Lanczos and Hutchinson products) gives a lower bound of its CPU time, an
  estimate of its work (no divergence, every Lanczos step) an estimate; ``--full-audit`` runs
  the whole audit instead (hours on 2 CPU cores) and reports its wall time and peak memory
  (``ru_maxrss`` of the child).
- ``report``: ``convrate report --jobs 1`` and ``--jobs N`` (full profile unless ``--quick``)
  into temporary directories (``--report-out DIR`` keeps them): wall and CPU seconds of each and whether results.json agree
  except timings (``reports.builder.TIMING_KEYS``).

Usage: python benchmarks/bench_scale.py [--quick] [--parts lanczos,hessian,audit,report]
       [--examples N] [--steps K] [--jobs N] [--report-out DIR] [--full-audit] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench_common import REPO, fmt, main, progress

from convrate.models.attacks.search import PAUSE_BYTES

PARTS = ("lanczos", "hessian", "audit", "report")
MEMORY_LIMIT = 3 * 2**30  # the MiniLM audit must fit in 3 GB
AUDIT_MEMORY_KINDS = {"full": "the whole audit",
                      "shaped": "an audit of the default shape, tiny counts, + the searches' pause bound",
                      "pieces": "one step and one product, a lower bound",
                      "stopped": "an audit of the default shape stopped part-way, a lower bound"}


# ---------------------------------------------------------------- helpers
def _child(code: str, *args: str, timeout: float | None = None) -> dict[str, Any]:
    """Run ``code`` (Python, prints one JSON line last) in a fresh interpreter; its JSON, wall
    and CPU seconds (children's rusage) and peak RSS (ru_maxrss of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        tail = " ".join((p.stderr or p.stdout).strip().splitlines()[-3:])
        return {"error": f"exit {p.returncode}: {tail[-400:]}", "wall_s": wall}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out.update(wall_s=wall, cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
               child_maxrss=after.ru_maxrss * 1024)
    return out


_PROBLEM = """
import json, sys, time, torch
from convrate.models import zoo
from convrate.models.experiments import encoder_wrap
from convrate.models.families import discover_symmetries
from convrate.models.tasks import minilm_tokenizer, select, text_task
from convrate.models.curvature import MemoryMeter, Objective
torch.set_num_threads(int(sys.argv[1]))
examples, steps, what = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
task = text_task(minilm_tokenizer(), max_length=32, seed=0)
m = zoo.minilm()
net = encoder_wrap(task, 0)(m.module)
names = ["encoder." + n for n in dict.fromkeys(n for s in discover_symmetries(m) for n in s.params)]
X, y = select(task.X_train, torch.arange(examples)), task.y_train[:examples]
"""

_LANCZOS = _PROBLEM + """
from convrate.models.curvature import lanczos, lanczos_run
obj = Objective(net, X, y, loss="cross_entropy", params=names, device="cpu")
t0, c0 = time.perf_counter(), time.process_time()
with MemoryMeter() as mm:
    if what == "full":
        theta, Y, k = lanczos(obj.hvp, obj.n, steps, seed=0)
        mm.count((k + 2) * obj.n * 8)
        top = float(theta[-1])
    else:
        run = lanczos_run(obj.hvp, obj.n, steps, top=1, bottom=1, basis="none", seed=0, meter=mm)
        k, top = run.steps, run.top[0].value
print(json.dumps({"n": obj.n, "steps": k, "top": top, "products": obj.matvecs, "memory": mm.report(),
                  "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}))
"""

_AUDIT_PIECES = _PROBLEM + """
from convrate.models.attacks import Attack
from convrate.models.audit import PROFILES
from convrate.models.curvature.distributed import BatchReduction
prof = PROFILES["default"]
if what == "step":
    atk = Attack("sgd", 1e-3, 1, None, seed=0, device="cpu", reduction=BatchReduction(micro_batch=prof.micro_batch))
    t0, c0 = time.perf_counter(), time.process_time()
    with MemoryMeter() as mm:
        tr = atk.run(net, task)
    # two loss evaluations with their backward, one optimizer step
    print(json.dumps({"per_step_seconds": (time.perf_counter() - t0) / 2, "per_step_cpu": (time.process_time() - c0) / 2,
                      "memory": mm.report(), "examples": task.n_train}))
else:
    obj = Objective(net, task.X_train, task.y_train, loss="cross_entropy", params=names, device="cpu",
                    micro_batch=prof.micro_batch, hvp_method="double_backward")
    v = torch.randn(obj.n, dtype=torch.float64)
    t0, c0 = time.perf_counter(), time.process_time()
    with MemoryMeter() as mm:
        obj.hvp(v)
    print(json.dumps({"per_hvp_seconds": time.perf_counter() - t0, "per_hvp_cpu": time.process_time() - c0,
                      "memory": mm.report(), "n": obj.n}))
"""


# ---------------------------------------------------------------- parts
def part_lanczos(args: argparse.Namespace) -> dict[str, Any]:
    rows = {}
    for what in ("none", "full"):
        rows[what] = _child(_LANCZOS, str(args.threads), str(args.examples), str(args.steps), what)
    ok = all("error" not in r for r in rows.values())
    out = {"examples": args.examples, "steps": args.steps, "rows": rows}
    if ok:
        out["memory_ratio"] = rows["full"]["memory"]["added_at_peak"] / max(1, rows["none"]["memory"]["added_at_peak"])
        out["top_relative_difference"] = abs(rows["full"]["top"] - rows["none"]["top"]) / abs(rows["full"]["top"])
    return out


def part_hessian(args: argparse.Namespace) -> dict[str, Any]:
    base = [sys.executable, "-m", "convrate", "hessian", "minilm", "--params", "attention", "--examples",
            str(args.examples), "--max-steps", str(args.steps), "--top", "1", "--bottom", "1", "--json"]
    rows = {}
    for nproc in (1, 2):
        t0 = time.perf_counter()
        p = subprocess.run(base + ["--nproc", str(nproc)], cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            rows[nproc] = {"error": " ".join(p.stderr.strip().splitlines()[-2:])[-400:], "wall_s": wall}
            continue
        doc = json.loads(p.stdout)
        rows[nproc] = {"wall_s": wall, "compute_wall_s": doc["compute_wall_seconds"], "cpu_s": doc["cpu_seconds"],
                       "top": doc["top"][0]["value"], "bottom": doc["bottom"][0]["value"], "steps": doc["lanczos"]["steps"],
                       "peak_rss_max": doc["memory"]["peak_rss_max"], "n": doc["parameters"]["count"]}
    out: dict[str, Any] = {"examples": args.examples, "steps": args.steps, "rows": {str(k): v for k, v in rows.items()}}
    if all("error" not in r for r in rows.values()):
        out["wall_ratio"] = rows[2]["wall_s"] / rows[1]["wall_s"]
        out["compute_ratio"] = rows[2]["compute_wall_s"] / rows[1]["compute_wall_s"]
        out["agree"] = abs(rows[1]["top"] - rows[2]["top"]) <= 1e-8 * abs(rows[1]["top"])
    return out


def _audit_counts() -> dict[str, Any]:
    """The default MiniLM audit's work in full-batch steps and Hessian-vector products:
    ``minimum`` (``AuditProfile.minimum_work``: done whatever the losses, a lower bound) and the
    estimate (no trial diverges, every grid lr of the three searched variants runs the first
    halving round and stops there, every Lanczos step runs in both passes: not a bound either
    way, early stops make it smaller and longer trials larger). Steps of every attacker are
    counted alike (a second-order step costs more than a gradient)."""
    from convrate.models.attacks.search import halving_budgets
    from convrate.models.audit import PROFILES

    prof = PROFILES["default"]
    grids = {o: prof.grid(o, "hf") for o in prof.optimizers_for("hf")}
    variants = 4  # reference, claimed, R2, R1 (class fplr)
    first = halving_budgets(prof.budget)[0]
    least = prof.minimum_work("hf")
    # per model: determinism check 2, Lanczos 2 passes, Rayleigh-Ritz + residuals 4, Hutchinson
    hvps = 2 * (2 + 2 * prof.lanczos_steps - 1 + 4 + prof.trace_samples)
    return {"minimum": {"pilot_steps": least["pilot_steps"], "hvps": least["hvps"]},
            "estimate": {"pilot_steps": least["pilot_steps_without_divergence"],
                         # the baseline's search reads the pilot
                         "search_steps": sum(len(g) for g in grids.values()) * (variants - 1) * first,
                         "hvps": hvps},
            "budget": prof.budget, "micro_batch": prof.micro_batch, "attackers": list(grids)}


def _audit_seconds(counts: dict[str, int], step: dict[str, Any], hvp: dict[str, Any]) -> float:
    """CPU seconds of ``counts`` at the measured cost of one step and one product."""
    steps = counts["pilot_steps"] + counts.get("search_steps", 0)
    return steps * step["per_step_cpu"] + counts["hvps"] * hvp["per_hvp_cpu"]


def part_audit(args: argparse.Namespace) -> dict[str, Any]:
    counts = _audit_counts()
    out: dict[str, Any] = {"counts": counts}
    if args.full_audit:
        out["full"] = _full_audit()
        return out
    step = _child(_AUDIT_PIECES, str(args.threads), "1", "0", "step")
    hvp = _child(_AUDIT_PIECES, str(args.threads), "1", "0", "hvp")
    out.update(step=step, hvp=hvp)
    if args.audit_memory:  # after the pieces: it may be long and be stopped part-way
        out["shaped"] = _shaped_audit(args.audit_memory_limit)
    if "error" not in step and "error" not in hvp:
        for kind in ("minimum", "estimate"):
            cpu = _audit_seconds(counts[kind], step, hvp)
            out[kind] = {"cpu_seconds": cpu, "wall_seconds_2_cores": cpu / 2}
        out["peak_rss_pieces"] = max(step["memory"]["peak_rss"], hvp["memory"]["peak_rss"])
    return out


#: child-code prefix: a SpecDef K = 100 release of MiniLM in the temporary folder ``tmp`` (tmp/rel)
_MINILM_RELEASE = """
import json, resource, signal, subprocess, sys, tempfile, time
from pathlib import Path
tmp = Path(tempfile.mkdtemp(prefix="convrate-bench-audit-"))
subprocess.run([sys.executable, "-m", "convrate", "defend", "minilm", "-K", "100", "--out", str(tmp / "rel"),
                "--record", str(tmp / "rec")], check=True, capture_output=True)
"""


def _full_audit() -> dict[str, Any]:
    code = _MINILM_RELEASE + """
from convrate.models.tasks import minilm_dir
t0 = time.perf_counter()
p = subprocess.run([sys.executable, "-m", "convrate", "audit", str(tmp / "rel"), "--reference", str(minilm_dir()),
                    "--out", str(tmp / "audit")], capture_output=True, text=True)
print(json.dumps({"returncode": p.returncode, "audit_wall_s": time.perf_counter() - t0,
                  "peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
                  "work": json.loads((tmp / "audit" / "audit.json").read_text()).get("work") if p.returncode in (0, 1) else None}))
"""
    return _child(code)


_SHAPED_AUDIT = _MINILM_RELEASE + """
limit = int(sys.argv[1])
from convrate.models.audit import PROFILES, audit, load_for_audit, shape_of
from convrate.models.tasks import minilm_dir
shape = shape_of(PROFILES["default"])
claimed, ref = load_for_audit(tmp / "rel", shape), load_for_audit(minilm_dir(), shape)
stage = {}
class Stop(Exception):
    pass
def stop(*_):
    raise Stop
if limit:
    signal.signal(signal.SIGALRM, stop)
    signal.alarm(limit)
t0 = time.perf_counter()
try:
    res = audit(claimed, ref, profile=shape, device="cpu", progress=lambda label, i, n: stage.update(label=label, done=i, of=n))
    out = {"audit_wall_s": time.perf_counter() - t0, "class": res["class"], "work": res["work"],
           "attackers": list(res["attacks"]), "lanczos_basis": res["work"]["curvature_basis"]}
except Stop:
    out = {"stopped_after_s": time.perf_counter() - t0, "stage": stage}
out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(out))
"""


def _shaped_audit(limit: int) -> dict[str, Any]:
    """Peak memory of a MiniLM audit of the default profile's shape (``audit.shape_of``: the
    same model, task, micro-batch, attackers and O(n) Lanczos; one knob value per attacker,
    two steps, eight Lanczos steps). Its peak plus ``PAUSE_BYTES`` (the runs the default's
    halving rounds may keep paused) bounds the default audit's: the O(n) Lanczos holds a fixed
    number of vectors (``test_no_basis_memory_does_not_grow_with_steps``), an optimizer's state
    has a fixed size, and a trajectory keeps only its losses. ``limit``
    seconds (0: none) stop it where it is: the peak so far and the stage reached."""
    return _child(_SHAPED_AUDIT, str(limit))


def part_report(args: argparse.Namespace) -> dict[str, Any]:
    from convrate.reports.builder import TIMING_KEYS

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in TIMING_KEYS}
        return [strip(v) for v in x] if isinstance(x, list) else x

    rows, docs = {}, {}
    with tempfile.TemporaryDirectory(prefix="convrate-bench-report-") as scratch:
        tmp = args.report_out or scratch
        for jobs in (1, args.jobs):
            out = os.path.join(tmp, f"jobs{jobs}")
            cmd = [sys.executable, "-m", "convrate", "report", "--out", out, "--jobs", str(jobs)] + \
                (["--quick"] if args.quick else [])
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            rows[str(jobs)] = {"wall_s": time.perf_counter() - t0, "returncode": p.returncode,
                               "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)}
            if p.returncode in (0, 1):
                docs[jobs] = json.loads(open(os.path.join(out, "results.json")).read())
                rows[str(jobs)]["section_seconds"] = docs[jobs]["Provenance"]["section_seconds"]
    out = {"profile": "quick" if args.quick else "full", "jobs": args.jobs, "rows": rows}
    if len(docs) == 2:
        out["identical_except_timings"] = strip(docs[1]) == strip(docs[args.jobs])
        out["speedup"] = rows["1"]["wall_s"] / rows[str(args.jobs)]["wall_s"]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    parts = args.parts.split(",")
    unknown = set(parts) - set(PARTS)
    if unknown:
        from bench_common import BenchmarkError

        raise BenchmarkError(f"unknown parts {sorted(unknown)} (choose from {', '.join(PARTS)})")
    if args.examples is None:
        args.examples = 8 if args.quick else 16
    if args.steps is None:
        args.steps = 20 if args.quick else 60
    res: dict[str, Any] = {"benchmark": "scale", "quick": args.quick, "seed": args.seed, "threads": args.threads}
    fns = {"lanczos": part_lanczos, "hessian": part_hessian, "audit": part_audit, "report": part_report}
    with progress() as prog:
        task = prog.add_task("scale", total=len(parts))
        for p in parts:
            prog.update(task, description=f"scale: {p}")
            res[p] = fns[p](args)
            prog.advance(task)
    res["failed"] = any("error" in str(res[p].get("rows", {})) for p in parts)
    return res


# ---------------------------------------------------------------- document
def markdown(res: dict[str, Any]) -> str:
    lines = []
    if "lanczos" in res:
        r = res["lanczos"]
        lines += [f"Lanczos on MiniLM's attention parameters ({r['examples']} paragraphs, {r['steps']} steps, float64):",
                  "", "| solver | parameters | steps | products | peak MiB above start | vectors MiB (by design) | "
                  "seconds | CPU s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, row in r["rows"].items():
            if "error" in row:
                lines.append(f"| {name} | error: {row['error']} |||||||")
                continue
            m = row["memory"]
            lines.append(f"| {'full basis (old)' if name == 'full' else 'O(n), no basis (new)'} | {row['n']} | "
                         f"{row['steps']} | {row['products']} | {fmt(m['added_at_peak'] / 2**20, 4)} | "
                         f"{fmt(m['counted_vectors'] / 2**20, 4)} | {fmt(row['seconds'], 3)} | {fmt(row['cpu_seconds'], 3)} |")
        if "memory_ratio" in r:
            lines.append(f"\nPeak memory old / new: {fmt(r['memory_ratio'], 3)}; top Ritz values differ by "
                         f"{fmt(r['top_relative_difference'], 2)} relative.")
    if "hessian" in res:
        r = res["hessian"]
        lines += ["", f"`convrate hessian minilm --params attention --examples {r['examples']} --max-steps {r['steps']}`:",
                  "", "| --nproc | wall s (command) | wall s (curvature) | CPU s (all ranks) | peak MiB per rank | top |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for k, row in r["rows"].items():
            if "error" in row:
                lines.append(f"| {k} | error: {row['error']} |||||")
                continue
            lines.append(f"| {k} | {fmt(row['wall_s'], 3)} | {fmt(row['compute_wall_s'], 3)} | {fmt(row['cpu_s'], 3)} | "
                         f"{fmt(row['peak_rss_max'] / 2**20, 4)} | {row['top']:.10g} |")
        if "wall_ratio" in r:
            lines.append(f"\nWall 2 processes / 1: {fmt(r['wall_ratio'], 3)} (curvature only {fmt(r['compute_ratio'], 3)}); "
                         f"eigenvalues agree: {fmt(r['agree'])}.")
    if "audit" in res:
        r, c = res["audit"], res["audit"]["counts"]
        m, e = c["minimum"], c["estimate"]
        lines += ["", f"MiniLM default audit ({len(c['attackers'])} attackers, micro-batch {c['micro_batch']}, "
                  f"float64 products): every run does at least {m['pilot_steps']} full-batch steps (one per pilot "
                  f"trial) and {m['hvps']} Hessian-vector products; estimate (no trial diverges, each searched grid "
                  f"lr stops after the first halving round, every Lanczos step): {e['pilot_steps']} pilot steps, "
                  f"{e['search_steps']} search steps, {e['hvps']} products."]
        if "shaped" in r:
            sh = r["shaped"]
            lines.append("Audit of the default shape (`audit.shape_of`: one lr per attacker, two steps, 8 Lanczos "
                         "steps, two Hutchinson samples): " + (f"error: {sh['error']}" if "error" in sh else
                         f"stopped after {fmt(sh['stopped_after_s'], 3)} s in stage {sh['stage'].get('label')!r} "
                         f"({sh['stage'].get('done')} of {sh['stage'].get('of')} stages done), peak so far "
                         f"{fmt(sh['peak_rss'] / 2**20, 4)} MiB." if "stopped_after_s" in sh else
                         f"peak {fmt(sh['peak_rss'] / 2**20, 4)} MiB, {fmt(sh['audit_wall_s'], 3)} s, class "
                         f"{sh['class']}, Lanczos basis {', '.join(sh['lanczos_basis'])}, "
                         f"{len(sh['attackers'])} attackers."))
        if "full" in r:
            f = r["full"]
            lines.append(f"Full run: {fmt(f.get('audit_wall_s'), 4)} s wall, peak {fmt((f.get('peak_rss') or 0) / 2**20, 4)} MiB, "
                         f"exit {f.get('returncode')}.")
        elif "minimum" in r:
            lines.append(f"One step {fmt(r['step']['per_step_cpu'], 3)} CPU s (peak {fmt(r['step']['memory']['peak_rss'] / 2**20, 4)} "
                         f"MiB), one HVP {fmt(r['hvp']['per_hvp_cpu'], 3)} CPU s (peak {fmt(r['hvp']['memory']['peak_rss'] / 2**20, 4)} "
                         f"MiB): at least {fmt(r['minimum']['cpu_seconds'] / 60, 3)} CPU minutes, "
                         f">= {fmt(r['minimum']['wall_seconds_2_cores'] / 60, 3)} min on 2 cores; estimate "
                         f"{fmt(r['estimate']['cpu_seconds'] / 3600, 3)} CPU hours, "
                         f"{fmt(r['estimate']['wall_seconds_2_cores'] / 3600, 3)} h on 2 cores.")
    if "report" in res:
        r = res["report"]
        lines += ["", f"`convrate report` ({r['profile']} profile): serial vs {r['jobs']} worker processes:", "",
                  "| --jobs | wall s | CPU s | exit |", "|---:|---:|---:|---:|"]
        for k, row in r["rows"].items():
            lines.append(f"| {k} | {fmt(row['wall_s'], 4)} | {fmt(row['cpu_s'], 4)} | {row['returncode']} |")
        if "speedup" in r:
            lines.append(f"\nSpeed-up {fmt(r['speedup'], 3)}; results.json identical except timings: "
                         f"{fmt(r['identical_except_timings'])}.")
    return "\n".join(lines)


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    lz = res.get("lanczos", {})
    if "memory_ratio" in lz:
        peak = lz["rows"]["none"]["memory"]["peak_rss"]
        out.append({"id": "T-lanczos-memory", "instance": f"MiniLM attention, {lz['steps']} steps",
                    "statement": "O(n) Lanczos holds no basis: its vectors do not grow with the steps",
                    "measured": f"{fmt(lz['memory_ratio'], 3)}x less peak memory than the full basis",
                    "ratio": lz["memory_ratio"], "threshold": "> 1", "met": lz["memory_ratio"] > 1,
                    "why": "" if lz["memory_ratio"] > 1 else f"peak {peak} bytes"})
    au = res.get("audit", {})
    # the shape runs one lr per search: the default's halving rounds may also keep paused runs,
    # at most PAUSE_BYTES of them (attacks.search, by AttackRun.nbytes)
    extra = {"full": 0, "shaped": PAUSE_BYTES}
    whole = [(k, (au.get(k) or {}).get("peak_rss")) for k in ("full", "shaped")
             if "stopped_after_s" not in (au.get(k) or {})]
    whole = [(k, v + extra[k]) for k, v in whole if v]
    # lower bounds of the audit's peak: the pieces', a stopped shaped run's
    partial = [(k, v) for k, v in (("pieces", au.get("peak_rss_pieces")),
                                   ("stopped", (au.get("shaped") or {}).get("peak_rss"))) if v]
    if whole or partial:
        # only a whole audit process decides the goal
        kind, peak = whole[0] if whole else max(partial, key=lambda kv: kv[1])
        met = bool(whole) and peak <= MEMORY_LIMIT
        out.append({"id": "T-audit-memory", "instance": "MiniLM default audit", "statement": "fits in 3 GB",
                    "measured": f"{fmt(peak / 2**30, 3)} GB ({AUDIT_MEMORY_KINDS[kind]})", "ratio": peak / MEMORY_LIMIT,
                    "threshold": "<= 3 GB", "met": met,
                    "why": "" if met else ("a lower bound only: run --audit-memory to the end"
                                           if not whole else "the audit holds more than 3 GB")})
    full = (au.get("full") or {}).get("audit_wall_s")
    wall = full or (au.get("minimum") or {}).get("wall_seconds_2_cores")
    if wall:
        met = bool(full) and wall <= 600  # a lower bound under 10 minutes decides nothing
        measured = f"{fmt(wall / 60, 3)} min" if full else (
            f">= {fmt(wall / 60, 3)} min (its minimum work; estimate "
            f"{fmt(au['estimate']['wall_seconds_2_cores'] / 3600, 3)} h)")
        why = ("" if met else "only a lower bound was measured, under the goal: run --full-audit" if wall <= 600 else
               "420 paragraphs x 32 tokens through the whole model per full-batch step, thousands of steps and "
               "hundreds of float64 HVPs: CPU-bound; a GPU or --nproc across machines is the way")
        out.append({"id": "T-audit-time", "instance": "MiniLM default audit, 2 CPU cores",
                    "statement": "takes at most 10 minutes", "measured": measured, "ratio": wall / 600,
                    "threshold": "<= 10 min", "met": met, "why": why})
    rep = res.get("report", {})
    if "speedup" in rep:
        w = rep["rows"][str(rep["jobs"])]["wall_s"]
        out.append({"id": "T-report-time", "instance": f"convrate report ({rep['profile']}), {rep['jobs']} jobs",
                    "statement": "finishes in at most 20 minutes with the serial run's numbers",
                    "measured": f"{fmt(w / 60, 3)} min, identical {rep['identical_except_timings']}",
                    "ratio": w / 1200, "threshold": "<= 20 min", "met": w <= 1200 and rep["identical_except_timings"],
                    "why": ""})
    return out


def _add(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--parts", default="lanczos,hessian,audit", help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--examples", type=int, default=None, help="paragraphs of the text task (default 16; quick 8)")
    ap.add_argument("--steps", type=int, default=None, help="Lanczos steps (default 60; quick 20)")
    ap.add_argument("--jobs", type=int, default=2, help="report: worker processes of the parallel run")
    ap.add_argument("--report-out", metavar="DIR", default=None,
                    help="report: keep the two builds as DIR/jobs1 and DIR/jobsN (default: a deleted temporary folder)")
    ap.add_argument("--full-audit", action="store_true", help="audit: run the whole default audit (hours)")
    ap.add_argument("--audit-memory", action="store_true",
                    help="audit: also run an audit of the default profile's shape with tiny counts for its peak memory")
    ap.add_argument("--audit-memory-limit", type=int, default=0, metavar="S",
                    help="audit: stop that run after S seconds and report its peak so far (default 0: no limit)")


if __name__ == "__main__":
    sys.exit(main(__doc__.splitlines()[0], run, markdown, _add))
