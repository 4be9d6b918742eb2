"""Shared instruments of the benchmarks: timing, peak memory, FLOPs, accuracy hits, CLI.

- ``min_times``: seconds per call, the minimum over interleaved rounds after one warm-up
  call each (the least disturbed by other processes on a shared machine).
- ``peak_memory``: peak resident memory (bytes) a call adds above the resident memory just
  before it: Linux ``VmHWM`` after resetting the high-water mark to the current RSS through
  ``/proc/self/clear_refs`` ("5"), with ``malloc_trim(0)`` first so that memory freed by
  earlier calls does not hide the call's own allocations. This counts every allocation
  (torch's CPU allocator, Python, BLAS) that the call touches.
- ``matmul_flops``: floating-point operations of the matrix products (mm, addmm, bmm, ...)
  in a call, as counted by torch's ``FlopCounterMode``.
- ``first_within``: HVPs (1-based count) after which an estimate stays within a relative
  tolerance of the truth.
Every benchmark module takes ``--quick``, ``--seed``, ``--threads`` and ``--json OUT``
(``-`` = stdout) through ``main``, and prints its Markdown table.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from convrate.errors import ConvrateError

REPO = Path(__file__).resolve().parent.parent
#: the accuracy levels every eigenvalue benchmark reports (relative error)
TOLERANCES = (1e-3, 1e-6)


class BenchmarkError(ConvrateError):
    """A benchmark cannot run as asked (bad option, missing anchor, failed cross-check)."""


# ---------------------------------------------------------------- progress
def progress() -> Any:
    """The project's rich progress bar (``convrate.cli._progress``)."""
    from convrate.cli import _progress

    return _progress()


# ---------------------------------------------------------------- environment
def set_threads(threads: int) -> None:
    """Torch intra-op threads = ``threads``; BLAS pools limited to the same (threadpoolctl)."""
    if threads < 1:
        raise BenchmarkError(f"--threads must be >= 1, got {threads}")
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)


def meta(**extra: Any) -> dict[str, Any]:
    """Machine, versions and settings of this run."""
    import mpmath
    import torch

    def version(mod: str) -> str | None:
        try:
            from importlib.metadata import version as v

            return v(mod)
        except Exception:  # noqa: BLE001 - an anchor that is not installed
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": platform.python_version(), "machine": platform.machine(), "system": platform.system(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "mpmath": mpmath.__version__, "mpmath_backend": mpmath.libmp.BACKEND,
            "python_flint": version("python-flint"), "pyhessian": version("pyhessian"),
            "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **extra}


# ---------------------------------------------------------------- timing and memory
def min_times(fns: Mapping[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Seconds per call of each function: one warm-up call each, then ``rounds`` rounds that
    call every function once (interleaved), the minimum over rounds."""
    if rounds < 1:
        raise BenchmarkError(f"rounds must be >= 1, got {rounds}")
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: min(ts) for k, ts in times.items()}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchmarkError(f"/proc/self/status has no {field}")


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_supported() -> bool:
    """True where ``peak_memory`` can measure (Linux with a writable /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _status_kb("VmHWM")
        return True
    except (OSError, BenchmarkError):
        return False


def peak_memory(fn: Callable[[], Any]) -> int:
    """Bytes of resident memory ``fn()`` adds at its peak above the resident memory before it
    (see module doc). Its return value is dropped before returning."""
    gc.collect()
    _malloc_trim()
    base = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM := current VmRSS
    out = fn()
    peak = _status_kb("VmHWM")
    del out
    return max(0, peak - base) * 1024


def matmul_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of the matrix products (mm, addmm, bmm, convolutions, attention kernels) in
    ``fn()``, 2 m n k per m x k by k x n product, counted at dispatch by
    ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# ---------------------------------------------------------------- accuracy
def relative_errors(estimates: Sequence[float], truth: float, scale: float | None = None) -> list[float]:
    """|estimate - truth| / scale (default scale |truth|)."""
    s = abs(truth) if scale is None else abs(scale)
    if s == 0:
        raise BenchmarkError("relative error with a zero scale")
    return [abs(e - truth) / s for e in estimates]


def first_within(errors: Sequence[float], tol: float) -> int | None:
    """Smallest count k (1-based) with errors[i] <= tol for every i >= k - 1 of the record:
    the number of products after which the estimate reached ``tol`` and stayed there.
    None when the last recorded estimate is above ``tol``."""
    k = None
    for i in range(len(errors) - 1, -1, -1):
        if not errors[i] <= tol:
            break
        k = i + 1
    return k


def fmt(x: Any, digits: int = 3) -> str:
    """Compact number for tables: None -> '-', floats to ``digits`` significant digits."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        return f"{x:.{digits}g}"
    return str(x)


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of log y against log x (None with fewer than 2 distinct x)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


# ---------------------------------------------------------------- output and CLI
def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file ('-' = stdout)."""
    text = json.dumps(obj, indent=1, default=_json_default) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(p)


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return str(x)


def main(description: str, run: Callable[[argparse.Namespace], dict], markdown: Callable[[dict], str],
         add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
         argv: Sequence[str] | None = None) -> int:
    """The command line shared by the benchmark modules: parse, run, write JSON, print the
    Markdown; a ConvrateError prints one line and exits 2."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="smaller instances and budgets")
    ap.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    ap.add_argument("--threads", type=int, default=1, help="torch / BLAS threads (default 1)")
    ap.add_argument("--json", metavar="OUT", default=None, help="write the result as JSON here ('-' = stdout)")
    if add_arguments is not None:
        add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        set_threads(args.threads)
        result = run(args)
    except ConvrateError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if args.json:
        write_json(args.json, result)
    if args.json != "-":
        print(markdown(result))
    return 1 if result.get("failed") else 0
