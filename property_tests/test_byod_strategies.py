"""convrate.strategies draw what they say, and the defense protocol's pieces behave.

Exact instances are compared exactly (flint rationals). Float64 instances: a matrix built as
sigma_max U diag(sigma) V^T from Householder QR factors has singular values within
c (rows + cols) u sigma_max of the requested ones (orthogonality of the QR factors
~ m u, the product gamma_k, the SVD's backward error ~ p u ||W||: Weyl's inequality; c = 10
covers the three constants), so the tests use 10 (rows + cols) u sigma_max.
"""
from __future__ import annotations

import math

import pytest
import torch
from flint import fmpq
from hypothesis import given, settings
from hypothesis import strategies as st

from convrate import strategies as cst
from convrate.byod import STATEMENTS, DefenseCallable, DefenseSpecError, load_defense, select_statements, takes_weights
from convrate.models import byod
from convrate.models.attacks import OPTIMIZERS, Attack
from convrate.models.defense import SpecDef
from convrate.models.symmetry import TorchReparameterization
from convrate.theory.core import compare

U = 2.0**-53




def _geometric(sigma_max: float, kappa: float, k: int) -> torch.Tensor:
    return sigma_max * kappa ** (-torch.arange(k, dtype=torch.float64) / max(k - 1, 1))


def _assert_spectrum(W: torch.Tensor, sigma_max: float, kappa: float) -> None:
    rows, cols = W.shape
    want = _geometric(sigma_max, kappa, min(rows, cols))
    got = torch.linalg.svdvals(W.detach())
    assert float((got - want).abs().max()) <= 10 * (rows + cols) * U * sigma_max, (got, want)


@given(data=st.data(), sigma_max=st.floats(0.1, 10.0), kappa=cst.log_uniform(1.0, 1e4))
def test_mlps_have_the_requested_weight_spectra(data, sigma_max, kappa):
    m = data.draw(cst.mlps(sigma_max=sigma_max, kappa=kappa))
    assert m.dtype == torch.float64 and m.kind == "mlp"
    for lin in (x for x in m.module if isinstance(x, torch.nn.Linear)):
        _assert_spectrum(lin.weight, sigma_max, kappa)


@settings(max_examples=4)
@given(data=st.data(), kappa=cst.log_uniform(1.0, 1e3))
def test_attention_blocks_have_the_requested_spectra(data, kappa):
    pytest.importorskip("transformers")
    m = data.draw(cst.attention_blocks(sigma_max=1.0, kappa=kappa))
    att = m.module.encoder.layer[0].attention
    for lin in (att.self.query, att.self.key, att.self.value, att.output.dense):
        _assert_spectrum(lin.weight, 1.0, kappa)


@given(data=st.data(), n=st.integers(2, 5), kappa=st.integers(2, 10**4), seed=st.integers(0, 2**20))
def test_quadratics_have_the_controlled_spectrum(data, n, kappa, seed):
    fixed = dict(n=n, kappa=kappa, seeds=st.just(seed))
    p = data.draw(cst.quadratics(rotate=False, **fixed))
    q = data.draw(cst.quadratics(rotate=True, **fixed))
    lam = p.lambdas
    assert min(lam) == 1 and max(lam) == kappa  # exact rationals
    # the rotated problem is the same one in another orthonormal basis: same characteristic
    # polynomial and same initial loss, exactly
    assert q.H.charpoly() == p.H.charpoly()
    assert q.q0 == p.q0


@given(data=st.data(), n=st.integers(2, 5), kappa=st.integers(2, 10**3), seed=st.integers(0, 2**20))
def test_quadratic_reparameterizations_have_kappa(data, n, kappa, seed):
    T = data.draw(cst.quadratic_reparameterizations(n=n, kappa=kappa, kind=0, seeds=st.just(seed)))
    # T = Q1 diag(d) Q2 with d in [1, kappa], d_1 = 1, d_n = kappa: T^T T has the exact
    # eigenvalues 1 and kappa^2, so its characteristic polynomial vanishes there
    cp = (T.transpose() * T).charpoly()
    assert cp(fmpq(1)) == 0 and cp(fmpq(kappa * kappa)) == 0


@given(data=st.data(), kappa=cst.log_uniform(1.0, 1e3), family=st.sampled_from([None, "S2"]))
def test_reparameterizations_have_kappa_and_preserve_the_function(data, kappa, family):
    inst = data.draw(cst.instances("mlp"))
    rec = data.draw(cst.reparameterizations(inst.model, kappa=kappa, family=family))
    assert isinstance(rec, TorchReparameterization)
    for sym, e in rec.items:
        if sym.width > 1:  # kappa(A) = K: a ratio of two powers of K, a few roundings each
            assert abs(sym.kappa(e) / kappa - 1) <= 8 * U * max(1.0, math.log(kappa)), (sym.kappa(e), kappa)
    d = byod.Defended(inst, rec.apply_to_module(inst.model.module), rec, "claimed", "strategies")
    for check in (byod.check_fplr, byod.check_t_claim):
        for r in check(d):
            assert r.holds, r


@settings(max_examples=4)
@given(data=st.data(), kappa=cst.log_uniform(1.0, 1e3))
def test_s1_reparameterizations_have_kappa(data, kappa):
    pytest.importorskip("transformers")
    m = data.draw(cst.attention_blocks())
    rec = data.draw(cst.reparameterizations(m, kappa=kappa, family="S1"))
    assert rec.items and all(s.family == "S1" for s, _ in rec.items)
    for sym, A in rec.items:
        # sigma(A) from sqrt(K) to 1/sqrt(K): the smallest carries an absolute error
        # ~ 10 r u sqrt(K) (module doc), i.e. a relative one ~ 10 r u K
        assert abs(sym.kappa(A) / kappa - 1) <= 10 * 2 * sym.width * U * kappa, (sym.kappa(A), kappa)


@given(a=cst.attacks())
def test_attacks_are_valid_configurations(a):
    assert isinstance(a, Attack) and a.optimizer in OPTIMIZERS and a.device == "cpu"
    assert 1e-4 * (1 - 1e-12) <= a.lr <= 1e-1 * (1 + 1e-12) and 1 <= a.budget <= 50


@given(inst=cst.instances(cst.mlps(widths=st.just([2, 3, 2]))))
def test_instances_compose_with_user_model_strategies(inst):
    assert inst.model.module[0].in_features == 2 and inst.X.shape == (12, 2) and inst.Y.shape == (12, 2)
    assert repr(inst).startswith("mlp widths=[2, 3, 2]")


def test_protocol_and_loading():
    def defend(model):
        return model

    assert isinstance(defend, DefenseCallable)
    assert takes_weights(defend).convrate_input == "weights"
    assert load_defense(defend) is defend
    wrapped = load_defense(SpecDef(10))  # the project's own defense satisfies the protocol
    inst = byod.first_instance("mlp")
    d = byod.apply_defense(wrapped, inst)
    assert d.source == "claimed" and abs(d.record.kappa_A() / 10 - 1) <= 8 * U * math.log(10)
    with pytest.raises(DefenseSpecError, match="not a callable"):
        load_defense("convrate.byod:KINDS")
    assert select_statements(None, "attention") == [s for s in STATEMENTS if "attention" in STATEMENTS[s].kinds]


def test_register_statement_extends_both_runners():
    from convrate.byod import DefenseStatement

    def check(d):  # a user's statement: the defense does not shrink the parameter norm
        a = sum(float(p.detach().norm() ** 2) for p in d.instance.model.module.parameters())
        b = sum(float(p.detach().norm() ** 2) for p in d.module.parameters())
        return [compare("NORM", d.label, b, ">=", a * (1 - 1e-12), precision="float64 sums")]

    st_ = DefenseStatement("NORM", "||theta'|| >= ||theta|| (test)", needs_T=False)
    byod.register_statement(st_, check)
    try:
        entries, skipped, _ = byod.defense_entries(SpecDef(10), ["NORM"])
        assert [e.statements for e in entries] == [("NORM",)] and not skipped
        results, why = byod.run_defense_entry(entries[0], 3)
        assert why is None and len(results) == 3
    finally:
        STATEMENTS.pop("NORM")
        byod.CHECKS.pop("NORM")
