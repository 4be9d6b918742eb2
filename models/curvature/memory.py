"""Peak memory of a curvature call, measured where torch allocates.

``tracemalloc`` sees only Python's allocator, not torch's tensors, so it is not used. A
``MemoryMeter`` reports, in bytes:

- ``peak_rss``: the process's resident-set high-water mark during the call (Linux: ``VmHWM``
  from ``/proc/self/status``, reset to the current RSS at entry through
  ``/proc/self/clear_refs``; elsewhere ``resource.getrusage`` ``ru_maxrss``, the high-water
  mark since the process started, which can only over-state the call's peak) -- every
  allocation the call touches: torch's CPU allocator, Python, BLAS;
- ``rss_at_start``: the resident set when the call began (``peak_rss - rss_at_start`` is what
  the call added at its peak);
- ``cuda_peak_allocated``: ``torch.cuda.max_memory_allocated`` (reset at entry) when CUDA is in
  use, else None;
- ``counted_vectors``: what the caller declares it holds by design (``count(nbytes)``), e.g. the
  Lanczos vectors: the part of the peak that grows with the number of steps.

Meters nest: an inner meter's reset of ``VmHWM`` first folds the current high-water mark into
every enclosing meter, so the outer peak is not lost.
"""
from __future__ import annotations

import resource
import sys
from typing import Any

import torch

_STACK: list["MemoryMeter"] = []


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


class MemoryMeter:
    """Context manager measuring the peak memory of its body (module doc); ``.report()``."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.peak_rss = 0
        self.rss_at_start = 0
        self.counted_vectors = 0
        self.method = ""
        self.cuda_peak_allocated: int | None = None

    def _hwm(self) -> int:
        kb = _status_kb("VmHWM")
        return kb * 1024 if kb is not None else _maxrss_bytes()

    def __enter__(self) -> "MemoryMeter":
        for outer in _STACK:
            outer.peak_rss = max(outer.peak_rss, self._hwm())
        rss = _status_kb("VmRSS")
        self.rss_at_start = rss * 1024 if rss is not None else 0
        if rss is not None and _reset_hwm():
            self.method = "VmHWM of /proc/self/status, reset at entry (resident set high-water mark of the call)"
        else:
            self.method = "ru_maxrss (resident high-water mark since process start: an upper bound)"
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        _STACK.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_rss = max(self.peak_rss, self._hwm())
        if self.device.type == "cuda":
            self.cuda_peak_allocated = int(torch.cuda.max_memory_allocated(self.device))
        _STACK.remove(self)
        for outer in _STACK:
            outer.peak_rss = max(outer.peak_rss, self.peak_rss)

    def count(self, nbytes: int) -> None:
        """Declare ``nbytes`` held by design (kept as the maximum declared)."""
        self.counted_vectors = max(self.counted_vectors, int(nbytes))

    def report(self) -> dict[str, Any]:
        return {"peak_rss": self.peak_rss, "rss_at_start": self.rss_at_start,
                "added_at_peak": max(0, self.peak_rss - self.rss_at_start),
                "counted_vectors": self.counted_vectors, "cuda_peak_allocated": self.cuda_peak_allocated,
                "measured": self.method}


__all__ = ["MemoryMeter"]
