#!/usr/bin/env python
"""Benchmark: the cost of one Hessian-vector product against one gradient, per model.

On each instance (``bench_instances``; float64, CPU) the operations are

- ``loss``: L(theta) (forward only), the unit of cost;
- ``gradient``: ``Objective.gradient`` (forward + backward);
- ``hvp double_backward`` / ``hvp func``: ``Objective.hvp(v, method=...)``, reverse-over-
  reverse (grad of <grad L, v>) and torch.func forward-over-reverse (jvp of grad); both
  recompute the forward and the gradient, so each is the cost of one HVP from scratch;
- ``hvp graph reused``: PyHessian's ``hessian_vector_product`` on the gradient graph it keeps
  (``loss.backward(create_graph=True)`` once): one backward per product, the amortized cost
  inside an eigensolver run at a fixed point; ``graph setup (kept)``: building that graph
  (PyHessian's ``hessian(...)``), whose peak is what stays resident while it is reused (only
  where PyHessian is installed).

For each: seconds per call (``min_times``: minimum over interleaved rounds after a warm-up),
peak resident memory above the level before the call (``peak_memory``: Linux VmHWM reset
through /proc/self/clear_refs; median of 3 calls) and the FLOPs of its matrix products
(``FlopCounterMode``). The products of the HVP methods are cross-checked against each other.

Target: one HVP (convrate's default method) costs at most 2.5 gradients. The matmul FLOP
ratio says how much of a miss is arithmetic (each linear layer whose input and weight both
vary costs 3 products in a gradient and 9 in an HVP) and how much is overhead.

Usage: python benchmarks/bench_hvp.py [--quick] [--instances a,b] [--json OUT] [--seed S]
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
import warnings
from typing import Any, Callable

import torch

from convrate.models.curvature import DEFAULT_HVP_METHOD, HVP_METHODS

from bench_common import (fmt, main, matmul_flops, min_times, peak_memory,
                          peak_memory_supported, progress)
from bench_instances import Instance, build

TARGET_RATIO = 2.5
DEFAULT_INSTANCES = {"full": ("digits-mlp", "minilm-L1", "minilm-L6"), "quick": ("digits-mlp", "minilm-L1")}
#: timing rounds per instance: tiny models need many rounds for a stable minimum
ROUNDS = {"digits-mlp": 30, "close-gap": 30}
DEFAULT_ROUNDS = 4
MEMORY_REPEATS = 3


def operations(inst: Instance, seed: int) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """The timed operations on ``inst`` and the cross-check of the HVP results."""
    obj = inst.objective()
    obj.require_deterministic()
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(obj.n, generator=g, dtype=torch.float64)
    ops: dict[str, Callable[[], Any]] = {"loss": lambda: obj.loss().detach(), "gradient": obj.gradient}
    for m in HVP_METHODS:
        ops[f"hvp {m}"] = (lambda m=m: obj.hvp(v, method=m))

    def first_reuse() -> Any:  # drop the cached gradient graph: this call builds it, then multiplies
        obj.__dict__.pop("_graph", None)
        return obj.hvp(v, method="reuse")

    ops["hvp reuse, first product (builds the graph)"] = first_reuse
    results = {m: obj.hvp(v, method=m) for m in HVP_METHODS}
    ref = results[DEFAULT_HVP_METHOD]
    check = {m: float((r - ref).norm() / ref.norm()) for m, r in results.items()}
    try:
        ph = importlib.import_module("pyhessian.hessian")
    except ImportError:
        ph = None
    if ph is not None:
        module = inst.fresh_module()
        with warnings.catch_warnings():  # PyHessian's backward(create_graph=True)
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
            h = ph.hessian(module, inst.criterion, data=(inst.x, inst.y), cuda=False)
        parts = list(torch.split(v, [p.numel() for p in h.params]))
        vs = [p.view(q.shape) for p, q in zip(parts, h.params)]
        ops["hvp graph reused"] = lambda: ph.hessian_vector_product(h.gradsH, h.params, vs)
        hv = torch.cat([x.reshape(-1) for x in ops["hvp graph reused"]()])
        check["graph reused"] = float((hv - ref).norm() / ref.norm())
    return ops, check


def graph_setup(inst: Instance, with_memory: bool) -> dict[str, Any] | None:
    """PyHessian's ``hessian(...)`` (forward, ``backward(create_graph=True)``) on a fresh copy
    each time: seconds (minimum of 3) and the peak memory, which is what stays resident while
    the graph is reused (the copy is made before the measured call)."""
    try:
        ph = importlib.import_module("pyhessian.hessian")
    except ImportError:
        return None
    times, mems, flops = [], [], 0.0
    for _ in range(MEMORY_REPEATS):
        module = inst.fresh_module()

        def build() -> Any:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
                return ph.hessian(module, inst.criterion, data=(inst.x, inst.y), cuda=False)

        t0 = time.perf_counter()
        build()
        times.append(time.perf_counter() - t0)
        for p in module.parameters():
            p.grad = None
        if with_memory:
            mems.append(peak_memory(build))
            for p in module.parameters():
                p.grad = None
        flops = matmul_flops(build)
        for p in module.parameters():
            p.grad = None
    row: dict[str, Any] = {"seconds": min(times), "matmul_flops": flops}
    if with_memory:
        row["peak_bytes"] = int(statistics.median(mems))
    return row


def bench_instance(inst: Instance, seed: int, with_memory: bool) -> dict[str, Any]:
    ops, check = operations(inst, seed)
    secs = min_times(ops, ROUNDS.get(inst.name, DEFAULT_ROUNDS))
    rows = {}
    for name, f in ops.items():
        row: dict[str, Any] = {"seconds": secs[name], "matmul_flops": matmul_flops(f)}
        if with_memory:
            row["peak_bytes"] = int(statistics.median(peak_memory(f) for _ in range(MEMORY_REPEATS)))
        rows[name] = row
    setup = graph_setup(inst, with_memory)
    if setup is not None:
        rows["graph setup (kept)"] = setup
    grad = rows["gradient"]
    for row in rows.values():
        row["time_vs_gradient"] = row["seconds"] / grad["seconds"]
        row["flops_vs_gradient"] = row["matmul_flops"] / grad["matmul_flops"] if grad["matmul_flops"] else None
        if with_memory:
            row["memory_vs_gradient"] = row["peak_bytes"] / grad["peak_bytes"] if grad["peak_bytes"] else None
    hvps = {k: r["seconds"] for k, r in rows.items() if k in {f"hvp {m}" for m in HVP_METHODS}}
    return {"instance": inst.name, "description": inst.description, "n_params": inst.n_params,
            "rows": rows, "relative_difference_to_default": check, "default_method": DEFAULT_HVP_METHOD,
            "fastest_method": min(hvps, key=hvps.get).removeprefix("hvp "),
            "rounds": ROUNDS.get(inst.name, DEFAULT_ROUNDS)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = args.instances.split(",") if args.instances else list(DEFAULT_INSTANCES["quick" if args.quick else "full"])
    with_memory = peak_memory_supported()
    results = []
    with progress() as prog:
        task = prog.add_task("HVP cost", total=len(names))
        for name in names:
            prog.update(task, description=f"HVP cost {name}")
            results.append(bench_instance(build(name, seed=args.seed, batch=args.minilm_batch), args.seed, with_memory))
            prog.advance(task)
    fastest = {r["fastest_method"] for r in results}
    return {"benchmark": "hvp", "quick": args.quick, "seed": args.seed, "target_ratio": TARGET_RATIO,
            "memory_method": ("peak resident memory above the pre-call level (VmHWM after "
                              "/proc/self/clear_refs; malloc_trim first)") if with_memory else None,
            "default_method": DEFAULT_HVP_METHOD,
            "fastest_on_every_model": fastest.pop() if len(fastest) == 1 else None,
            "instances": results}


def markdown(res: dict[str, Any]) -> str:
    mem = res["memory_method"] is not None
    lines = ["| model | operation | seconds | x gradient | matmul GFLOP | x gradient | "
             + ("peak MiB | x gradient |" if mem else ""),
             "|---|---|---:|---:|---:|---:|" + ("---:|---:|" if mem else "")]
    for r in res["instances"]:
        for name, row in r["rows"].items():
            label = name + (" (default)" if name == f"hvp {r['default_method']}" else "")
            cells = [r["instance"], label, fmt(row["seconds"], 3), fmt(row["time_vs_gradient"], 3),
                     fmt(row["matmul_flops"] / 1e9, 3), fmt(row["flops_vs_gradient"], 3)]
            if mem:
                cells += [fmt(row["peak_bytes"] / 2**20, 3), fmt(row["memory_vs_gradient"], 3)]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Default HVP method: `{res['default_method']}`; fastest from scratch on every model: "
              f"`{res['fastest_on_every_model'] or 'differs by model'}`. "
              + (f"Memory: {res['memory_method']}." if mem else "Memory not measured (needs Linux /proc).")]
    return "\n".join(lines)


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in res["instances"]:
        row = r["rows"][f"hvp {r['default_method']}"]
        ratio = row["time_vs_gradient"]
        met = ratio <= res["target_ratio"]
        why = ""
        if not met:
            reused = r["rows"].get("hvp graph reused")
            why = (f"missed by {100 * (ratio / res['target_ratio'] - 1):.0f}%: the HVP does "
                   f"{fmt(row['flops_vs_gradient'], 3)}x the gradient's matmul FLOPs (a linear layer whose input "
                   f"and weight both vary: 9 products vs 3)"
                   + (f"; with the gradient graph reused (PyHessian's way, one backward per product) an HVP costs "
                      f"{fmt(reused['time_vs_gradient'], 3)}x a gradient" if reused else ""))
        first = r["rows"].get("hvp reuse, first product (builds the graph)")
        if r["default_method"] == "reuse" and first is not None:
            why = (why + "; " if why else "") + (f"amortized: the gradient graph is built once per theta (first "
                                                 f"product {fmt(first['time_vs_gradient'], 3)}x a gradient), every "
                                                 "later product of a Lanczos run reuses it")
        out.append({"id": "T-hvp", "instance": r["instance"],
                    "statement": f"one HVP ({r['default_method']}) costs at most {res['target_ratio']}x one gradient",
                    "measured": f"{fmt(ratio, 3)}x", "ratio": ratio, "threshold": f"<= {res['target_ratio']}",
                    "met": met, "why": why})
    return out


def _add(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--instances", default=None, help="comma-separated (default digits-mlp,minilm-L1[,minilm-L6])")
    ap.add_argument("--minilm-batch", type=int, default=16, help="MiniLM batch (paragraphs, default 16)")


if __name__ == "__main__":
    sys.exit(main(__doc__.splitlines()[0], run, markdown, _add))
