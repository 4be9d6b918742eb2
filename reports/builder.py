"""Build the bound-checking report: ``convrate report [--quick] [--out DIR]``.

Writes ``report.md``, a self-contained ``report.html`` (figures embedded), ``results.json``
and the PNG figures into the output directory (default ``reports/reference/`` for the full
profile, ``reports/reference-quick/`` for ``--quick``; both are committed). Every
number in the Markdown/HTML is taken from the same Python objects that go to
``results.json``. Records versions, seed, device and wall time.
"""
from __future__ import annotations

import io
import json
import platform
import time
from datetime import datetime, timezone
from importlib import metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from convrate.reports.document import Figure, Section, to_html, to_markdown
from convrate.reports.outdir import check_out_dir, write_out_dir
from convrate.reports.profiles import ReportProfile, profile

DEFAULT_OUT = Path(__file__).resolve().parent / "reference"
DEFAULT_OUT_QUICK = Path(__file__).resolve().parent / "reference-quick"
TITLE = "convrate bound-checking report"


def default_out(quick: bool) -> Path:
    """Where a profile's report goes when no ``--out`` is given."""
    return DEFAULT_OUT_QUICK if quick else DEFAULT_OUT


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
                                    "sections_precision", "sections_bench", "sections_inserted", "sections_exact")


def sections() -> list[tuple[str, SectionBuilder]]:
    """The report's sections in the order they are built; the statements table comes last
    (it summarizes what the others measured) and is displayed first."""
    import importlib

    return [s for mod in SECTION_MODULES for s in importlib.import_module(f"convrate.reports.{mod}").SECTIONS]


REPORT_FILES = ("report.md", "report.html", "results.json")


def build_report(out_dir: Path | None = None, quick: bool = False, seed: int = 0,
                 progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Build every section and write the report atomically into ``out_dir``.

    Files are first written to a temporary directory beside ``out_dir`` and moved in only
    when every section succeeded, so a failed run never leaves a half-written report.
    """
    out_dir = Path(out_dir) if out_dir is not None else default_out(quick)
    check_out_dir(out_dir, "report", REPORT_FILES)
    t0 = time.perf_counter()
    ctx = Context(quick, seed, profile(quick), progress)
    built: list[Section] = []
    timings: dict[str, float] = {}
    todo = sections()
    for i, (name, builder) in enumerate(todo):
        ctx.step(name, i, len(todo))
        ts = time.perf_counter()
        built.append(builder(ctx))
        timings[name] = round(time.perf_counter() - ts, 2)
    built.insert(0, built.pop())  # the statements table, built last, goes first
    wall = time.perf_counter() - t0
    provenance = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": ctx.profile.name,
        "seed": seed,
        "device": _device(),
        "platform": platform.platform(),
        "wall_seconds": round(wall, 1),
        "section_seconds": timings,
        "versions": _versions(),
    }
    prov = Section("Provenance")
    prov.para(f"Generated {provenance['generated']} with profile {provenance['profile']}, seed {seed}, on "
              f"{provenance['device']} ({provenance['platform']}); wall time {provenance['wall_seconds']} s.")
    prov.table(["package", "version"], sorted(provenance["versions"].items()))
    prov.table(["section", "seconds"], list(timings.items()))
    prov.data = provenance
    built.append(prov)

    results = {s.title: s.data for s in built}
    files: dict[str, bytes | str] = {b.name: b.png for s in built for kind, b in s.blocks if kind == "figure"}
    files["report.md"] = to_markdown(TITLE, built)
    files["report.html"] = to_html(TITLE, built)
    files["results.json"] = json.dumps(results, indent=2, default=str)
    write_out_dir(out_dir, files, "report")
    return results


__all__ = ["build_report", "png", "pyplot", "Context", "Figure", "Section", "DEFAULT_OUT", "DEFAULT_OUT_QUICK",
           "default_out"]
