"""Data-parallel reduction of sums over examples on ``torch.distributed`` (world size 1: no communication).

Every curvature quantity of ``Objective`` is a mean over loss terms,

    L(theta) = (1/C) sum_n ell_n(theta),     grad L = (1/C) sum_n grad ell_n,     H v = (1/C) sum_n H_n v,

with C the global number of loss terms (examples; predicted tokens for a causal LM). Rank r of a
world of W processes holds the contiguous shard S_r = [floor(r N / W), floor((r + 1) N / W)) of the
N examples (deterministic; uneven when W does not divide N), computes its partial *sums* over
S_r, and one ``all_reduce(SUM)`` adds them; dividing by C (itself an all-reduced count) gives
the mean. This is exact for uneven shards: only the order of the floating-point additions
differs from one process, so results agree to round-off (float64: ~1e-16 relative per sum).
The model is not wrapped in DistributedDataParallel (its hooks do not see ``autograd.grad``).

Every rank ends with the same reduced bits (gloo and nccl broadcast the reduced chunks), so
an eigensolver fed by reduced products runs identically on every rank; ``World.require_agreement``
checks it (all-reduce of a checksum, MAX and MIN compared).

``World`` is the one object the single-process path and the distributed path share;
``launch`` starts N local workers (gloo on CPU, nccl on CUDA) and ``World.from_environment``
joins a ``torchrun`` launch (``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``, multi-node
included).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from convrate.errors import ConvrateError, InvalidInputError


class RankDisagreementError(ConvrateError):
    """Ranks that must compute identical numbers (the replicated eigensolver) did not."""

    exit_code = 1


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel world: ``rank`` in ``range(size)``; ``size`` 1
    means a single process (every collective is the identity)."""

    rank: int = 0
    size: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.size, int) and self.size >= 1 and 0 <= self.rank < self.size):
            raise InvalidInputError(f"invalid world: rank {self.rank} of {self.size}")

    @classmethod
    def current(cls) -> "World":
        """The initialized default process group, else a single process."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @classmethod
    def from_environment(cls, device: str = "cpu") -> "World":
        """Join a ``torchrun`` launch when ``WORLD_SIZE`` > 1 is set (``env://`` rendezvous;
        gloo for CPU, nccl for CUDA), else a single process."""
        import torch.distributed as dist

        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group(backend_for(device), init_method="env://")
        return cls.current()

    @property
    def distributed(self) -> bool:
        return self.size > 1

    # ------------------------------------------------------------ sharding
    def shard(self, n: int) -> range:
        """Indices of this rank's examples: [floor(r n / W), floor((r + 1) n / W))."""
        return range(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    # ------------------------------------------------------------ collectives
    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of ``t`` over ranks (a new tensor; ``t`` is not modified)."""
        if self.size == 1:
            return t
        import torch.distributed as dist

        out = t.detach().clone().contiguous()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def sum_float(self, x: float, dtype: torch.dtype = torch.float64) -> float:
        if self.size == 1:
            return float(x)
        return float(self.sum(torch.tensor([x], dtype=dtype, device=self._comm_device())))

    def sum_int(self, x: int) -> int:
        if self.size == 1:
            return int(x)
        return int(self.sum(torch.tensor([x], dtype=torch.int64, device=self._comm_device())))

    def _comm_device(self) -> torch.device:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def require_agreement(self, values: Sequence[float] | torch.Tensor, what: str) -> str:
        """Raise ``RankDisagreementError`` unless every rank holds bitwise the same ``values``
        (float64); returns their checksum (sha256 of the bytes, 16 hex digits). The check: a
        64-bit integer fingerprint of the bytes, all-reduced with MAX and with MIN: equal iff
        every rank has it."""
        arr = torch.as_tensor(values, dtype=torch.float64).detach().cpu().contiguous().reshape(-1)
        digest = hashlib.sha256(arr.numpy().tobytes()).hexdigest()[:16]
        if self.size == 1:
            return digest
        import torch.distributed as dist

        fp = int(digest[:15], 16)  # < 2^60: fits int64
        dev = self._comm_device()
        hi = torch.tensor([fp], dtype=torch.int64, device=dev)
        lo = hi.clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        if int(hi) != int(lo):
            raise RankDisagreementError(f"ranks disagree on {what}: the replicated computation diverged "
                                        f"(this rank's checksum {digest}); a nondeterministic operator?")
        return digest

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Leave the process group after a barrier (a process that exits with gloo's threads
        still running aborts)."""
        import torch.distributed as dist

        if self.size > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def backend_for(device: str | torch.device) -> str:
    """gloo for CPU tensors, nccl for CUDA."""
    return "nccl" if torch.device(device if device != "auto" else
                                  ("cuda" if torch.cuda.is_available() else "cpu")).type == "cuda" else "gloo"


def chunks(indices: range, size: int | None) -> list[range]:
    """``indices`` cut into consecutive pieces of at most ``size`` (None: one piece; empty: none)."""
    if len(indices) == 0:
        return []
    if size is None:
        return [indices]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InvalidInputError(f"micro-batch size must be a positive integer, got {size!r}")
    return [indices[i:i + size] for i in range(0, len(indices), size)]


@dataclass(frozen=True)
class BatchReduction:
    """The full-batch training loss of an attack and its gradient, as sums over this rank's
    shard in micro-batches of at most ``micro_batch`` examples and over the ranks of ``world``:
    each piece contributes loss(piece) x terms(piece) / C (``task.loss_fn`` is a mean over its
    terms: rows, or target tokens for a causal LM), its backward accumulates into ``.grad``, and
    one all-reduce per parameter adds the ranks' gradients. Every rank then holds the same
    gradient and takes the same optimizer step (no DistributedDataParallel). Equal to one
    forward pass over all examples up to the order of float64/float32 additions."""

    world: World = World()
    micro_batch: int | None = None

    def loss_and_backward(self, net: torch.nn.Module, task: Any) -> float:
        from convrate.models.curvature.objective import _rows, loss_terms

        n = int(task.y_train.shape[0])
        mine = self.world.shard(n)
        pieces = chunks(mine, self.micro_batch)
        terms = [loss_terms(task.loss, task.y_train[p.start:p.stop]) for p in pieces]
        total_terms = self.world.sum_int(sum(terms))
        total = 0.0
        for piece, k in zip(pieces, terms):
            loss = task.loss_fn(task.forward(net, _rows(task.X_train, piece)), task.y_train[piece.start:piece.stop])
            loss = loss * (k / total_terms)
            loss.backward()
            total += float(loss.detach())
        if self.world.distributed:
            for p in net.parameters():
                if p.requires_grad:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    p.grad.copy_(self.world.sum(p.grad))
        return self.world.sum_float(total)


# ---------------------------------------------------------------- local launch
def _worker(rank: int, fn: Callable[..., Any], size: int, store: str, backend: str, threads: int | None,
            out_dir: str, args: tuple) -> None:
    import torch.distributed as dist

    if threads is not None:
        torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=size)
    world = World(rank, size)
    result = fn(world, *args)
    tmp = Path(out_dir) / f"{rank}.tmp"
    tmp.write_bytes(pickle.dumps(result))
    tmp.replace(Path(out_dir) / f"{rank}.pkl")
    world.close()
    # the result is on disk and the group is closed: leave without the interpreter's teardown,
    # where gloo's background threads can abort the process (std::terminate) on a loaded machine
    os._exit(0)


def launch(fn: Callable[..., Any], nproc: int, *args: Any, device: str = "cpu", threads: int | None = None,
           poll: Callable[[], None] | None = None) -> list[Any]:
    """Run ``fn(world, *args)`` in ``nproc`` fresh local processes (spawned; a file-store
    rendezvous in a private temporary directory; gloo on CPU, nccl on CUDA) and return every
    rank's return value (picklable), rank order. ``threads``: torch threads per worker.
    ``poll`` is called about every 0.2 s while the workers run (e.g. to drain a progress
    queue). A worker's exception is re-raised here as ``ConvrateError`` subclasses keep their
    message and exit code."""
    import torch.multiprocessing as mp

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise InvalidInputError(f"--nproc must be a positive integer, got {nproc!r}")
    backend = backend_for(device)
    with tempfile.TemporaryDirectory(prefix="convrate-dist-") as tmp:
        ctx = mp.start_processes(_worker, args=(fn, nproc, str(Path(tmp) / "store"), backend, threads, tmp, args),
                                 nprocs=nproc, join=False, start_method="spawn")
        try:
            while not ctx.join(timeout=0.2):
                if poll is not None:
                    poll()
        except mp.ProcessRaisedException as e:
            raise _reraised(e) from None
        if poll is not None:
            poll()
        out = []
        for r in range(nproc):
            out.append(pickle.loads((Path(tmp) / f"{r}.pkl").read_bytes()))
        return out


def _reraised(e: Exception) -> Exception:
    """A worker's ConvrateError as itself (the last line of its traceback names it)."""
    import convrate.errors as errors
    from convrate.models.curvature import distributed as this

    text = str(e).strip().splitlines()
    last = text[-1] if text else str(e)
    name, _, msg = last.partition(": ")
    cls = getattr(errors, name.rsplit(".", 1)[-1], None) or getattr(this, name.rsplit(".", 1)[-1], None)
    if isinstance(cls, type) and issubclass(cls, ConvrateError):
        return cls(msg)
    return ConvrateError(f"a worker failed: {last}")


__all__ = ["World", "BatchReduction", "RankDisagreementError", "backend_for", "chunks", "launch"]
