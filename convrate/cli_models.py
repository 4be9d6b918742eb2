"""``convrate defend`` and ``convrate attack``: defend a real checkpoint, attack it (with a recovery).

MODEL is a checkpoint directory (zoo ``arch.json`` or Hugging Face ``config.json``, each with
``model.safetensors``; Llama / Qwen2 / Mistral decoders also sharded) or a zoo name:
``digits-mlp``, ``digits-cnn``, ``llama-tiny`` (trained and cached on first use), ``minilm``
(the installed all-MiniLM-L6-v2). The attack task follows the architecture: the digits relabel
task (pixels / 16, as the zoo models are trained) for zoo models with 64 or 1x8x8 inputs and 10
outputs, the Python-documentation chapter task through a fresh seeded linear head for BERT
encoders, embedding tables frozen (``models.tasks``; the report's convention,
``experiments.encoder_wrap``), next-token prediction for decoders (``lm-text`` with the
directory's tokenizer, else ``lm-tokens``; every parameter trained, LoRA through peft).
"""
from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from convrate.cli import _fail, _progress, app, out
from convrate.errors import ConvrateError, InvalidInputError

ZOO_NAMES = ("digits-mlp", "digits-cnn", "minilm", "llama-tiny")
METHODS = ("specdef", "diagonal")
FORMS = ("absorbed", "inserted")
RECOVERIES = ("none", "r1", "r2")
#: models up to this size are attacked with one torch thread on the CPU: their kernels are too
#: small for intra-op parallelism, and on shared cores the threads contend (the zoo Llama: 0.05 s
#: of CPU per Adam step on one thread, 1.7 s on two at load 10 on 2 cores)
SMALL_MODEL_PARAMETERS = 10_000_000


# ---------------------------------------------------------------- shared helpers
def resolve_model(spec: str, layers: Optional[int] = None) -> Any:
    """A ``LoadedModel`` from a checkpoint directory or a zoo name (an existing path wins)."""
    from convrate.models import zoo
    from convrate.models.io import load_model

    p = Path(spec)
    if p.exists() or spec not in ZOO_NAMES:
        if not p.exists():
            raise InvalidInputError(f"model {spec!r} is neither an existing checkpoint directory nor a zoo name "
                                    f"({', '.join(ZOO_NAMES)})")
        return load_model(p, n_layers=layers)
    if spec == "minilm":
        return zoo.minilm(n_layers=layers)
    if layers is not None and spec != "llama-tiny":
        raise InvalidInputError("--layers applies to BERT and decoder models only")
    with _progress() as prog:
        prog.add_task(f"loading {spec} (trained and cached on first use)", total=None)
        if spec == "llama-tiny":
            m = zoo.llama_tiny()
            return m if layers is None else load_model(m.source, n_layers=layers)
        return zoo.digits_mlp() if spec == "digits-mlp" else zoo.digits_cnn()


def _empty_or_absent(path: Path, what: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise InvalidInputError(f"{what} {path} exists and is not an empty directory; choose a new one")


def _inside(a: Path, b: Path) -> bool:
    """a is b or lies inside b."""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def default_record_dir(release: Path) -> Path:
    """Where ``defend`` puts the secret record by default: <release>/../<name>-reparameterization."""
    return release.parent / f"{release.name}-reparameterization"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Fraction):
        return float(x)
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, Path):
        return str(x)
    return x


def _print_json(obj: dict[str, Any]) -> None:
    out.print_json(json.dumps(_jsonable(obj)))


# ---------------------------------------------------------------- defend
@app.command()
def defend(
    model: str = typer.Argument(..., help="checkpoint directory or zoo name (digits-mlp, digits-cnn, minilm, llama-tiny)"),
    strength: Optional[float] = typer.Option(None, "--strength", "-K",
                                             help="absorbed form: defense strength K = kappa(A) per group, > 1"),
    method: str = typer.Option("specdef", "--method", help="specdef | diagonal"),
    profile: str = typer.Option("geometric", "--profile", help="SpecDef singular-value profile: geometric | spike"),
    out_dir: Path = typer.Option(..., "--out", help="new (or empty) directory for the defended release"),
    record_dir: Optional[Path] = typer.Option(None, "--record",
                                              help="where the secret record T goes (default OUT/../<name>-reparameterization)"),
    layers: Optional[str] = typer.Option(None, "--layers", help="absorbed form: BERT / decoders, keep only the first k "
                                         "layers; inserted form: glob pattern(s) of the Linear layers to defend"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON on stdout"),
    seed: int = typer.Option(0, "--seed", help="seed of the diagonal defense's coordinate order (specdef: unused)"),
    form: str = typer.Option("absorbed", "--form", help="absorbed (A W_a, A^-1 folded into the neighbour) | inserted "
                             "(W' with the top-k singular values x alpha and a new layer C, C W' = W)"),
    rank: Optional[int] = typer.Option(None, "-k", "--rank", help="inserted form: number k of singular values scaled"),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="inserted form: factor alpha > 0 on the top-k"),
    side: str = typer.Option("output", "--side", help="inserted form: C after W' (output) or before it (input)"),
    top: Optional[int] = typer.Option(None, "--top", help="inserted form: the N Linear layers of largest sigma_1"),
) -> None:
    """Defend MODEL: write the reparameterized release to --out and, separately, the secret record T.

    Refuses a strength that breaks function preservation in the model's dtype, naming the largest safe K.
    With --form inserted: the paper's construction (W' and an inserted layer C per chosen Linear; no record).
    """
    if form not in FORMS:
        _fail(InvalidInputError(f"unknown --form {form!r}; choose one of {', '.join(FORMS)}"))
    if form == "inserted":
        return _defend_inserted(model, strength, method, profile, out_dir, record_dir, layers, as_json, rank, alpha,
                                side, top)
    try:
        from convrate.models.defense import PROFILES, DiagonalScaling, SpecDef, check_strength

        if strength is None:
            raise InvalidInputError("--strength/-K is required (or use --form inserted with -k and --alpha)")
        if any(v is not None for v in (rank, alpha, top)) or side != "output":
            raise InvalidInputError("-k, --alpha, --side and --top apply to --form inserted only")
        layers = _layer_count(layers)
        K = check_strength(strength)
        if method not in METHODS:
            raise InvalidInputError(f"unknown defense method {method!r}; choose one of {', '.join(METHODS)}")
        if profile not in PROFILES:
            raise InvalidInputError(f"unknown SpecDef profile {profile!r}; choose one of {', '.join(PROFILES)}")
        if method == "diagonal" and profile != "geometric":
            raise InvalidInputError("--profile applies to --method specdef only (diagonal uses the geometric profile)")
        rdir = record_dir if record_dir is not None else default_record_dir(out_dir)
        _empty_or_absent(out_dir, "--out")
        _empty_or_absent(rdir, "the record directory")
        if _inside(rdir, out_dir) or _inside(out_dir, rdir):
            raise InvalidInputError(f"the secret record {rdir} must not be inside the release {out_dir} (nor around it)")
        loaded = resolve_model(model, layers)
        if loaded.source is not None and any(_inside(d, Path(loaded.source)) for d in (out_dir, rdir)):
            raise InvalidInputError(f"refusing to write into the input directory {loaded.source}; choose another --out / --record")
        defense = SpecDef(K, profile) if method == "specdef" else DiagonalScaling(K, seed)
        with _progress() as prog:
            prog.add_task(f"{method} K={K:g}: building T and checking preservation per dtype", total=None)
            res = defense.apply(loaded)
            release, rec_path = res.save(out_dir, rdir)
    except ConvrateError as e:
        _fail(e)
    kinds = Counter(s.kind for s, _ in res.record.items)
    summary = {
        "model": model, "method": method, "K": K, "profile": profile if method == "specdef" else None, "seed": seed,
        "release": release, "record": rec_path, "release_dtype": res.release_dtype,
        "groups": dict(kinds), "n_groups": len(res.record.items),
        "kappa_A": res.record.kappa_A(), "kappa_T": res.record.kappa_T(),
        "preservation": {d: {"deviation": p.deviation, "baseline": p.baseline, "tolerance": p.tolerance, "ok": p.ok}
                         for d, p in res.preservation.items()},
    }
    if as_json:
        _print_json(summary)
        return
    out.print(f"defended release: {release}   secret record (keep private, needed only for R1): {rec_path}")
    out.print(f"groups: {len(res.record.items)} ({', '.join(f'{k} x{v}' for k, v in kinds.items())});  "
              f"max kappa(A) = {summary['kappa_A']:.4g};  kappa(T) = {summary['kappa_T']:.4g}")
    out.print(_preservation_table(res.preservation, res.release_dtype))


def _preservation_table(preservation: dict[str, Any], release_dtype: str) -> Table:
    """Function preservation per dtype (``models.defense.Preservation`` objects) as a rich table."""
    table = Table(title=f"function preservation (release dtype {release_dtype})")
    for col in ("dtype", "max rel. deviation", "undefended", "tolerance", "ok"):
        table.add_column(col)
    for d, p in preservation.items():
        table.add_row(d, f"{p.deviation:.3e}", f"{p.baseline:.3e}", f"{p.tolerance:.1e}",
                      "[green]yes[/]" if p.ok else "[red]no[/]")
    return table


def _layer_count(layers: Optional[str]) -> Optional[int]:
    """--layers of the absorbed form: a positive integer (BERT truncation)."""
    if layers is None:
        return None
    try:
        return int(layers)
    except ValueError:
        raise InvalidInputError(f"--layers must be an integer with --form absorbed (BERT layers kept), got "
                                f"{layers!r}; layer patterns apply to --form inserted") from None


def _defend_inserted(model: str, strength: Optional[float], method: str, profile: str, out_dir: Path,
                     record_dir: Optional[Path], layers: Optional[str], as_json: bool, rank: Optional[int],
                     alpha: Optional[float], side: str, top: Optional[int]) -> None:
    """``defend --form inserted`` (see ``cli_inserted``)."""
    from convrate.cli_inserted import defend_inserted
    from convrate.theory.bounds_inserted import check_side

    try:
        if strength is not None or method != "specdef" or profile != "geometric":
            raise InvalidInputError("--strength, --method and --profile apply to --form absorbed only")
        if record_dir is not None:
            raise InvalidInputError("--form inserted has no secret record (C is part of the release); drop --record")
        check_side(side)
        _empty_or_absent(out_dir, "--out")
        loaded = resolve_model(model)
        if loaded.source is not None and (_inside(out_dir, Path(loaded.source)) or _inside(Path(loaded.source), out_dir)):
            raise InvalidInputError(f"refusing to write into the input directory {loaded.source}; choose another --out")
        with _progress() as prog:
            prog.add_task(f"inserted SpecDef k={rank} alpha={alpha}: growing and checking preservation per dtype",
                          total=None)
            res, summary = defend_inserted(loaded, rank, alpha, side, layers, top, out_dir)
    except ConvrateError as e:
        _fail(e)
    summary = {"model": model, **summary}
    if as_json:
        _print_json(summary)
        return
    out.print(f"grown release: {summary['release']} ({summary['n_layers']} inserted layer(s), "
              f"{summary['inserted_parameters']} extra parameters; no secret record: C is in the release)")
    t = Table(title=f"inserted layers (k = {rank}, alpha = {alpha:g}, {side} side)")
    for col in ("layer", "shape", "sigma_1", "kappa(C)", "amplification", "parameters"):
        t.add_column(col)
    for i in res.layers:
        t.add_row(i.name, "x".join(map(str, i.shape)), f"{i.sigma_1:.4g}", f"{i.kappa_C:.4g}", f"{i.amplification:.4g}",
                  str(i.inserted_parameters))
    out.print(t)
    out.print(_preservation_table(res.preservation, res.release_dtype))


# ---------------------------------------------------------------- attack
def _attack_network(loaded: Any, recovery: str, record_dir: Optional[Path], task: Any, seed: int
                    ) -> tuple[Any, dict[str, Any]]:
    """The module to fine-tune and a description of the recovery applied."""
    from convrate.models.recovery import canonicalize, r1_extra_parameters, r1_module
    from convrate.models.symmetry import TorchReparameterization

    info: dict[str, Any] = {"recovery": recovery}
    module = loaded.module
    if loaded.kind == "bert":  # the report's convention: the attacker trains the encoder layers and the head
        module.embeddings.requires_grad_(False)  # (kept by the copies R1 and R2 make); decoders: everything
    if recovery == "r1":
        rdir = record_dir
        if rdir is None and loaded.source is not None:
            rdir = default_record_dir(Path(loaded.source))
        if rdir is None or not rdir.is_dir():
            raise InvalidInputError("R1 needs the secret reparameterization record: pass --record DIR"
                                    + (f" (default {rdir} not found)" if rdir is not None else ""))
        record = TorchReparameterization.load(rdir)
        module = r1_module(module, record)
        info.update(record=rdir, **r1_extra_parameters(record))
    elif recovery == "r2":
        canon, record = canonicalize(loaded)
        module = canon.module
        info.update(sweeps=record.meta["sweeps"], degenerate=record.meta["degenerate"], kappa_C=record.kappa_A())
    if loaded.fmt == "hf":
        module = task.head(module, seed=seed)
    return module, info


@app.command()
def attack(
    model: str = typer.Argument(..., help="checkpoint directory or zoo name (digits-mlp, digits-cnn, minilm, llama-tiny)"),
    optimizer: str = typer.Option("adam", "--optimizer", help="sgd | momentum | adam | adamw | lora-sgd | lora-adam | "
                                  "lbfgs | lbfgs-wolfe | newton-cg | gauss-newton | kfac | shampoo | soap | sophia | muon"),
    lr: Optional[float] = typer.Option(None, "--lr", help="fixed learning rate; the damping for newton-cg, gauss-newton "
                                       "and kfac (default: --lr-sweep)"),
    inner_steps: int = typer.Option(10, "--inner-steps", help="newton-cg, gauss-newton: CG steps per outer step"),
    exponent: Optional[float] = typer.Option(None, "--exponent", help="shampoo: preconditioner exponent p in (0, 1] "
                                             "(L^-p G R^-p; default: the library's 1/(2 order))"),
    lr_sweep: bool = typer.Option(False, "--lr-sweep", help="search the learning rate (log grid 1e-5..10, refined)"),
    target: Optional[float] = typer.Option(None, "--target", help="target training loss (default: half the initial loss)"),
    budget: int = typer.Option(200, "--budget", help="step budget per run"),
    recovery: str = typer.Option("none", "--recovery", help="none | r1 (needs the record) | r2 (canonicalize)"),
    record_dir: Optional[Path] = typer.Option(None, "--record", help="R1: the secret record (default MODEL/../<name>-reparameterization)"),
    layers: Optional[int] = typer.Option(None, "--layers", help="BERT / decoders: keep only the first k layers"),
    task_name: str = typer.Option("auto", "--task", help="auto | digits-relabel | text | lm-text | lm-tokens"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:k]"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON on stdout"),
    seed: int = typer.Option(0, "--seed", help="seed of the task, the head, LoRA and the run"),
) -> None:
    """Fine-tune MODEL on the architecture's task and count the steps to the target loss.

    With --recovery r1 the attacker trains phi with theta' = T phi (knows T); with r2 it first
    canonicalizes the weights (knows nothing).
    """
    try:
        from convrate.models.attacks import OPTIMIZERS, get_spec, lr_search, make_attack, resolve_device
        from convrate.models.runtime import single_thread

        if optimizer not in OPTIMIZERS:
            raise InvalidInputError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if recovery not in RECOVERIES:
            raise InvalidInputError(f"unknown recovery {recovery!r}; choose one of {', '.join(RECOVERIES)}")
        if record_dir is not None and recovery != "r1":
            raise InvalidInputError("--record applies to --recovery r1 only")
        if lr is not None and lr_sweep:
            raise InvalidInputError("give either --lr or --lr-sweep, not both")
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            raise InvalidInputError(f"--lr must be positive and finite, got {lr}")
        if budget < 1:
            raise InvalidInputError(f"--budget must be a positive integer, got {budget}")
        if target is not None and not math.isfinite(target):
            raise InvalidInputError(f"--target must be finite, got {target}")
        if seed < 0:
            raise InvalidInputError(f"--seed must be a non-negative integer, got {seed}")
        if inner_steps < 1:
            raise InvalidInputError(f"--inner-steps must be a positive integer, got {inner_steps}")
        if exponent is not None and not (math.isfinite(exponent) and 0 < exponent <= 1):
            raise InvalidInputError(f"--exponent must lie in (0, 1], got {exponent}")
        so_options = {"inner_steps": inner_steps, "exponent": exponent}
        dev = resolve_device(device)
        loaded = resolve_model(model, layers)
        from convrate.models.tasks import task_for

        task = task_for(loaded, task_name, seed)
        net, info = _attack_network(loaded, recovery, record_dir, task, seed)
        initial = task.evaluate(net)  # on the CPU copy; function-preserving, so the defense does not change it
        tgt = 0.5 * initial if target is None else float(target)
        small = dev.type == "cpu" and sum(p.numel() for p in net.parameters()) <= SMALL_MODEL_PARAMETERS
        with _progress() as prog, (single_thread() if small else contextlib.nullcontext()):
            bar = prog.add_task("attack", total=None)

            def step(label: str, done: int, total: int) -> None:
                prog.update(bar, description=label, completed=done, total=total)

            if lr is not None:
                traj = make_attack(optimizer, lr, budget, tgt, seed=seed, device=str(dev), **so_options
                                   ).run(net, task, progress=step)
                steps, best_lr, table = traj.steps_to(tgt), lr, []
                final, diverged, trainable = traj.final_loss, traj.diverged, traj.trainable_parameters
                cost, ratios = traj.cost_to(tgt), traj.cost_ratios
            else:
                res = lr_search(net, task, optimizer, tgt, budget, seed=seed, device=str(dev), progress=step,
                                **so_options)
                steps, best_lr = res.best_steps, res.best_lr
                cost, ratios = res.best_cost, res.cost_ratios or {}
                table = [{"lr": t.lr, "steps": t.steps, "diverged": t.diverged, "final_loss": t.final_loss,
                          "budget": t.budget, "stage": t.stage, "cost": t.cost} for t in res.table]
                best = min((t for t in res.table if t.lr == best_lr), key=lambda t: t.budget)
                final, diverged = best.final_loss, best.diverged
                trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    except ConvrateError as e:
        _fail(e)
    result = {"model": model, "task": task.name, "optimizer": optimizer, "lr": best_lr, "lr_sweep": lr is None,
              "target": tgt, "initial_loss": initial, "budget": budget, "steps": steps, "reached": steps is not None,
              "knob": get_spec(optimizer).knob,
              "cost": cost, "cost_ratios": ratios,
              "final_loss": final, "diverged": diverged, "trainable_parameters": trainable, "seed": seed,
              "device": str(dev), **info, "lr_table": table}
    if as_json:
        _print_json(result)
        return
    shown = str(steps) if steps is not None else f">{budget}"
    out.print(f"{task.name}: {optimizer} {result['knob']}={best_lr:.3g}  steps to loss <= {tgt:.4g} (from {initial:.4g}): "
              f"{shown}" + (f"  ({cost['grad_equivalents']:.4g} gradient-equivalents, {cost['wall_s']:.3g} s)" if cost else ""))
    if recovery == "r1":
        out.print(f"R1: {info['extra_parameters']} extra parameters (frozen A, A^-1) for {info['groups']} groups; "
                  f"bound {float(info['bound']):.6g}; trainable {trainable}")
    elif recovery == "r2":
        out.print(f"R2: canonicalized ({info['sweeps']} S2 sweeps, max kappa(C) = {info['kappa_C']:.4g}, "
                  f"{len(info['degenerate'])} degenerate group(s))")
    if table:
        t = Table(title="learning-rate search")
        for col in ("lr", "steps", "budget", "final loss", "diverged", "stage"):
            t.add_column(col)
        for row in table:
            t.add_row(f"{row['lr']:.3g}", "-" if row["steps"] is None else str(row["steps"]), str(row["budget"]),
                      f"{row['final_loss']:.4g}", "yes" if row["diverged"] else "", row["stage"])
        out.print(t)
