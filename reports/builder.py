"""Build the bound-checking report: ``convrate report [--quick] [--out DIR]``.

Writes ``report.md``, a self-contained ``report.html`` (figures embedded), ``results.json``
and the PNG figures into the output directory (default ``reports/reference/``). Every
number in the Markdown/HTML is taken from the same Python objects that go to
``results.json``. Records versions, seed, device and wall time.
"""
from __future__ import annotations

import io
import json
import platform
import shutil
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

from convrate.reports.document import Figure, Section, to_html, to_markdown

DEFAULT_OUT = Path(__file__).resolve().parent / "reference"
TITLE = "convrate bound-checking report"

SectionBuilder = Callable[[bool, int], Section]


def png(fig: Any) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
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


def sections() -> list[tuple[str, SectionBuilder]]:
    """The report's sections in order (name, builder(quick, seed) -> Section)."""
    from convrate.reports import sections_exact

    return sections_exact.SECTIONS


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a directory that holds anything but an earlier report's files."""
    from convrate.errors import InvalidInputError

    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise InvalidInputError(f"--out {out_dir} exists and is not a directory")
    foreign = [p.name for p in out_dir.iterdir()
               if not (p.is_file() and (p.suffix == ".png" or p.name in REPORT_FILES))]
    if foreign:
        raise InvalidInputError(f"--out {out_dir} holds files that are not a convrate report "
                                f"({', '.join(sorted(foreign)[:3])}); choose an empty or new directory")


REPORT_FILES = ("report.md", "report.html", "results.json")


def build_report(out_dir: Path | None = None, quick: bool = False, seed: int = 0,
                 progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Build every section and write the report atomically into ``out_dir``.

    Files are first written to a temporary directory beside ``out_dir`` and moved in only
    when every section succeeded, so a failed run never leaves a half-written report.
    """
    out_dir = Path(out_dir) if out_dir is not None else DEFAULT_OUT
    _check_replaceable(out_dir)
    t0 = time.perf_counter()
    built: list[Section] = []
    timings: dict[str, float] = {}
    todo = sections()
    for i, (name, builder) in enumerate(todo):
        if progress is not None:
            progress(name, i, len(todo))
        ts = time.perf_counter()
        built.append(builder(quick, seed))
        timings[name] = round(time.perf_counter() - ts, 2)
    wall = time.perf_counter() - t0
    provenance = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": "quick" if quick else "full",
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
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out_dir.parent))
    try:
        for s in built:
            for kind, b in s.blocks:
                if kind == "figure":
                    (tmp / b.name).write_bytes(b.png)
        (tmp / "report.md").write_text(to_markdown(TITLE, built))
        (tmp / "report.html").write_text(to_html(TITLE, built))
        (tmp / "results.json").write_text(json.dumps(results, indent=2, default=str))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return results


__all__ = ["build_report", "png", "Figure", "Section", "DEFAULT_OUT"]
