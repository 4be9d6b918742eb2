"""The data-parallel agreement check: the same curvature computation at world size 1 and W.

``agreement_case(name)`` builds a small float64 problem (module, inputs, targets, loss):
``mlp`` (a random zoo MLP, squared loss), ``bert`` (``testing.tiny_bert``, squared loss on
its last hidden state), ``decoder`` (``testing.tiny_decoder`` under ``tasks.NextTokenLM``: the
next-token cross-entropy of a causal-LM task on its own token ids, one sequence's last token
masked). ``measure(world, names)`` computes, for each case, the gradient, one H v, the
extreme eigenvalues (``lanczos_run``, tolerance 1e-12) and the Hutchinson trace on this
rank's shard, every product all-reduced. ``property_tests`` runs it in one process and under
``distributed.launch`` with 2 and 3 workers (3 shards of 11 examples are uneven) and compares.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from convrate.models.curvature.distributed import World
from convrate.models.curvature.lanczos import lanczos_run
from convrate.models.curvature.objective import Objective
from convrate.models.curvature.trace import hutchinson_trace

CASES = ("mlp", "bert", "decoder")
#: examples per case: not divisible by 2 or 3, so every multi-process shard split is uneven
N_EXAMPLES = 11


def agreement_case(name: str, seed: int = 0) -> tuple[torch.nn.Module, Any, torch.Tensor, str]:
    """(module, inputs, targets, loss) of a named case (module doc), float64."""
    from convrate.models.testing import bert_inputs, decoder_inputs, mlp_arch, random_zoo, tiny_bert, tiny_decoder

    g = torch.Generator().manual_seed(seed + 1)
    if name == "mlp":
        m = random_zoo(mlp_arch([5, 6, 4, 3]), seed)
        X = torch.randn(N_EXAMPLES, 5, generator=g, dtype=torch.float64)
        return m.module, X, torch.randn(N_EXAMPLES, 3, generator=g, dtype=torch.float64), "squared"
    if name == "bert":
        m = tiny_bert(seed)
        x = bert_inputs(m, N_EXAMPLES, 5, seed)
        with torch.no_grad():
            h = m.module(**x).last_hidden_state
        return m.module, x, torch.randn(h.shape, generator=g, dtype=torch.float64), "squared"
    if name == "decoder":
        from convrate.models.tasks import NextTokenLM, next_token_targets

        m = tiny_decoder("llama", seed, hidden=4, heads=2, kv_heads=1, vocab=6, intermediate=4, max_len=8)
        x = decoder_inputs(m, N_EXAMPLES, 5, seed)
        x["attention_mask"][0, -1] = 0  # sequences of unequal length: the token counts differ by shard
        return NextTokenLM(m.module), x, next_token_targets(x["input_ids"], x["attention_mask"]), "cross_entropy"
    raise ValueError(f"unknown agreement case {name!r} ({', '.join(CASES)})")


def measure(world: World, names: Sequence[str] = CASES, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per case: gradient, H v, lambda_max / lambda_min (with residuals), trace, on this rank."""
    out = {}
    for name in names:
        module, X, Y, loss = agreement_case(name, seed)
        obj = Objective(module, X, Y, loss=loss, device="cpu", world=world)
        v = torch.randn(obj.n, generator=torch.Generator().manual_seed(seed + 7), dtype=torch.float64)
        run = lanczos_run(obj.hvp, obj.n, obj.n, top=1, bottom=1, tol=1e-12, seed=seed, world=world)
        tr, se = hutchinson_trace(obj, samples=6, seed=seed)
        out[name] = {"n": obj.n, "loss": float(obj.loss()), "gradient": obj.gradient().numpy(),
                     "attack_losses": _attack_losses(module, X, Y, world) if name == "mlp" else [],
                     "hvp": obj.hvp(v).numpy(), "lambda_max": run.top[0].value,
                     "lambda_max_residual": run.top[0].residual, "lambda_min": run.bottom[0].value,
                     "lambda_min_residual": run.bottom[0].residual, "trace": tr, "trace_se": se,
                     "steps": run.steps, "shard": len(world.shard(N_EXAMPLES)), "checksum": run.checksum}
    return out





def _attack_losses(module: torch.nn.Module, X: Any, Y: torch.Tensor, world: World) -> list[float]:
    """Six full-batch Adam steps on the squared loss with gradients reduced over ``world`` in
    micro-batches of 2 (``BatchReduction``): the attack's loss curve."""
    from convrate.models.attacks import Attack
    from convrate.models.curvature.distributed import BatchReduction
    from convrate.models.tasks import tensor_task

    task = tensor_task(X, Y, loss="squared")
    atk = Attack("adam", 0.05, 6, None, seed=0, device="cpu", reduction=BatchReduction(world, micro_batch=2))
    return atk.run(module, task).losses


def measure_and_probe(world: World, names: Sequence[str] = CASES, seed: int = 0) -> dict[str, Any]:
    """``measure``, plus whether ``World.require_agreement`` rejects values that differ by rank
    (it must, whenever the world has more than one rank)."""
    from convrate.models.curvature.distributed import RankDisagreementError

    out: dict[str, Any] = {"cases": measure(world, names, seed)}
    try:
        world.require_agreement([float(world.rank)], "a rank-dependent value")
        out["disagreement_detected"] = False
    except RankDisagreementError:
        out["disagreement_detected"] = True
    return out
def sharded_measure(world: World, lanczos_cases: Sequence[str] = ("mlp",),
                    gradient_cases: Sequence[str] = ("bert", "decoder"), seed: int = 0) -> dict[str, Any]:
    """With each case's model sharded over ``world`` by FSDP2 (``sharded.ShardedObjective``):
    the gradient (all cases), and for ``lanczos_cases`` H v by finite differences and
    lambda_max / lambda_min by sharded Lanczos (tolerance 1e-9), as global vectors; plus the
    error that double backward through the sharded parameters raises (None if it worked)."""
    from convrate.models.curvature.sharded import ShardedObjective

    out: dict[str, Any] = {}
    for name in list(lanczos_cases) + list(gradient_cases):
        module, X, Y, loss = agreement_case(name, seed)
        obj = ShardedObjective(module, X, Y, loss=loss, world=world)
        res: dict[str, Any] = {"gradient": obj.full(obj.gradient()).numpy(), "loss": obj.loss(),
                               "n_local": obj.n_local, "n": obj.n}
        if name in lanczos_cases:
            g = torch.Generator().manual_seed(seed + 7)
            v = obj.local(torch.randn(obj.n, generator=g, dtype=torch.float64))
            v0 = obj.local(torch.randn(obj.n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
            run = lanczos_run(obj.hvp, obj.n, obj.n, top=1, bottom=1, tol=1e-9, v0=v0, sharded=world, world=world)
            res.update(hvp=obj.full(obj.hvp(v)).numpy(), lambda_max=run.top[0].value,
                       lambda_max_residual=run.top[0].residual, lambda_min=run.bottom[0].value,
                       lambda_min_residual=run.bottom[0].residual)
        out[name] = res
    out["double_backward_error"] = _double_backward_error(world)
    return out


def _double_backward_error(world: World) -> str | None:
    """Try H v by double backward on an FSDP2-sharded MLP; the error message, or None."""
    from convrate.models.curvature.sharded import shard_module

    module, X, Y, _ = agreement_case("mlp")
    net = shard_module(module)
    params = [p for p in net.parameters()]
    try:
        loss = ((net(X) - Y) ** 2).sum()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        torch.autograd.grad(sum((gi * gi).sum() for gi in grads), params)
        return None
    except RuntimeError as e:
        return str(e).splitlines()[0]


__all__ = ["CASES", "N_EXAMPLES", "agreement_case", "measure", "measure_and_probe", "sharded_measure"]
