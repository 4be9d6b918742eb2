"""Where and how torch runs: device choice, thread count, deterministic RNG scopes."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from convrate.errors import InvalidInputError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; otherwise the named device."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"unknown device {device!r}; use auto, cpu or cuda[:k]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device!r} requested but CUDA is not available")
    return dev


#: models up to this many parameters run with one torch thread on the CPU: their kernels are too
#: small for intra-op parallelism, and on shared cores the threads contend (the zoo Llama: 0.05 s
#: of CPU per Adam step on one thread, 1.7 s on two at load 10 on 2 cores)
SMALL_MODEL_PARAMETERS = 10_000_000


def is_small(module: torch.nn.Module, device: str | torch.device = "cpu") -> bool:
    """Whether ``module`` runs single-threaded (``SMALL_MODEL_PARAMETERS``; CPU only)."""
    return resolve_device(device).type == "cpu" and sum(p.numel() for p in module.parameters()) <= SMALL_MODEL_PARAMETERS


class single_thread:
    """Context manager: torch intra-op threads = 1 (restored on exit). On 2 shared cores,
    OpenMP workers of several processes contend and small float64 kernels slow down 10-100x;
    the tests and the small-model sections of reports and audits run torch single-threaded."""

    def __enter__(self) -> "single_thread":
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.n)


#: glibc ``mallopt`` parameters (malloc.h) and the values ``keep_freed_memory`` sets: the
#: largest mmap threshold glibc accepts on 64-bit systems (32 MiB), a 1 GiB trim threshold
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES, _TRIM_THRESHOLD_BYTES = 32 << 20, 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc's allocator reuse freed memory instead of returning it to the system: blocks
    up to 32 MiB come from the heap (not a fresh ``mmap`` each time) and the heap is trimmed only
    above 1 GiB free. A tensor of a few MB allocated every step (a CNN's unfolded patches, a
    transformer's activations) then reuses pages already mapped instead of faulting in zeroed ones
    (the float64 digits CNN: about 1500 page faults and 2.7 ms of system time per SGD step before,
    none after). The arithmetic is unchanged; the process keeps its peak memory until it exits, so
    this is for long-lived worker processes (the report's). Linux with glibc only: returns whether
    both settings were applied."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)) and \
        bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))


@contextlib.contextmanager
def deterministic(seed: int, device: torch.device) -> Iterator[None]:
    """Fork the RNG (caller's state restored afterwards), seed it, request deterministic
    algorithms (warn_only: an op without a deterministic kernel warns instead of failing)."""
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


class RNGStream:
    """A seeded torch RNG stream that can be left and re-entered: ``with stream.active():`` is
    ``deterministic(seed, device)`` with the stream's state as it was when it was last left, so
    work split over several entries draws the same numbers as in one (the caller's RNG state is
    untouched in between)."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed, self.device = int(seed), device
        self._state: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        cuda = self.device.type == "cuda"
        with deterministic(self.seed, self.device):
            if self._state is not None:
                torch.set_rng_state(self._state[0])
                if cuda:
                    torch.cuda.set_rng_state(self._state[1], self.device)
            try:
                yield
            finally:
                self._state = (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if cuda else None)
