"""convrate's statements against toydefense, as a user of convrate writes them."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from convrate import strategies as cst


# Every applicable statement (FPLR, T-CLAIM, T1, T2, W, R1, R2), one test item each.
@pytest.mark.convrate(defense="toydefense:defend")
def test_defend(convrate_battery):
    convrate_battery.check()


# No T returned: convrate infers it from the reference and defended weights.
@pytest.mark.convrate(defense="toydefense:defend_without_T", statements=["FPLR", "T-CLAIM", "T1"])
def test_defend_without_T(convrate_battery):
    convrate_battery.check()


# A defense on weights dicts, checked on this project's own models (a user strategy).
deep_mlps = cst.mlps(widths=st.lists(st.integers(2, 4), min_size=4, max_size=4))


@pytest.mark.convrate(defense="toydefense:defend_weights", statements=["FPLR", "R2"], models=deep_mlps)
def test_defend_weights(convrate_battery):
    convrate_battery.check()


# convrate's strategies compose with the project's own properties.
@given(model=cst.mlps(), K=st.sampled_from([10.0, 1e3]))
def test_strength_is_kappa(model, K):
    from toydefense.defense import defend

    _, T = defend(model.module, K=K)
    # kappa(D) = K^(1/2) / K^(-1/2): two float64 powers and a division, a few roundings of
    # relative size u = 2^-53 each, far below 1e-12
    assert all(abs(s.kappa(e) / K - 1) < 1e-12 for s, e in T.items if s.width > 1)
