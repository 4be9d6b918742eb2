"""Shared by the inserted-form tests: a grown release built outside convrate (torch + safetensors only)."""
from __future__ import annotations

import copy
import json

import torch
from safetensors.torch import save_file
from torch import nn

INSERTED_JSON = "convrate_inserted.json"  # the README convention, spelled out rather than imported


def external_hf_release(m, out, names, alpha: float, k: int) -> nn.Module:
    """What a user outside convrate does, with torch and safetensors only: every named Linear of
    the HF model ``m`` becomes nn.Sequential(Linear(W', b'), Linear(C)) with W' = A W, b' = A b,
    A = U diag(alpha x k, 1, ...) U^T, C = A^-1; the state dict is renamed to the README convention
    (<name>.0.* -> <name>.*, <name>.1.weight -> <name>.convrate_inserted.weight) and written with
    config.json and convrate_inserted.json into ``out``. Returns the grown module."""
    out.mkdir()
    grown = copy.deepcopy(m.module)
    for n in names:
        lin = grown.get_submodule(n)
        W, b = lin.weight.detach().to(torch.float64), lin.bias.detach().to(torch.float64)
        U = torch.linalg.svd(W)[0]
        d = torch.ones(W.shape[0], dtype=torch.float64)
        d[:k] = alpha
        A, C = U @ torch.diag(d) @ U.T, U @ torch.diag(1 / d) @ U.T
        first = nn.Linear(W.shape[1], W.shape[0], dtype=lin.weight.dtype)
        second = nn.Linear(W.shape[0], W.shape[0], bias=False, dtype=lin.weight.dtype)
        with torch.no_grad():
            first.weight.copy_(A @ W), first.bias.copy_(A @ b), second.weight.copy_(C)
        parent, _, leaf = n.rpartition(".")
        setattr(grown.get_submodule(parent), leaf, nn.Sequential(first, second))
    sd = {}
    for key, t in grown.state_dict().items():
        for n in names:
            if key.startswith(n + ".0."):
                key = n + "." + key[len(n) + 3:]
            elif key == n + ".1.weight":
                key = n + ".convrate_inserted.weight"
        sd[key] = t.detach().contiguous()
    m.module.config.to_json_file(str(out / "config.json"))
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    layers = [{"name": n, "side": "output"} for n in names]
    (out / INSERTED_JSON).write_text(json.dumps({"format": "convrate-inserted", "version": 1, "layers": layers}))
    return grown
