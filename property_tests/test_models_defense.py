"""Defenses: SpecDef / DiagonalScaling / Identity build the stated group elements, leave the
input untouched, preserve the function, refuse bad strengths and unsafe dtypes."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convrate.errors import InvalidInputError, PrecisionError
from convrate.models.defense import DiagonalScaling, Identity, SpecDef, defense_by_name, profile_values
from convrate.models.io import load_model
from convrate.models.symmetry import TorchReparameterization
from convrate.models.testing import cnn_arch, mlp_arch, random_zoo, tiny_bert
from convrate.theory.bounds import specdef_geometric_profile, specdef_spike_profile




U = 2.0**-53


@pytest.mark.parametrize("K", [1, 1.0, 0.5, 0, -3, math.nan, math.inf, -math.inf, "abc", None])
@pytest.mark.parametrize("cls", [SpecDef, DiagonalScaling])
def test_bad_strength_rejected(cls, K):
    with pytest.raises(InvalidInputError, match="strength K must be a finite number > 1"):
        cls(K)


def test_bad_profile_and_name():
    with pytest.raises(InvalidInputError, match="unknown SpecDef profile"):
        SpecDef(10, profile="cubic")
    with pytest.raises(InvalidInputError, match="unknown defense"):
        defense_by_name("rotation", 10)


@given(seed=st.integers(0, 2**20), K=st.floats(1.01, 1e6), profile=st.sampled_from(["geometric", "spike"]),
       cnn=st.booleans())
def test_specdef_s2_elements(seed, K, profile, cnn):
    m = random_zoo(cnn_arch([3, 4], side=4) if cnn else mlp_arch([5, 6, 4, 3]), seed)
    before = {n: p.clone() for n, p in m.module.named_parameters()}
    res = SpecDef(K, profile).apply(m, dtypes=(torch.float64,))
    for n, p in m.module.named_parameters():
        assert torch.equal(p, before[n]), f"input parameter {n} modified"
    prof = specdef_geometric_profile if profile == "geometric" else specdef_spike_profile
    params = dict(m.module.named_parameters())
    for sym, d in res.record.items:
        r = sym.width
        s = torch.tensor([float(x) for x in prof(K, r)], dtype=torch.float64)
        # units sorted by incoming norm ||(W_a[i], b_a[i])|| receive s_1 >= s_2 >= ...
        W = torch.cat([params[sl.param].detach()[sl.start:sl.stop].reshape(r, -1)
                       for sl in sym.slots if sl.op == "A"], dim=1)
        order = torch.argsort(W.norm(dim=1), descending=True, stable=True)
        assert torch.equal(d[order], s)
        if r > 1:  # kappa = K and det = 1 to float64 round-off of the profile (r powers)
            assert math.isclose(float(d.max() / d.min()), K, rel_tol=4 * r * U * max(1, math.log(K)))
            assert abs(float(torch.log(d).sum())) <= 4 * r * U * max(1.0, math.log(K)) * r
    assert res.preservation["float64"].ok
    assert res.release_dtype == "float64"


@settings(max_examples=6)
@given(seed=st.integers(0, 2**20), K=st.floats(1.01, 1e4), profile=st.sampled_from(["geometric", "spike"]))
def test_specdef_s1_elements(seed, K, profile):
    pytest.importorskip("transformers")
    m = tiny_bert(seed, hidden=6, heads=2)
    res = SpecDef(K, profile).apply(m, dtypes=(torch.float64,))
    params = dict(m.module.named_parameters())
    for sym, A in res.record.items:
        r = sym.width
        assert torch.allclose(A, A.T, rtol=0, atol=0)
        sv = torch.linalg.svdvals(A)
        expect = profile_values(K, r, profile)
        # U diag(s) U^T and its SVD are backward stable: errors <= c r u sigma_max(A)
        assert torch.allclose(sv, expect, rtol=0, atol=64 * r * U * float(expect.max()))
        # A W_a = U diag(s) Sigma V^T: the singular values of A W_a are s_i sigma_i
        sl = next(s for s in sym.slots if s.op == "A" and s.param.endswith("weight"))
        Wa = params[sl.param].detach()[sl.start:sl.stop]
        sw = torch.linalg.svdvals(Wa)
        got = torch.linalg.svdvals(A @ Wa)
        want = torch.sort(expect * sw, descending=True).values
        assert torch.allclose(got, want, rtol=0, atol=64 * r * U * float(expect.max()) * float(sw.max()))
    assert res.preservation["float64"].ok
    assert math.isclose(res.record.kappa_A(), K, rel_tol=1e-10)


def test_diagonal_and_identity():
    m = random_zoo(mlp_arch([4, 8, 3]), 1)
    res = DiagonalScaling(50, seed=3).apply(m)
    (sym, d), = res.record.items
    assert math.isclose(float(d.max() / d.min()), 50, rel_tol=1e-12)
    assert sorted(d.tolist()) == sorted(profile_values(50, 8, "geometric").tolist())
    assert not torch.equal(d, profile_values(50, 8, "geometric"))  # coordinates permuted
    ident = Identity().apply(m)
    assert ident.record.kappa_T() == 1.0
    for p, q in zip(m.module.parameters(), ident.model.module.parameters()):
        assert torch.equal(p, q)
    assert ident.preservation["float64"].deviation == 0.0


def test_preservation_report_and_fp16_refusal():
    m = random_zoo(mlp_arch([6, 8, 4]), 2)
    rep = SpecDef(100).apply(m).preservation
    assert set(rep) == {"float64", "float32", "bfloat16", "float16"}
    assert all(v.ok for v in rep.values()), rep
    half = m.with_module(m.module.to(torch.float16))
    with pytest.raises(PrecisionError, match=r"largest safe K for float16 is about") as e:
        SpecDef(1e14).apply(half)
    safe = float(str(e.value).rsplit("about", 1)[1])
    assert 1 < safe < 1e14
    ok = SpecDef(safe).apply(half)
    assert ok.preservation["float16"].ok and ok.model.dtype == torch.float16
    assert all(bool(torch.isfinite(p).all()) for p in ok.model.module.parameters())


def test_defended_release_roundtrip(tmp_path):
    m = random_zoo(cnn_arch([2, 3], side=4), 5)
    res = SpecDef(1000, "spike").apply(m)
    out, rec_dir = res.save(tmp_path / "release")
    assert not (out / "reparameterization.json").exists()  # the secret record lives elsewhere
    back = load_model(out)
    rec = TorchReparameterization.load(rec_dir)
    assert rec.meta["defense"] == "specdef" and rec.meta["K"] == 1000
    # R1 with the record: T^-1 theta' recovers theta
    restored = rec.inverse().apply_to_module(back.module)
    for (n, p), q in zip(m.module.named_parameters(), restored.parameters()):
        assert torch.allclose(p, q, rtol=2**-53 * 8, atol=0), n
    with pytest.raises(InvalidInputError, match="refusing to overwrite the input directory"):
        from convrate.models.io import save_model

        save_model(back, out)
