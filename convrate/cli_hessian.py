"""``convrate hessian MODEL``: the curvature of the attacker's loss alone (PyHessian's job).

Extreme eigenpairs (Lanczos, O(n) memory by default) with fresh-product residual bounds, the
Hutchinson trace with its standard error, the spectral density by stochastic Lanczos
quadrature (plotted into ``--out``), peak memory and time. The loss is the attacker's task of
the audit (``models.tasks.task_for`` and ``models.audit.attack_module``: zoo models on the
digits relabel task, BERT encoders under the seeded head on the text task, and any task
``task_for`` knows, e.g. a causal-LM task whose ``loss`` is ``causal_lm``), on the trainable
parameters (``--params`` narrows them by substring).

Scaling: ``--nproc N`` spawns N local data-parallel workers (gloo on CPU, nccl on CUDA;
``models.curvature.distributed``); under ``torchrun --nproc-per-node N -m convrate hessian ...``
every process joins the launch's process group (multi-node through torchrun's environment).
Rank 0 prints and writes. Bad input: one line on stderr, exit code 2, nothing written.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from convrate.cli import _fail, _progress, app, console, out
from convrate.errors import ConvrateError, InvalidInputError

SCHEMA = "convrate-hessian/1"
HESSIAN_FILES = ("hessian.json", "hessian.md")
DTYPES = ("float64", "float32")


# ---------------------------------------------------------------- the problem
def build_objective(spec: dict[str, Any], world: Any = None) -> tuple[Any, dict[str, Any]]:
    """The ``Objective`` of ``spec`` (the command's options) on this rank, and its description."""
    import torch

    from convrate.cli_models import resolve_model
    from convrate.models.audit import attack_module
    from convrate.models.curvature import Objective
    from convrate.models.tasks import task_for, task_name_for

    loaded = resolve_model(spec["model"], spec["layers"])
    name = task_name_for(loaded, spec["task"])
    task = task_for(loaded, name, spec["seed"])
    net = attack_module(loaded, loaded.module, task, spec["seed"])
    X, Y = task.X_train, task.y_train
    if spec["examples"] is not None:
        if spec["examples"] > len(Y):
            raise InvalidInputError(f"--examples {spec['examples']} exceeds the task's {len(Y)} training examples")
        k = spec["examples"]
        X = {key: v[:k] for key, v in X.items()} if isinstance(X, dict) else X[:k]
        Y = Y[:k]
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    if spec["params"]:
        pats = [p for p in spec["params"].split(",") if p]
        names = [n for n in names if any(p in n for p in pats)]
        if not names:
            raise InvalidInputError(f"--params {spec['params']!r} selects no trainable parameter")
    device = spec["device"]
    if device != "cpu" and torch.cuda.is_available() and world is not None and world.distributed:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', world.rank)) % torch.cuda.device_count()}"
    obj = Objective(net, X, Y, loss=task.loss, params=names, dtype=getattr(torch, spec["dtype"]), device=device,
                    world=world, micro_batch=spec["micro_batch"], hvp_method=spec["hvp"])
    info = {"name": task.name, "kind": name, "loss": task.loss, "description": task.description,
            "model_format": loaded.fmt}
    return obj, info


def compute(world: Any, spec: dict[str, Any], queue: Any = None) -> dict[str, Any]:
    """One rank's share: the curvature summary of ``spec`` (identical on every rank) plus this
    rank's time and memory. Rank 0 reports progress to ``queue``. Zoo models (thousands of
    parameters) run with one torch thread, as in the audit (their kernels gain nothing from
    intra-op threads, which contend on shared cores)."""
    import contextlib

    from convrate.models.curvature.summary import curvature_summary
    from convrate.models.runtime import single_thread

    progress = None
    if world.rank == 0 and queue is not None:
        def progress(label: str, done: int, total: int) -> None:
            queue.put((label, done, total))
    obj, task = build_objective(spec, world)
    with single_thread() if task["model_format"] == "zoo" else contextlib.nullcontext():
        res = curvature_summary(obj, top=spec["top"], bottom=spec["bottom"], tol=spec["tol"],
                                max_steps=spec["max_steps"], basis=spec["basis"],
                                trace_samples=spec["trace_samples"] if spec["trace"] else 0,
                                density_probes=spec["density_probes"] if spec["density"] else 0,
                                density_steps=spec["density_steps"], seed=spec["seed"], progress=progress)
    res["task"] = task
    res["parameter_names"] = obj.names if len(obj.names) <= 64 else obj.names[:64] + ["..."]
    res["rank"] = world.rank
    res["shard_examples"] = len(world.shard(obj.n_rows))
    return res


def _document(spec: dict[str, Any], ranks: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    r0 = ranks[0]
    keep = ("n_parameters", "n_examples", "loss_terms", "loss", "dtype", "device", "world_size", "micro_batch",
            "hvp_method", "lanczos", "top", "bottom", "trace", "density", "products")
    return {"schema": SCHEMA, "model": spec["model"], "task": {**r0["task"], "n_examples": r0["n_examples"],
                                                               "loss_terms": r0["loss_terms"]},
            "parameters": {"count": r0["n_parameters"], "selection": spec["params"] or "trainable",
                           "names": r0["parameter_names"]},
            **{k: r0[k] for k in keep if k not in ("n_parameters",)},
            "seed": spec["seed"], "nproc": len(ranks),
            "memory": {"per_rank": [r["memory"] for r in ranks], "peak_rss_max": max(r["memory"]["peak_rss"] for r in ranks)},
            "shards": [r["shard_examples"] for r in ranks],
            "cpu_seconds": sum(r["cpu_seconds"] for r in ranks), "cpu_seconds_per_rank": [r["cpu_seconds"] for r in ranks],
            "compute_wall_seconds": max(r["wall_seconds"] for r in ranks), "wall_seconds": wall}


# ---------------------------------------------------------------- output
def density_figure(doc: dict[str, Any]) -> bytes:
    """The SLQ density (log scale), with the extreme eigenvalues marked."""
    from convrate.reports.builder import png, pyplot

    plt = pyplot()
    d = doc["density"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.semilogy(d["grid"], [max(v, 1e-300) for v in d["density"]], lw=1.2)
    for p in doc["top"] + doc["bottom"]:
        ax.axvline(p["value"], color="k", ls=":", lw=0.7)
    ax.set_ylim(bottom=max(1e-12, min(v for v in d["density"] if v > 0)))
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(f"{doc['model']}: SLQ density ({d['probes']} probes x {d['steps']} steps, sigma {d['sigma']:.2g})")
    return png(fig)


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# convrate hessian: {doc['model']}", "",
             f"Task {doc['task']['name']} ({doc['task']['loss']}, {doc['task']['n_examples']} examples, "
             f"{doc['task']['loss_terms']} loss terms); {doc['parameters']['count']} parameters "
             f"({doc['parameters']['selection']}); {doc['dtype']} on {doc['device']}; {doc['nproc']} process(es); "
             f"seed {doc['seed']}.", "", "| which | eigenvalue | residual r (an eigenvalue lies within r) |",
             "|---|---|---|"]
    for i, p in enumerate(doc["top"]):
        lines.append(f"| top {i + 1} | {p['value']:.12g} | {p['residual']:.2e} |")
    for i, p in enumerate(doc["bottom"]):
        lines.append(f"| bottom {i + 1} | {p['value']:.12g} | {p['residual']:.2e} |")
    lz = doc["lanczos"]
    lines += ["", f"Lanczos: {lz['steps']} steps, basis {lz['basis']}, {lz['matvecs']} products, tolerance "
              f"{lz['tol']:g}, converged {lz['converged']}."]
    if doc["trace"]:
        t = doc["trace"]
        lines.append(f"Trace (Hutchinson, {t['samples']} probes): {t['estimate']:.8g} +- {t['stderr']:.2g}.")
    if doc["density"]:
        lines.append("Spectral density: density.png.")
    m = doc["memory"]
    lines.append(f"Peak resident memory (max over ranks): {m['peak_rss_max'] / 2**20:.1f} MiB; wall {doc['wall_seconds']:.1f} s, "
                 f"CPU {doc['cpu_seconds']:.1f} s.")
    return "\n".join(lines) + "\n"


def _print(doc: dict[str, Any]) -> None:
    table = Table(title=f"convrate hessian {doc['model']}: {doc['parameters']['count']} parameters, "
                        f"{doc['task']['n_examples']} examples, {doc['nproc']} process(es)")
    for col in ("which", "eigenvalue", "residual"):
        table.add_column(col)
    for i, p in enumerate(doc["top"]):
        table.add_row(f"top {i + 1}", f"{p['value']:.12g}", f"{p['residual']:.2e}")
    for i, p in enumerate(doc["bottom"]):
        table.add_row(f"bottom {i + 1}", f"{p['value']:.12g}", f"{p['residual']:.2e}")
    out.print(table)
    lz = doc["lanczos"]
    out.print(f"Lanczos: {lz['steps']} steps ({lz['basis']} basis), {lz['matvecs']} products, converged {lz['converged']}")
    if doc["trace"]:
        out.print(f"trace: {doc['trace']['estimate']:.8g} +- {doc['trace']['stderr']:.2g} ({doc['trace']['samples']} probes)")
    if doc["density"]:
        out.print(f"density: {doc['density']['probes']} probes x {doc['density']['steps']} steps; SLQ trace "
                  f"{doc['density']['trace']:.6g}")
    out.print(f"peak memory {doc['memory']['peak_rss_max'] / 2**20:.1f} MiB; wall {doc['wall_seconds']:.1f} s; "
              f"CPU {doc['cpu_seconds']:.1f} s")


# ---------------------------------------------------------------- command
def _validate(spec: dict[str, Any]) -> None:
    from convrate.models.curvature.lanczos import BASES
    from convrate.models.curvature.objective import FINITE_DIFFERENCE, HVP_METHODS
    from convrate.models.runtime import resolve_device
    from convrate.models.tasks import TASKS

    checks = [(spec["top"] >= 0 and spec["bottom"] >= 0 and spec["top"] + spec["bottom"] >= 1,
               "--top and --bottom must be >= 0, at least one of them >= 1"),
              (math.isfinite(spec["tol"]) and 0 < spec["tol"] < 1, f"--tol must lie in (0, 1), got {spec['tol']}"),
              (spec["max_steps"] >= 1, "--max-steps must be >= 1"),
              (spec["trace_samples"] >= 2, "--trace-samples must be >= 2"),
              (spec["density_probes"] >= 1 and spec["density_steps"] >= 2, "--density-probes >= 1, --density-steps >= 2"),
              (spec["dtype"] in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}"),
              (spec["basis"] in BASES, f"--basis must be one of {', '.join(BASES)}"),
              (spec["hvp"] in HVP_METHODS + (FINITE_DIFFERENCE,), f"--hvp must be one of {', '.join(HVP_METHODS)}, "
                                                                  f"{FINITE_DIFFERENCE}"),
              (spec["nproc"] >= 1, "--nproc must be >= 1"),
              (spec["micro_batch"] is None or spec["micro_batch"] >= 1, "--micro-batch must be >= 1"),
              (spec["examples"] is None or spec["examples"] >= 1, "--examples must be >= 1"),
              (spec["seed"] >= 0, "--seed must be >= 0")]
    for ok, msg in checks:
        if not ok:
            raise InvalidInputError(msg)
    if spec["task"] not in TASKS:
        raise InvalidInputError(f"unknown task {spec['task']!r} (supported: {', '.join(TASKS)})")
    resolve_device(spec["device"])


@app.command()
def hessian(
    model: str = typer.Argument(..., help="checkpoint directory or zoo name (digits-mlp, digits-cnn, minilm, llama-tiny)"),
    task: str = typer.Option("auto", "--task", help="the attacker's task (auto picks by architecture)"),
    top: int = typer.Option(1, "--top", help="number of largest distinct eigenvalues"),
    bottom: int = typer.Option(1, "--bottom", help="number of smallest distinct eigenvalues"),
    trace: bool = typer.Option(False, "--trace", help="Hutchinson trace with its standard error"),
    trace_samples: int = typer.Option(32, "--trace-samples", help="Rademacher probes of the trace"),
    density: bool = typer.Option(False, "--density", help="spectral density by SLQ (plot written to --out)"),
    density_probes: int = typer.Option(4, "--density-probes", help="SLQ probes"),
    density_steps: int = typer.Option(60, "--density-steps", help="Lanczos steps per SLQ probe"),
    tol: float = typer.Option(1e-8, "--tol", help="stop when every wanted Ritz pair's estimate <= tol * max|theta|"),
    max_steps: int = typer.Option(300, "--max-steps", help="most Lanczos steps"),
    basis: str = typer.Option("none", "--basis", help="none (O(n) memory, two passes) | full (keeps steps x n)"),
    dtype: str = typer.Option("float64", "--dtype", help="float64 | float32 (products; Lanczos is float64)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:k]"),
    nproc: int = typer.Option(1, "--nproc", help="local data-parallel workers (gloo on CPU, nccl on CUDA)"),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", help="examples per forward pass (memory)"),
    hvp: str = typer.Option("reuse", "--hvp", help="reuse | double_backward | func | finite_difference"),
    examples: Optional[int] = typer.Option(None, "--examples", help="use the first N training examples"),
    params: str = typer.Option("", "--params", help="comma list of substrings selecting trainable parameters"),
    layers: Optional[int] = typer.Option(None, "--layers", help="BERT: keep only the first k encoder layers"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="write hessian.json, hessian.md (and density.png)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON on stdout"),
    seed: int = typer.Option(0, "--seed", help="seed of the task, head, Lanczos start and probes"),
) -> None:
    """Extreme Hessian eigenpairs with residual bounds, trace and spectral density of MODEL's task loss."""
    from convrate.models.curvature.distributed import World, launch

    spec = dict(model=model, task=task, top=top, bottom=bottom, trace=trace, trace_samples=trace_samples,
                density=density, density_probes=density_probes, density_steps=density_steps, tol=tol,
                max_steps=max_steps, basis=basis, dtype=dtype, device=device, nproc=nproc, micro_batch=micro_batch,
                hvp=hvp, examples=examples, params=params, layers=layers, seed=seed)
    t0 = time.perf_counter()
    try:
        _validate(spec)
        if out_dir is not None:
            from convrate.reports.outdir import check_out_dir

            src = Path(model)
            check_out_dir(out_dir, "hessian", HESSIAN_FILES, [src] if src.exists() else [])
        world = World.from_environment(device)
        if world.distributed and nproc > 1:
            raise InvalidInputError("--nproc cannot be combined with a torchrun launch (WORLD_SIZE > 1)")
        if nproc > 1:  # bad input is reported here, in one line, before any worker starts
            from convrate.cli_models import resolve_model
            from convrate.models.tasks import task_name_for

            task_name_for(resolve_model(model, layers), task)
        with _progress() as prog:
            bar = prog.add_task("hessian", total=None)

            def show(label: str, done: int, total: int) -> None:
                prog.update(bar, description=f"hessian: {label}", completed=done, total=total)

            if nproc > 1:
                import torch
                import torch.multiprocessing as mp

                queue = mp.get_context("spawn").SimpleQueue()

                def drain() -> None:
                    while not queue.empty():
                        show(*queue.get())

                threads = max(1, torch.get_num_threads() // nproc)
                ranks = launch(compute, nproc, spec, queue, device="cpu" if device == "cpu" or not
                               torch.cuda.is_available() else "cuda", threads=threads, poll=drain)
            else:
                local = _Local(show) if world.rank == 0 else None
                mine = compute(world, spec, local)
                ranks = _gather(world, mine)
                world.close()
        doc = _document(spec, ranks, time.perf_counter() - t0)
        if world.rank != 0:
            return
        if out_dir is not None:
            from convrate.reports.outdir import write_out_dir

            files: dict[str, bytes | str] = {"hessian.json": json.dumps(doc, indent=2, allow_nan=False) + "\n",
                                             "hessian.md": markdown(doc)}
            if doc["density"]:
                files["density.png"] = density_figure(doc)
            write_out_dir(out_dir, files, "hessian")
    except ConvrateError as err:
        _fail(err)
    if as_json:
        out.print_json(json.dumps(doc, allow_nan=False))
    else:
        _print(doc)
        if out_dir is not None:
            console.print(f"written to {out_dir}")


class _Local:
    """A progress queue for the in-process path (rank 0 updates the bar directly)."""

    def __init__(self, show: Any) -> None:
        self.show = show

    def put(self, item: tuple[str, int, int]) -> None:
        self.show(*item)


def _gather(world: Any, mine: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's result on every rank (torchrun path); one process: [mine]."""
    if not world.distributed:
        return [mine]
    import torch.distributed as dist

    got: list[Any] = [None] * world.size
    dist.all_gather_object(got, mine)
    return got
