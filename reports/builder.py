"""Build the bound-checking report: ``convrate report [--quick] [--out DIR]``.

Writes ``report.md``, a self-contained ``report.html`` (figures embedded), ``results.json``
and the PNG figures into the output directory (default ``reports/reference/`` for the full
profile, ``reports/reference-quick/`` for ``--quick``; both are committed). Every
number in the Markdown/HTML is taken from the same Python objects that go to
``results.json``. Records versions, seed, device and wall time.

Sections are built in parallel processes (``jobs``; ``jobs=1`` builds them one after the other
in this process). A section module lists ``SECTIONS = [(name, builder)]`` or
``[(name, builder, requires)]``: ``requires`` names the sections whose ``Context.shared`` /
``Context.measured`` entries it reads (the last section, the statements table, requires every
other). A builder is a function ``Context -> Section`` (one job) or a ``Planned`` (independent
parts run as separate jobs, then assembled here). Every section and every part starts from the
global RNGs seeded with the report's seed, and each worker runs with this process's torch
thread count, so a parallel build gives the same numbers as the serial one. The building
processes keep freed memory for reuse (``runtime.keep_freed_memory``: no page faults on the
tensors allocated every step; the arithmetic is unchanged).
"""
from __future__ import annotations

import io
import json
import os
import pickle
import platform
import random
import time
from datetime import datetime, timezone
from importlib import metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from convrate.reports.document import Figure, Section, to_html, to_markdown
from convrate.reports.outdir import check_out_dir, write_out_dir
from convrate.reports.profiles import ReportProfile, profile

DEFAULT_OUT = Path(__file__).resolve().parent / "reference"
DEFAULT_OUT_QUICK = Path(__file__).resolve().parent / "reference-quick"
TITLE = "convrate bound-checking report"


def default_out(quick: bool, name: str | None = None) -> Path:
    """Where a profile's report goes when no ``--out`` is given: ``reference-quick/`` (committed),
    ``reference/`` (full, committed), ``reference-<name>/`` for another profile (not committed)."""
    if name not in (None, "quick", "full"):
        return DEFAULT_OUT.parent / f"reference-{name}"
    return DEFAULT_OUT_QUICK if (quick or name == "quick") else DEFAULT_OUT


@dataclass
class Context:
    """What every section builder gets: the profile, the seed, a progress callback, and
    ``measured``: statement id -> CheckResult dicts measured on real networks (filled by the
    sections that measure, read by the statements table, which is built last), and ``shared``."""

    quick: bool
    seed: int
    profile: ReportProfile
    progress: Callable[[str, int, int], None] | None = None
    measured: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: objects one section computes and a later one reuses (e.g. the slowdown sweeps)
    shared: dict[str, Any] = field(default_factory=dict)

    def step(self, what: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(what, done, total)

    def record(self, results: Iterable[Any]) -> list[dict[str, Any]]:
        """Add CheckResults (or their dicts) to ``measured``; returns the dicts."""
        out = [r if isinstance(r, dict) else r.to_dict() for r in results]
        for d in out:
            self.measured.setdefault(d["statement"], []).append(d)
        return out


SectionBuilder = Callable[[Context], Section]
#: one job of a planned section: a module-level function and its (picklable) arguments
Part = tuple[Callable[..., Any], tuple]


@dataclass(frozen=True)
class Planned:
    """A section built from independent parts: ``parts(ctx)`` (cheap, in the building
    process) lists the jobs, each a module-level function with picklable arguments whose result
    depends on those arguments only; ``assemble(ctx, results)`` (in the building process) makes
    the Section from their results, in the listed order, and may fill ``ctx.shared`` /
    ``ctx.measured``. Called as a builder, it runs the parts in order (the serial build)."""

    parts: Callable[[Context], list[Part]]
    assemble: Callable[[Context, list[Any]], Section]

    def __call__(self, ctx: Context) -> Section:
        results = []
        for fn, args in self.parts(ctx):
            seed_everything(ctx.seed)
            results.append(fn(*args))
        seed_everything(ctx.seed)
        return self.assemble(ctx, results)


def seed_everything(seed: int) -> None:
    """Seed the global RNGs (Python, NumPy, torch) before each section and part, so that a
    section draws the same numbers whatever ran before it in the same process."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig: Any) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("convrate", "numpy", "scipy", "sympy", "mpmath", "python-flint", "hypothesis", "torch",
                "transformers", "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"cpu: {platform.processor() or platform.machine()}"


#: modules of ``convrate.reports`` whose ``SECTIONS`` make the report, in build order; the
#: statements table (``sections_exact``) comes last: it summarizes what the others measured
SECTION_MODULES: tuple[str, ...] = ("sections_laws", "sections_slowdown", "sections_recovery", "sections_spectra",
                                    "sections_precision", "sections_bench", "sections_inserted",
                                    "sections_llm",
                                    "sections_exact")


def _declared() -> list[tuple[Any, ...]]:
    import importlib

    return [s for mod in SECTION_MODULES for s in importlib.import_module(f"convrate.reports.{mod}").SECTIONS]


def sections() -> list[tuple[str, SectionBuilder]]:
    """The report's sections in the order they are built, (name, builder); the statements
    table comes last (it summarizes what the others measured) and is displayed first."""
    return [(s[0], s[1]) for s in _declared()]


def requirements() -> dict[str, tuple[str, ...]]:
    """name -> the sections it requires, as the modules declare them (third entry of SECTIONS)."""
    return {s[0]: tuple(s[2]) for s in _declared() if len(s) > 2}


REPORT_FILES = ("report.md", "report.html", "results.json")


def default_jobs() -> int:
    """Worker processes of a parallel build: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class _Built:
    section: Section
    measured: dict[str, list[dict[str, Any]]]
    shared: dict[str, Any]
    seconds: float


def _build_one(name: str, build: SectionBuilder, ctx: Context) -> _Built:
    """Run ``build`` on ``ctx`` and return the section with what it added to ctx."""
    before = {k: len(v) for k, v in ctx.measured.items()}
    shared_before = dict(ctx.shared)
    seed_everything(ctx.seed)
    t0 = time.perf_counter()
    sec = build(ctx)
    secs = time.perf_counter() - t0
    measured = {k: v[before.get(k, 0):] for k, v in ctx.measured.items() if len(v) > before.get(k, 0)}
    shared = {k: v for k, v in ctx.shared.items() if k not in shared_before or shared_before[k] is not v}
    return _Built(sec, measured, shared, secs)


def _worker_init(threads: int) -> None:
    import torch

    from convrate.models.runtime import keep_freed_memory

    torch.set_num_threads(threads)
    keep_freed_memory()


def _worker_section(name: str, build: SectionBuilder, quick: bool, seed: int, prof: ReportProfile,
                    shared: dict[str, Any], measured: dict[str, list[dict[str, Any]]]) -> _Built:
    return _build_one(name, build, Context(quick, seed, prof, None, measured, shared))


def _worker_part(fn: Callable[..., Any], args: tuple, seed: int) -> tuple[Any, float]:
    seed_everything(seed)
    t0 = time.perf_counter()
    return fn(*args), time.perf_counter() - t0


def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
        return True
    except Exception:  # noqa: BLE001 - closures, lambdas: built in this process instead
        return False


def _entries(todo: Sequence[tuple[Any, ...]], declared: dict[str, tuple[str, ...]] | None = None
             ) -> list[tuple[str, Any, tuple[str, ...]]]:
    names = [e[0] for e in todo]
    out = []
    for i, e in enumerate(todo):
        req = tuple(e[2]) if len(e) > 2 else (declared or {}).get(e[0], ())
        if i == len(todo) - 1:
            req = tuple(names[:-1])  # the statements table sees every other section
        unknown = set(req) - set(names)
        if unknown:
            raise ValueError(f"section {e[0]!r} requires unknown sections {sorted(unknown)}")
        out.append((e[0], e[1], req))
    return out


def _context_for(quick: bool, seed: int, prof: ReportProfile, progress: Any, req: Sequence[str],
                 order: Sequence[str], built: dict[str, _Built]) -> Context:
    """A Context holding what the required sections added (merged in build order)."""
    ctx = Context(quick, seed, prof, progress)
    for name in order:
        if name in req:
            for k, v in built[name].measured.items():
                ctx.measured.setdefault(k, []).extend(v)
            ctx.shared.update(built[name].shared)
    return ctx


def _build_serial(todo: list[tuple[str, Any, tuple[str, ...]]], ctx: Context) -> dict[str, _Built]:
    out = {}
    for i, (name, build, _) in enumerate(todo):
        ctx.step(name, i, len(todo))
        out[name] = _build_one(name, build, ctx)
    return out


def _build_parallel(todo: list[tuple[str, Any, tuple[str, ...]]], quick: bool, seed: int, prof: ReportProfile,
                    progress: Any, jobs: int) -> dict[str, _Built]:
    """Schedule sections (whole, or their parts) on ``jobs`` spawned worker processes as soon as
    the sections they require are built; assemble planned sections here."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import torch

    order = [n for n, _, _ in todo]
    built: dict[str, _Built] = {}
    started: set[str] = set()
    plans: dict[str, dict[str, Any]] = {}
    running: dict[Any, tuple[str, int]] = {}
    n_jobs_done = 0
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init, initargs=(torch.get_num_threads(),)) as pool:
        while len(built) < len(todo):
            for name, build, req in todo:
                if name in started or not all(r in built for r in req):
                    continue
                started.add(name)
                ctx = _context_for(quick, seed, prof, None, req, order, built)
                if isinstance(build, Planned):
                    seed_everything(seed)
                    parts = build.parts(ctx)
                    plans[name] = {"ctx": ctx, "build": build, "results": [None] * len(parts), "left": len(parts),
                                   "seconds": 0.0}
                    for i, (fn, args) in enumerate(parts):
                        running[pool.submit(_worker_part, fn, args, seed)] = (name, i)
                elif _picklable(build):
                    running[pool.submit(_worker_section, name, build, quick, seed, prof, ctx.shared,
                                        ctx.measured)] = (name, -1)
                else:  # a builder that cannot travel (a closure): built here, in order
                    built[name] = _build_one(name, build, ctx)
            assembled = False
            for name, plan in list(plans.items()):
                if plan["left"] == 0:
                    del plans[name]
                    b = _build_one(name, lambda c, p=plan: p["build"].assemble(c, p["results"]), plan["ctx"])
                    b.seconds += plan["seconds"]
                    built[name] = b
                    assembled = True
            if len(built) == len(todo):
                break
            if assembled:
                continue  # sections waiting for it may start now
            if not running:
                raise RuntimeError("report sections require each other in a cycle")
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                name, i = running.pop(fut)
                res = fut.result()  # a failed section raises here
                n_jobs_done += 1
                if i < 0:
                    built[name] = res
                else:
                    plans[name]["results"][i], secs = res
                    plans[name]["seconds"] += secs
                    plans[name]["left"] -= 1
                if progress is not None:
                    progress(f"{name} ({n_jobs_done} jobs done, {len(running)} running or queued)", len(built),
                             len(todo))
    return built


def build_report(out_dir: Path | None = None, quick: bool = False, seed: int = 0,
                 progress: Callable[[str, int, int], None] | None = None, jobs: int = 1,
                 report_profile: ReportProfile | None = None, only: Sequence[str] | None = None) -> dict[str, Any]:
    """Build every section and write the report atomically into ``out_dir``.

    ``jobs`` worker processes build independent sections and parts in parallel (1: serially in
    this process; the numbers are the same). ``report_profile`` overrides the profile chosen by
    ``quick``; ``only`` builds just these sections (and what they require) -- for tests.
    Files are first written to a temporary directory beside ``out_dir`` and moved in only
    when every section succeeded, so a failed run never leaves a half-written report.
    """
    prof = report_profile if report_profile is not None else profile(quick)
    out_dir = Path(out_dir) if out_dir is not None else default_out(quick, prof.name)
    check_out_dir(out_dir, "report", REPORT_FILES)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        from convrate.errors import InvalidInputError

        raise InvalidInputError(f"jobs must be a positive integer, got {jobs!r}")
    t0, c0 = time.perf_counter(), time.process_time()
    todo = _entries(sections(), requirements())
    if only is not None:
        keep = set(only)
        for name, _, req in reversed(todo):
            if name in keep:
                keep |= set(req)
        todo = [e for e in todo if e[0] in keep]
        todo = _entries([(n, b, r) for n, b, r in todo[:-1]] + [todo[-1]]) if todo else todo
    if jobs == 1:
        from convrate.models.runtime import keep_freed_memory

        keep_freed_memory()  # as in each worker of a parallel build (``_worker_init``)
        built = _build_serial(todo, Context(quick, seed, prof, progress))
    else:
        built = _build_parallel(todo, quick, seed, prof, progress, jobs)
    ordered = [built[n].section for n, _, _ in todo]
    timings = {n: round(built[n].seconds, 2) for n, _, _ in todo}
    ordered.insert(0, ordered.pop())  # the statements table, built last, goes first
    wall = time.perf_counter() - t0
    provenance = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": prof.name,
        "seed": seed,
        "device": _device(),
        "platform": platform.platform(),
        "wall_seconds": round(wall, 1),
        "jobs": jobs,
        "section_seconds": timings,
        "versions": _versions(),
    }
    prov = Section("Provenance")
    prov.para(f"Generated {provenance['generated']} with profile {provenance['profile']}, seed {seed}, on "
              f"{provenance['device']} ({provenance['platform']}); wall time {provenance['wall_seconds']} s "
              f"with {jobs} worker process(es).")
    prov.table(["package", "version"], sorted(provenance["versions"].items()))
    prov.table(["section", "seconds (sum over its jobs)"], list(timings.items()))
    prov.data = provenance
    ordered.append(prov)

    results = {s.title: s.data for s in ordered}
    files: dict[str, bytes | str] = {b.name: b.png for s in ordered for kind, b in s.blocks if kind == "figure"}
    files["report.md"] = to_markdown(TITLE, ordered)
    files["report.html"] = to_html(TITLE, ordered)
    files["results.json"] = json.dumps(results, indent=2, default=str)
    write_out_dir(out_dir, files, "report")
    return results


#: keys of results.json that depend on the run, not on the numbers: timings, the date, the jobs, and
#: what is derived from timings (the second-order attackers' cost ratios of a product to a gradient are
#: measured, so their gradient-equivalents and cost slowdowns vary from run to run, serial or not)
TIMING_KEYS = ("generated", "wall_seconds", "section_seconds", "jobs", "seconds", "search_seconds", "wall_s",
               "wall_to_target_s", "wall_slowdown", "cost_ratios", "grad_equivalents", "cost_slowdown")


def without_timings(x: Any) -> Any:
    """``results.json`` data without the ``TIMING_KEYS`` (what a rebuild may change), recursively."""
    if isinstance(x, dict):
        return {k: without_timings(v) for k, v in x.items() if k not in TIMING_KEYS}
    if isinstance(x, list):
        return [without_timings(v) for v in x]
    return x


__all__ = ["build_report", "png", "pyplot", "Context", "Figure", "Section", "DEFAULT_OUT", "DEFAULT_OUT_QUICK",
           "default_out", "Planned", "Part", "seed_everything", "default_jobs", "TIMING_KEYS", "without_timings"]
