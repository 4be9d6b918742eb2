"""Chains of linear maps with no nonlinearity between them: find them in any module, merge them.

A release that "grew" (SpecDef with an inserted layer C, statement I) replaces a linear layer by
a chain of affine maps F_1, ..., F_q applied in that order (q >= 2). Two forms are recognized:

* marked chains (always): an ``inserted.InsertedLinear`` (the form of Hugging Face releases,
  ``inserted_io``); adjacent ``nn.Linear`` entries of a zoo ``nn.Sequential`` of which one is
  marked ``"inserted"`` in ``arch.json``;
* unmarked runs (``unmarked=True``): two or more adjacent ``nn.Linear`` children of any
  ``nn.Sequential`` (a whole ``nn.Sequential`` of Linears replaces one Linear). Such a run is also
  an ordinary deep linear network, so ``resolve_chains`` reads it as a chain only when a reference
  is given and has one Linear in its place (merging makes the architectures equal).

Which factors are the inserted ones: the marked ones; in an unmarked run of two, the square one
(both square: the second, i.e. the output side); in longer runs every factor but the one with the
most parameters (the first such).

Merge (statement M): the chain computes x -> W x + b with

    W = W_q ... W_1,   b = sum_j (W_q ... W_(j+1)) b_j,

computed in float64 and stored in the chain's dtype as one ``nn.Linear`` (bias present iff some
factor has one). ``merge_chains`` returns a new model (the input is untouched); a zoo model gets its
``arch.json`` collapsed too, so the merged model has the original architecture.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from convrate.errors import InvalidInputError
from convrate.models.inserted import INSERTED_ATTR, InsertedLinear
from convrate.models.io import LoadedModel


@dataclass(frozen=True)
class Chain:
    """One chain: ``container`` (path of the parent module), ``members`` (its child names replaced
    by the merged Linear: a run of Sequential indices, or one child), ``factors`` (module paths of
    F_1..F_q in application order), ``inserted`` (indices of the inserted factors), ``side``
    ("output": inserted after the main map, "input": before, "both"), ``marked``, ``meta`` (alpha, k
    from the release's metadata when present) and ``whole`` (the member is a Sequential of Linears
    that is replaced as a whole)."""

    container: str
    members: tuple[str, ...]
    factors: tuple[str, ...]
    inserted: tuple[int, ...]
    side: str
    marked: bool
    meta: Mapping[str, Any] = field(default_factory=dict)
    whole: bool = False

    @property
    def main(self) -> int:
        """Index of the released (non-inserted) factor: the one with the most parameters."""
        rest = [i for i in range(len(self.factors)) if i not in self.inserted]
        return rest[0] if rest else 0


def _path(container: str, child: str) -> str:
    return f"{container}.{child}" if container else child


def _numel(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _side(inserted: Sequence[int], main: int) -> str:
    after, before = any(i > main for i in inserted), any(i < main for i in inserted)
    return "both" if after and before else ("output" if after else "input")


def _unmarked_inserted(mods: Sequence[nn.Linear]) -> tuple[int, ...]:
    if len(mods) == 2:
        square = [i for i, m in enumerate(mods) if m.in_features == m.out_features]
        return (square[0],) if len(square) == 1 else (1,)
    main = max(range(len(mods)), key=lambda i: (_numel(mods[i]), -i))
    return tuple(i for i in range(len(mods)) if i != main)


def _zoo_markers(model: Any, seq: nn.Sequential) -> dict[int, Mapping[str, Any]]:
    """index -> the arch.json "inserted" object, when the model's arch describes this module."""
    if not isinstance(model, LoadedModel) or model.fmt != "zoo" or seq is not model.module:
        return {}
    layers = model.config.get("layers", [])
    if len(layers) != len(seq):
        return {}
    return {i: spec["inserted"] for i, spec in enumerate(layers) if isinstance(spec, Mapping) and spec.get("inserted")}


def find_chains(model: Any, *, unmarked: bool = False) -> list[Chain]:
    """The chains of ``model`` (a LoadedModel or nn.Module): marked ones, and with ``unmarked`` also
    unmarked runs of adjacent Linears (module doc)."""
    module = getattr(model, "module", model)
    if not isinstance(module, nn.Module):
        raise InvalidInputError(f"expected a LoadedModel or torch.nn.Module, got {type(module).__name__}")
    chains: list[Chain] = []
    claimed: set[str] = set()
    for path, m in module.named_modules():
        if any(path == c or path.startswith(c + ".") for c in claimed):
            continue
        parent, _, leaf = path.rpartition(".")
        if isinstance(m, InsertedLinear):
            fac = (path, _path(path, INSERTED_ATTR))
            fac = fac if m.side == "output" else fac[::-1]
            ins = (1,) if m.side == "output" else (0,)
            meta = {k: v for k, v in getattr(m, "meta", {}).items()}
            chains.append(Chain(parent, (leaf,), fac, ins, m.side, True, meta))
            claimed.add(path)
            continue
        if not isinstance(m, nn.Sequential):
            continue
        kids = list(m.named_children())
        markers = _zoo_markers(model, m)
        if path and unmarked and len(kids) >= 2 and all(type(c) is nn.Linear for _, c in kids):
            ins = _unmarked_inserted([c for _, c in kids])
            main = max(range(len(kids)), key=lambda i: (_numel(kids[i][1]), -i)) if len(kids) > 2 else \
                [i for i in range(2) if i not in ins][0]
            chains.append(Chain(parent, (leaf,), tuple(_path(path, n) for n, _ in kids), ins, _side(ins, main),
                                False, {}, whole=True))
            claimed.add(path)
            continue
        i = 0
        while i < len(kids):
            j = i
            while j < len(kids) and type(kids[j][1]) is nn.Linear:
                j += 1
            run = kids[i:j]
            marked = [t for t in range(i, j) if t in markers]
            if len(run) >= 2 and (marked or unmarked):
                if marked:
                    ins = tuple(t - i for t in marked)
                    meta = dict(markers[marked[0]])
                else:
                    ins, meta = _unmarked_inserted([c for _, c in run]), {}
                rest = [t for t in range(len(run)) if t not in ins]
                if not rest:
                    raise InvalidInputError(f"{path or 'model'}: layers {i}..{j - 1} are all marked inserted")
                main = max(rest, key=lambda t: (_numel(run[t][1]), -t))
                chains.append(Chain(path, tuple(n for n, _ in run), tuple(_path(path, n) for n, _ in run), ins,
                                    _side(ins, main), bool(marked), meta))
            i = max(j, i + 1)
    return chains


# ---------------------------------------------------------------- merge
def factor_tensors(module: nn.Module, chain: Chain) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(W_j, b_j) of every factor in application order (the module's own tensors)."""
    out = []
    for p in chain.factors:
        f = module.get_submodule(p)
        out.append((f.weight, f.bias))
    return out


def chain_affine(module: nn.Module, chain: Chain) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W, b) of the chain's composition in float64 (module doc); b None when no factor has a bias."""
    W, b = None, None
    for Wj, bj in factor_tensors(module, chain):
        Wj = Wj.detach().to(torch.float64)
        if W is not None and Wj.shape[1] != W.shape[0]:
            raise InvalidInputError(f"chain {chain.factors}: factor shapes do not compose")
        b = (Wj @ b if b is not None else None)
        if bj is not None:
            bj = bj.detach().to(torch.float64)
            b = bj if b is None else b + bj
        W = Wj if W is None else Wj @ W
    assert W is not None
    return W, b


def _linear(W: torch.Tensor, b: torch.Tensor | None, like: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(W.shape[1], W.shape[0], bias=b is not None, device=like.device, dtype=like.dtype)
    with torch.no_grad():
        lin.weight.copy_(W)
        if b is not None:
            lin.bias.copy_(b)
    return lin


def merge_chains(model: Any, chains: Sequence[Chain] | None = None) -> Any:
    """A new model with every chain replaced by one ``nn.Linear`` (module doc); a LoadedModel in,
    a LoadedModel out (zoo ``arch.json`` collapsed, ``source`` None), else a module."""
    module = getattr(model, "module", model)
    chains = find_chains(model) if chains is None else list(chains)
    new = copy.deepcopy(module)
    by_container: dict[str, list[Chain]] = {}
    for c in chains:
        by_container.setdefault(c.container, []).append(c)
    arch = None
    for cont, cs in by_container.items():
        parent = new.get_submodule(cont) if cont else new
        seq_runs = [c for c in cs if not c.whole and not isinstance(parent.get_submodule(c.members[0]), InsertedLinear)]
        for c in cs:
            if c not in seq_runs:
                W, b = chain_affine(new, c)
                setattr(parent, c.members[0], _linear(W, b, new.get_submodule(c.factors[0]).weight))
        if seq_runs:
            start = {c.members[0]: c for c in seq_runs}
            skip = {m for c in seq_runs for m in c.members[1:]}
            kids, layers_out = [], []
            layers_in = model.config.get("layers") if (isinstance(model, LoadedModel) and model.fmt == "zoo"
                                                       and parent is new and not cont) else None
            if layers_in is not None and len(layers_in) != len(parent):
                layers_in = None
            for idx, (name, child) in enumerate(parent.named_children()):
                if name in skip:
                    continue
                if name in start:
                    W, b = chain_affine(new, start[name])
                    kids.append(_linear(W, b, child.weight))
                    layers_out.append({"type": "linear", "out_features": int(W.shape[0]), "bias": b is not None})
                else:
                    kids.append(child)
                    if layers_in is not None:
                        layers_out.append(layers_in[idx])
            merged = nn.Sequential(*kids)
            if cont:
                gp, _, leaf = cont.rpartition(".")
                setattr(new.get_submodule(gp) if gp else new, leaf, merged)
            else:
                new = merged
            if layers_in is not None:
                arch = {**model.config, "layers": layers_out}
    new.eval()
    if not isinstance(model, LoadedModel):
        return new
    info = {k: v for k, v in model.info.items() if k != "inserted"}
    return replace(model, module=new, config=arch if arch is not None else model.config, source=None,
                   info={**info, "merged_chains": len(chains)})


def merged_path(chains: Sequence[Chain], chain: Chain) -> str:
    """Module path of ``chain``'s merged Linear in the merged model (run indices renumbered)."""
    if chain.whole or len(chain.members) == 1:
        return _path(chain.container, chain.members[0])
    first = int(chain.members[0])
    removed = sum(len(c.members) - 1 for c in chains
                  if c.container == chain.container and not c.whole and len(c.members) > 1 and int(c.members[0]) < first)
    return _path(chain.container, str(first - removed))


def freeze_inserted(module: nn.Module, chains: Sequence[Chain]) -> nn.Module:
    """A copy of ``module`` with the inserted factors' parameters frozen (requires_grad False)."""
    new = copy.deepcopy(module)
    for c in chains:
        for i in c.inserted:
            for p in new.get_submodule(c.factors[i]).parameters(recurse=False):
                p.requires_grad_(False)
    return new


def inserted_parameters(module: nn.Module, chains: Sequence[Chain]) -> int:
    """Parameters held by the inserted factors (the merge removes exactly these)."""
    return sum(p.numel() for c in chains for i in c.inserted
               for p in module.get_submodule(c.factors[i]).parameters(recurse=False))


__all__ = ["Chain", "chain_affine", "factor_tensors", "find_chains", "freeze_inserted", "inserted_parameters",
           "merge_chains", "merged_path"]
