"""Data-parallel curvature on torch.distributed (gloo, CPU, float64) equals the single process.

``models.curvature.agreement.measure`` computes gradient, H v, lambda_max / lambda_min (Lanczos,
tolerance 1e-12, with fresh residuals) and the Hutchinson trace of a small MLP, a tiny BERT and
a tiny Llama decoder (causal-LM loss) on 11 examples; here it runs in this process and in 2 and
3 spawned workers (shards 5/6 and 3/4/4: uneven). Tolerance 1e-10 relative: the distributed sums
differ from the single-process ones only in the order of float64 additions (relative error
<= gamma_m ~ m u, about 1e-14 for these sizes), and a converged extreme Ritz value moves by at
most the change of the operator (Weyl) plus its residual estimate (<= 1e-12 ||H||), so 1e-10
leaves two orders of magnitude; a wrong reduction (a mean per rank, a missing all-reduce, a
rank-weighted shard) is off by O(1).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from convrate.errors import InvalidInputError
from convrate.models.curvature import World, launch
from convrate.models.curvature.agreement import CASES, N_EXAMPLES, measure, measure_and_probe, sharded_measure
from convrate.models.curvature.distributed import chunks

RTOL = 1e-10
QUANTITIES = ("loss", "gradient", "hvp", "lambda_max", "lambda_min", "trace", "attack_losses")


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


@pytest.fixture(scope="module")
def single():
    return measure(World())


@pytest.mark.parametrize("nproc", [2, 3])
def test_distributed_equals_single_process(single, nproc):
    ranks = launch(measure_and_probe, nproc, threads=1)
    assert all(r["disagreement_detected"] for r in ranks)  # the rank check can fail
    # the attack with gradients reduced over micro-batches and ranks follows the plain one
    from convrate.models.attacks import Attack
    from convrate.models.curvature.agreement import agreement_case
    from convrate.models.tasks import tensor_task

    module, X, Y, _ = agreement_case("mlp")
    plain = Attack("adam", 0.05, 6, None, seed=0, device="cpu").run(module, tensor_task(X, Y, loss="squared")).losses
    assert _rel(single["mlp"]["attack_losses"], plain) <= RTOL
    for case in CASES:
        shards = [r["cases"][case]["shard"] for r in ranks]
        assert sum(shards) == N_EXAMPLES and len(set(shards)) > 1  # uneven shards
        got = ranks[0]["cases"][case]
        # every rank ran the replicated Lanczos to the same bits, and reports the same numbers
        assert len({r["cases"][case]["checksum"] for r in ranks}) == 1
        for r in ranks[1:]:
            for q in QUANTITIES:
                assert np.array_equal(np.asarray(r["cases"][case][q]), np.asarray(got[q])), (case, q)
        for q in QUANTITIES:
            assert _rel(got[q], single[case][q]) <= RTOL, (case, q, _rel(got[q], single[case][q]))


def test_single_process_extremes_hold_residual_bounds(single):
    """The measured extremes are eigenvalues within their residual (dense check, MLP case)."""
    import torch

    from convrate.models.curvature import Objective, dense_hessian
    from convrate.models.curvature.agreement import agreement_case

    for case in ("mlp", "decoder"):
        module, X, Y, loss = agreement_case(case)
        ev = torch.linalg.eigvalsh(dense_hessian(Objective(module, X, Y, loss=loss, device="cpu")))
        scale = float(ev.abs().max())
        err = 8 * len(ev) * 2.0**-53 * scale  # eigvalsh's own error
        got = single[case]
        assert abs(float(ev[-1]) - got["lambda_max"]) <= got["lambda_max_residual"] + err
        assert abs(float(ev[0]) - got["lambda_min"]) <= got["lambda_min_residual"] + err


@given(n=st.integers(0, 200), size=st.integers(1, 9), micro=st.one_of(st.none(), st.integers(1, 50)))
def test_shards_partition_the_examples(n, size, micro):
    shards = [World(r, size).shard(n) for r in range(size)]
    assert [i for s in shards for i in s] == list(range(n))
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
    for s in shards:
        pieces = chunks(s, micro)
        assert [i for p in pieces for i in p] == list(s)
        assert all(len(p) <= (micro or len(s)) for p in pieces)


def test_world_rejects_bad_input():
    with pytest.raises(InvalidInputError):
        World(2, 2)
    with pytest.raises(InvalidInputError):
        chunks(range(4), 0)
    with pytest.raises(InvalidInputError):
        launch(measure, 0)


def test_fsdp_sharded_curvature_by_finite_differences(single):
    """Models sharded by FSDP2 over 2 gloo ranks: the sharded gradient (a summed reduce-scatter)
    equals the single-process gradient to 1e-10 (reordered float64 sums); H v by central
    differences of sharded gradients equals the exact product within 1e-6 relative (its error
    eps^2/6 ||D^4 L|| + 2 u ||g|| / eps is ~1e-10 at eps = u^(1/3) ||theta|| on this O(1) MLP);
    sharded Lanczos on those products finds lambda_max / lambda_min within 1e-6 relative plus
    their residuals. Double backward through the sharded parameters fails upstream (the
    forward uses the all-gathered copies): the reason H v goes by finite differences."""
    ranks = launch(sharded_measure, 2, threads=1)
    got = ranks[0]
    assert got["double_backward_error"] is not None and "not have been used in the graph" in got["double_backward_error"]
    for case in ("mlp", "bert", "decoder"):
        assert sum(r[case]["n_local"] for r in ranks) == got[case]["n"]  # sharded, not replicated
        assert _rel(got[case]["gradient"], single[case]["gradient"]) <= RTOL
        assert abs(got[case]["loss"] - single[case]["loss"]) <= RTOL * abs(single[case]["loss"])
    mlp, ref = got["mlp"], single["mlp"]
    assert _rel(mlp["hvp"], ref["hvp"]) <= 1e-6
    for q in ("lambda_max", "lambda_min"):
        assert abs(mlp[q] - ref[q]) <= 1e-6 * abs(ref[q]) + mlp[f"{q}_residual"] + ref[f"{q}_residual"]
