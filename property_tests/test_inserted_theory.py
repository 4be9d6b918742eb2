"""Statements I, PREC-ALPHA and M beyond the exact battery (``numerics.checks_inserted``, run by
test_battery): the corrected PREC-ALPHA on torch modules, the conserved imbalance on a real float64
network, the certified safe alpha, and the report section's registration.
"""
from __future__ import annotations

import copy
from fractions import Fraction

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convrate.models.chains import chain_affine, find_chains
from convrate.models.inserted import InsertedLinear, InsertedSpecDef
from convrate.models.testing import mlp_arch, random_zoo
from convrate.theory import bounds_inserted as bi


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 12), j=st.integers(1, 30),
       dtype=st.sampled_from([torch.float64, torch.float32]))
def test_full_rank_inserted_form_has_no_alpha_growth(seed, n, j, dtype):
    """PREC-ALPHA's counterexample family on a torch module: k = s makes C = alpha^-1 I and
    W' = alpha W exactly; for alpha = 2^j every product is scaled exactly (no overflow or
    subnormals at these sizes), so the computed output is bit-identical to alpha = 1 -- where
    u alpha sigma_1 / sigma_k predicts a 2^j-fold error."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    x = torch.randn(7, n, generator=g, dtype=torch.float64).to(dtype)
    outs = []
    for a in (1.0, 2.0**j):
        m = InsertedLinear.from_factors(a * W, a * b, torch.eye(n, dtype=dtype) / a, None, "output")
        with torch.no_grad():
            outs.append(m(x))
    assert torch.equal(outs[0], outs[1])


def test_imbalance_is_conserved_up_to_the_eta_squared_terms():
    """Statement I on the digits-shaped MLP (float64, C trained, output side, bias on W' so the
    augmented F1 = [W' | b']): over T small SGD steps Q = C^T C - F1 F1^T moves by exactly the sum of
    eta^2 (F1 G^T G F1^T - C^T G G^T C) (the battery's identity), so ||Q_T - Q_0|| <= sum ||.||; and
    lambda_max(F1 F1^T) stays >= -lambda_min(Q_0) - ||Q_T - Q_0||_2 (Weyl), the imbalance floor
    alpha^2 sigma_1^2 - alpha^-2 up to that drift. Float64 round-off per step ~ 1e-14 relative."""
    m = random_zoo(mlp_arch([16, 8, 4]), 4)
    alpha, eta, T = 20.0, 1e-3, 40
    g = InsertedSpecDef(2, alpha, layers="0").apply(m).model
    net = copy.deepcopy(g.module)
    chain = find_chains(g)[0]
    X = torch.randn(32, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(32) % 4

    def parts():
        C = net.get_submodule(chain.factors[1]).weight.detach().clone()
        main = net.get_submodule(chain.factors[0])
        return C, torch.cat([main.weight.detach(), main.bias.detach()[:, None]], 1)

    C0, F0 = parts()
    Q0 = C0.T @ C0 - F0 @ F0.T
    drift = 0.0
    for _ in range(T):
        C, F1 = parts()
        W, b = chain_affine(net, chain)
        lin = nn.Linear(16, 8, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(W), lin.bias.copy_(b)
        head = copy.deepcopy(net[2:])
        nn.functional.cross_entropy(head(torch.relu(lin(X))), y).backward()
        Ga = torch.cat([lin.weight.grad, lin.bias.grad[:, None]], 1)
        drift += float((eta**2 * (F1 @ Ga.T @ Ga @ F1.T - C.T @ Ga @ Ga.T @ C)).norm())
        net.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= eta * p.grad
        net.zero_grad()
    C, F1 = parts()
    dQ = C.T @ C - F1 @ F1.T - Q0
    assert float(dQ.norm()) <= drift * (1 + 1e-6) + 1e-12 * float(Q0.norm())
    assert drift > 0
    floor = -float(torch.linalg.eigvalsh(Q0)[0])
    assert float(torch.linalg.eigvalsh(F1 @ F1.T)[-1]) >= floor - float(torch.linalg.matrix_norm(dQ, ord=2)) - 1e-9
    s1 = float(torch.linalg.svdvals(m.module[0].weight.detach())[0])
    assert floor >= bi.imbalance_floor(s1, alpha) * (1 - 1e-9)  # the bias only adds to W' W'^T


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 16), m=st.integers(1, 16), data=st.data())
def test_certified_safe_alpha_orders(n, m, data):
    """More tolerance or a finer format never certifies less; k = s has no alpha limit."""
    r = min(m, n)
    sig = sorted(data.draw(st.lists(st.integers(1, 50), min_size=r, max_size=r)), reverse=True)
    k = data.draw(st.integers(1, r))
    side = data.draw(st.sampled_from(bi.SIDES))
    sig = [Fraction(x, 10) for x in sig]
    f = lambda d, t: bi.certified_safe_alpha(d, side, n, m, k, sig, t, alpha_max=1e12, per_decade=2)  # noqa: E731
    assert f("fp32", 1e-3) <= f("fp32", 1e-2)
    assert f("fp64", 1e-3) >= f("fp32", 1e-3) >= f("bf16", 1e-3)
    if k == bi.side_width(side, m, n) and f("fp64", 1e-6) >= 1:
        assert f("fp64", 1e-6) == 1e12


def test_report_section_registered():
    from convrate.reports import builder, profiles

    names = [n for n, _ in builder.sections()]
    assert "inserted" in names and names.index("inserted") < len(names) - 1  # the statements table stays last
    for p in (profiles.QUICK, profiles.FULL):
        assert p.inserted is not None and p.inserted.k >= 1 and p.inserted.mlp_alphas
