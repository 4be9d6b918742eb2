"""The inserted form on real torch modules, float64 (models.inserted, models.chains, models.inserted_io).

Families: the zoo MLP and CNN (linear head), a tiny BERT and tiny Llama / Qwen2 / Mistral decoders
(``models.testing``), both sides of C. Tolerances are argued from float64 round-off: every
quantity below is a few products of matrices of size <= 64 with kappa(C) <= alpha, so its error
is at most ~ (n + s + 2) u alpha ||.|| (PREC-ALPHA's first-order form) -- with alpha <= 1e3 and
n + s <= 200 that is < 3e-11 relative; the assertions use 1e-9, two orders above it and seven
below any change a defense bug would cause (the deformation itself is O(alpha)).
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn

from convrate.errors import InvalidInputError, PrecisionError
from convrate.models.chains import chain_affine, find_chains, freeze_inserted, merge_chains, merged_path
from convrate.models.inserted import InsertedLinear, InsertedSpecDef, linear_layers, select_layers
from convrate.models.inserted_io import INSERTED_JSON
from convrate.models.io import load_model, save_model, zoo_model
from convrate.theory import bounds_inserted as bi
from inserted_helpers import external_hf_release
from convrate.models.testing import (bert_inputs, cnn_arch, decoder_inputs, mlp_arch, random_zoo, tiny_bert,
                                     tiny_decoder)

TOL = 1e-9


def _family(name: str, seed: int = 0):
    if name == "mlp":
        return random_zoo(mlp_arch([8, 6, 5]), seed)
    if name == "cnn":
        return random_zoo(cnn_arch([2], side=4, n_out=3), seed)
    if name == "bert":
        return tiny_bert(seed)
    return tiny_decoder(name, seed, tie_embeddings=(name == "llama"))


def _inputs(model, seed: int = 1):
    if model.fmt == "zoo":
        return model.probe_inputs(n=5, seed=seed)
    return (bert_inputs if model.kind == "bert" else decoder_inputs)(model, 2, 5, seed)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (absolute when b = 0)."""
    d = float((a - b).norm())
    return d / float(b.norm()) if float(b.norm()) > 0 else d


FAMILIES = ["mlp", "cnn", "bert", "llama", "qwen2", "mistral"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["output", "input"])
def test_inserted_form_preserves_function_and_deforms_spectrum(family, side):
    m = _family(family)
    alpha, k = 1000.0, 2
    res = InsertedSpecDef(k, alpha, side=side).apply(m)
    g = res.model
    x = _inputs(m)
    with torch.no_grad():
        assert _rel(g.output(x), m.output(x)) <= TOL
    chains = find_chains(g)
    assert sorted(merged_path(chains, c) for c in chains) == sorted(i.name for i in res.layers)
    assert len(res.layers) == len(linear_layers(m.module))  # every eligible Linear (tied lm_head excluded)
    mods = dict(m.module.named_modules())
    for c in chains:
        W0 = mods[merged_path(chains, c)].weight.detach()
        main = g.module.get_submodule(c.factors[c.main]).weight.detach()
        C = g.module.get_submodule(c.factors[c.inserted[0]]).weight.detach()
        s0, s1 = torch.linalg.svdvals(W0), torch.linalg.svdvals(main)
        want = torch.cat([alpha * s0[:k], s0[k:]]).sort(descending=True).values
        assert _rel(s1, want) <= TOL  # W' = top-k singular values x alpha
        assert C.shape[0] == (W0.shape[0] if side == "output" else W0.shape[1])
        assert _rel(chain_affine(g.module, c)[0], W0) <= TOL  # C W' = W
        sc = torch.linalg.svdvals(C)
        assert abs(float(sc[0] / sc[-1]) / alpha - 1) <= TOL  # kappa(C) = alpha (k < s)
    assert res.preservation["float64"].ok
    for i in res.layers:  # rho = ||C||_2 ||W'||_2 / ||W||_2 of the built chain = the closed form (= alpha, k < s)
        S = torch.linalg.svdvals(mods[i.name].weight.detach()).tolist()
        assert abs(i.amplification / float(bi.amplification(S, k, alpha, bi.side_width(side, *i.shape))) - 1) <= TOL


@pytest.mark.parametrize("family", ["mlp", "cnn", "bert", "llama"])
def test_merge_restores_the_original(family):
    m = _family(family, 3)
    g = InsertedSpecDef(1, 300.0).apply(m).model
    merged = merge_chains(g)
    ref, got = dict(m.module.named_parameters()), dict(merged.module.named_parameters())
    assert set(ref) == set(got)
    for n, p in ref.items():
        assert _rel(got[n].detach(), p.detach()) <= TOL
    assert sum(p.numel() for p in g.module.parameters()) - sum(p.numel() for p in merged.module.parameters()) == \
        sum(i.inserted_parameters for i in InsertedSpecDef(1, 300.0).apply(m).layers)
    if m.fmt == "zoo":
        assert merged.config["layers"] == m.config["layers"] or all(
            a.get("type") == b.get("type") for a, b in zip(merged.config["layers"], m.config["layers"]))


def test_layer_choice_pattern_top_and_tied():
    m = tiny_decoder("llama", 0, tie_embeddings=True)
    names = linear_layers(m.module)
    assert "lm_head" not in names  # tied to the embedding table
    assert select_layers(m.module, "*.q_proj,*.v_proj") == [n for n in names if n.endswith(("q_proj", "v_proj"))]
    top = select_layers(m.module, top=3)
    s1 = {n: float(torch.linalg.matrix_norm(m.module.get_submodule(n).weight.detach(), ord=2)) for n in names}
    assert sorted(s1[n] for n in top) == sorted(s1.values())[-3:]
    with pytest.raises(InvalidInputError, match="matches no linear layer"):
        select_layers(m.module, "nothing.*")
    with pytest.raises(InvalidInputError, match="either"):
        select_layers(m.module, "*", top=2)


def test_bad_input_is_refused():
    m = random_zoo(mlp_arch([8, 6, 5]), 0)
    for kw, msg in (({"alpha": 0.0}, "alpha"), ({"alpha": -3.0}, "alpha"), ({"alpha": math.nan}, "alpha"),
                    ({"alpha": math.inf}, "alpha")):
        with pytest.raises(InvalidInputError, match=msg):
            InsertedSpecDef(2, **kw)
    with pytest.raises(InvalidInputError, match="out of range"):
        InsertedSpecDef(6, 10.0).apply(m)  # the 5x6 layer has 5 singular values
    with pytest.raises(InvalidInputError, match="k must"):
        InsertedSpecDef(0, 10.0)
    bad = random_zoo(mlp_arch([8, 6, 5]), 0)
    with torch.no_grad():
        bad.module[0].weight[0, 0] = math.nan
    with pytest.raises(InvalidInputError, match="non-finite"):
        InsertedSpecDef(1, 10.0).apply(bad)
    g = InsertedSpecDef(1, 10.0).apply(m).model
    with pytest.raises(InvalidInputError, match="already has inserted"):
        InsertedSpecDef(1, 10.0).apply(g)


def test_unsafe_alpha_refused_with_the_limit():
    m = random_zoo(mlp_arch([8, 6, 5]), 0)
    m32 = m.with_module(m.module.to(torch.float32))
    with pytest.raises(PrecisionError, match=r"largest safe alpha for float32 is about"):
        InsertedSpecDef(2, 1e9).apply(m32)


# ---------------------------------------------------------------- formats
@pytest.mark.parametrize("side", ["output", "input"])
def test_zoo_release_round_trip(tmp_path, side):
    m = random_zoo(mlp_arch([8, 6, 5]), 2)
    g = InsertedSpecDef(2, 50.0, side=side, layers="0").apply(m).model
    save_model(g, tmp_path / "r")
    arch = json.loads((tmp_path / "r" / "arch.json").read_text())
    marks = [i for i, s in enumerate(arch["layers"]) if s.get("inserted")]
    assert len(marks) == 1 and arch["layers"][marks[0]]["inserted"]["side"] == side
    g2 = load_model(tmp_path / "r")
    x = m.probe_inputs()
    assert torch.equal(g2.output(x), g.output(x))
    assert [c.factors for c in find_chains(g2)] == [c.factors for c in find_chains(g)]


@pytest.mark.parametrize("layers, msg", [
    ([{"type": "linear", "out_features": 6}, {"type": "linear", "out_features": 5, "bias": False,
                                               "inserted": {"side": "output"}}], "square"),
    ([{"type": "linear", "out_features": 6}, {"type": "relu"},
      {"type": "linear", "out_features": 6, "bias": False, "inserted": {"side": "output"}}], "follow"),
    ([{"type": "linear", "out_features": 6}, {"type": "linear", "out_features": 6, "inserted": {"side": "up"}}],
     "side"),
    ([{"type": "linear", "out_features": 6}, {"type": "linear", "out_features": 6,
                                               "inserted": {"side": "output", "alpha": -1}}], "alpha"),
])
def test_zoo_marker_validation(layers, msg):
    with pytest.raises(InvalidInputError, match=msg):
        zoo_model({"kind": "mlp", "input_shape": [8], "layers": layers, "dtype": "float64"}, seed=0)


def test_hf_release_round_trip_and_convention(tmp_path):
    m = tiny_bert(1)
    g = InsertedSpecDef(2, 100.0, layers="*.query,*.value", side="output").apply(m).model
    save_model(g, tmp_path / "r")
    js = json.loads((tmp_path / "r" / INSERTED_JSON).read_text())
    assert {e["name"] for e in js["layers"]} == {"encoder.layer.0.attention.self.query",
                                                 "encoder.layer.0.attention.self.value"}
    keys = set(load_file(str(tmp_path / "r" / "model.safetensors")))
    assert {e["weight"] for e in js["layers"]} <= keys
    g2 = load_model(tmp_path / "r")
    x = _inputs(m)
    assert isinstance(g2.module.get_submodule("encoder.layer.0.attention.self.query"), InsertedLinear)
    with torch.no_grad():
        assert torch.equal(g2.output(x), g.output(x))


def test_external_hf_release_loads(tmp_path):
    m = tiny_bert(2)
    names = ["encoder.layer.0.attention.self.key", "encoder.layer.0.intermediate.dense"]
    external_hf_release(m, tmp_path / "ext", names, 64.0, 1)
    g = load_model(tmp_path / "ext")
    assert sorted(c.container + "." + c.members[0] for c in find_chains(g)) == sorted(names)
    x = _inputs(m)
    with torch.no_grad():
        assert _rel(g.output(x), m.output(x)) <= TOL
    bad = json.loads((tmp_path / "ext" / INSERTED_JSON).read_text())
    bad["layers"][0]["side"] = "sideways"
    (tmp_path / "ext" / INSERTED_JSON).write_text(json.dumps(bad))
    with pytest.raises(InvalidInputError, match="side"):
        load_model(tmp_path / "ext")


def test_unmarked_chains_in_a_plain_module():
    """A user's module whose Linear became nn.Sequential(Linear(W'), Linear(C)): found only with
    unmarked=True, merged back to one Linear at the same path."""
    m = tiny_bert(3)
    res = InsertedSpecDef(1, 20.0, layers="*.output.dense").apply(m)
    import copy

    mod = copy.deepcopy(m.module)  # noqa: F811
    for c in find_chains(res.model):
        Wp, C = (res.model.module.get_submodule(f).weight.detach() for f in (c.factors[0], c.factors[1]))
        bp = res.model.module.get_submodule(c.factors[0]).bias.detach()
        l1, l2 = nn.Linear(Wp.shape[1], Wp.shape[0], dtype=Wp.dtype), nn.Linear(C.shape[0], C.shape[0], bias=False,
                                                                                 dtype=C.dtype)
        with torch.no_grad():
            l1.weight.copy_(Wp), l1.bias.copy_(bp), l2.weight.copy_(C)
        parent = mod.get_submodule(c.container)
        setattr(parent, c.members[0], nn.Sequential(l1, l2))
    assert find_chains(mod) == []
    chains = find_chains(mod, unmarked=True)
    assert len(chains) == 2 and all(c.whole and c.inserted == (1,) and c.side == "output" for c in chains)
    merged = merge_chains(mod, chains)
    for n, p in m.module.named_parameters():
        assert _rel(dict(merged.named_parameters())[n].detach(), p.detach()) <= TOL


# ---------------------------------------------------------------- statement I on a real network, float64
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 1000), side=st.sampled_from(["output", "input"]), frozen=st.booleans())
def test_one_sgd_step_obeys_the_update_law(seed, side, frozen):
    """One SGD step (lr eta) on the grown MLP moves the merged first layer by exactly statement
    I's law: frozen C: -eta C C^T G (output side; -eta G C^T C input side); C trained: -eta (C C^T G
    + G W'^T W') + eta^2 G W'^T C^T G (output side with W' -> [W' | b'], G -> [G | g_b], since b'
    sits on W'; input side mirrored, W' (C x) + b), G the gradient of the merged model.
    Float64 round-off of these few 8x6 products: < 1e-12 relative (module doc)."""
    import copy

    m = random_zoo(mlp_arch([8, 6, 5]), seed)
    g = InsertedSpecDef(2, 30.0, layers="0", side=side).apply(m).model
    chain = find_chains(g)[0]
    X = torch.randn(16, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = torch.arange(16) % 5
    net = freeze_inserted(g.module, [chain]) if frozen else copy.deepcopy(g.module)
    loss = nn.functional.cross_entropy(net(X), y)
    loss.backward()
    eta = 0.05
    Cm = net.get_submodule(chain.factors[chain.inserted[0]]).weight.detach().clone()
    Wp = net.get_submodule(chain.factors[chain.main]).weight.detach().clone()
    bp = net.get_submodule(chain.factors[chain.main]).bias.detach().clone()
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p -= eta * p.grad
    merged0 = merge_chains(g.module, [chain])
    lin = merged0[0]
    lin.weight.grad = None
    nn.functional.cross_entropy(merged0(X), y).backward()
    G, gb = lin.weight.grad.detach(), lin.bias.grad.detach()
    W_new, b_new = chain_affine(net, chain)
    dW, db = W_new - lin.weight.detach(), b_new - lin.bias.detach()
    if side == "output":
        Ga, F1 = torch.cat([G, gb[:, None]], 1), torch.cat([Wp, bp[:, None]], 1)
        F2 = Cm
    else:
        Ga, F2, F1 = G, Wp, Cm
    if frozen:
        law = -eta * (Cm @ Cm.T @ Ga if side == "output" else G @ Cm.T @ Cm)
    else:
        law = -eta * (F2 @ F2.T @ Ga + Ga @ F1.T @ F1) + eta**2 * Ga @ F1.T @ F2.T @ Ga
    assert _rel(dW, law[:, :G.shape[1]]) <= 1e-9
    if side == "output":
        assert _rel(db, law[:, G.shape[1]]) <= 1e-9
    assert _rel(dW, -eta * G) > 1e-3  # the law is not plain SGD on W: the defense acts


@pytest.mark.parametrize("k, alpha, side", [(5, 1000.0, "output"), (2, 0.1, "output"), (2, 50.0, "input"),
                                            (5, 7.0, "input")])
def test_amplification_closed_form(k, alpha, side):
    """rho = ||C||_2 ||W'||_2 / ||W||_2 of the built chain equals bounds_inserted.amplification in
    every regime: alpha for k < s, 1 for k = s (output side of the 5x6 layer), a shrink alpha < 1."""
    m = random_zoo(mlp_arch([8, 6, 5]), 1)
    res = InsertedSpecDef(k, alpha, layers="2", side=side).apply(m)
    (i,) = res.layers
    S = torch.linalg.svdvals(m.module[2].weight.detach()).tolist()
    want = float(bi.amplification(S, k, alpha, bi.side_width(side, *i.shape)))
    assert abs(i.amplification / want - 1) <= TOL
    if k == bi.side_width(side, *i.shape):
        assert abs(want - 1) <= TOL


@pytest.mark.parametrize("family", ["mlp", "bert"])
def test_freeze_inserted_freezes_exactly_the_inserted_factors(family):
    m = _family(family)
    g = InsertedSpecDef(1, 10.0).apply(m).model
    chains = find_chains(g)
    frozen = freeze_inserted(g.module, chains)
    ins = {f"{c.factors[i]}.{w}" for c in chains for i in c.inserted for w in ("weight", "bias")}
    for n, p in frozen.named_parameters():
        assert p.requires_grad == (n not in ins), n
    assert all(p.requires_grad for p in g.module.parameters())  # the input is untouched
