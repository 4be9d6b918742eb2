"""The audit's class and verdict rules (``models.audit_verdict``) on drawn step counts.

The rules of the module docstring are restated here as a decision table over the drawn
numbers (which optimizers are slowed by >= 1.5x, which recoveries bring every slowed one
within 1.2x with an exact ratio), independently of ``decide``'s control flow; every verdict
and the evidence it cites (ratios, thresholds, recovery costs) are compared with it. Pure
Python: no model is trained, so the rules are checked on thousands of combinations that the
real-network audits of ``test_audit.py`` cannot reach (ratios at the thresholds exactly,
lower bounds, undefined ratios).
"""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convrate.models.attacks import LRSearchResult, Slowdown
from convrate.models.audit_verdict import (CLASSES, RECOVERY_THRESHOLD, SLOWDOWN_THRESHOLD, VERDICTS, classify,
                                           decide, ratio_json, ratio_text, recovered, slowed)

OPTIMIZERS = ("sgd", "adam", "momentum")


def _search(steps: int | None, budget: int = 100) -> LRSearchResult:
    return LRSearchResult("sgd", 0.1, budget, 0.01, steps, (), 0.0)


#: step counts that hit the thresholds exactly (base 10: 15 / 10 = 1.5, 12 / 10 = 1.2)
_steps = st.one_of(st.none(), st.integers(0, 40), st.sampled_from([10, 12, 15, 14, 16, 11, 13]))


@st.composite
def slowdowns(draw) -> Slowdown:
    base = draw(st.one_of(st.just(10), st.integers(0, 20), st.none()))
    budget = draw(st.sampled_from([20, 100]))
    defended = draw(_steps)
    if defended is not None and defended > budget:
        defended = None
    return Slowdown.between(_search(base, budget), _search(defended, budget))


def _expected_slowed(s: Slowdown) -> bool:
    return s.ratio is not None and s.ratio >= 1.5


def _expected_recovered(s: Slowdown) -> bool:
    return s.ratio is not None and not s.is_lower_bound and s.ratio <= 1.2


@settings(max_examples=200)
@given(slowdowns())
def test_slowed_and_recovered_thresholds(s):
    assert SLOWDOWN_THRESHOLD == 1.5 and RECOVERY_THRESHOLD == 1.2
    assert slowed(s) == _expected_slowed(s)
    assert recovered(s) == _expected_recovered(s)
    text = ratio_text(s)
    if s.ratio is None:
        assert text == "undefined"
    else:
        assert text == (">= " if s.is_lower_bound else "") + f"{s.ratio:.3g}x"
    j = ratio_json(s)
    assert j == {"ratio": s.ratio, "lower_bound": s.is_lower_bound, "reference_steps": s.undefended.best_steps,
                 "steps": s.defended.best_steps, "budget": s.defended.budget}


def test_threshold_edges():
    """Exactly 1.5x is a slowdown, exactly 1.2x a recovery; a lower bound never recovers."""
    assert slowed(Slowdown.between(_search(10), _search(15)))
    assert not slowed(Slowdown.between(_search(10), _search(14)))
    assert recovered(Slowdown.between(_search(10), _search(12)))
    assert not recovered(Slowdown.between(_search(10), _search(13)))
    lb = Slowdown.between(_search(100, 100), _search(None, 100))
    assert lb.is_lower_bound and lb.ratio == 1.0 and not recovered(lb) and not slowed(lb)
    assert not slowed(Slowdown.between(_search(None), _search(5)))


@given(has_ref=st.booleans(), dev=st.one_of(st.floats(0, 2), st.just(math.nan)), tol=st.floats(0, 1),
       dist=st.floats(0, 1), found=st.booleans(), rtol=st.floats(0, 1))
def test_classify(has_ref, dev, tol, dist, found, rtol):
    got = classify(has_reference=has_ref, function_deviation=dev, function_tolerance=tol, weight_distance=dist,
                   fplr_found=found, rtol=rtol)
    assert got in CLASSES
    if not has_ref:
        expected = "unreferenced"
    elif math.isnan(dev) or dev > tol:
        expected = "outside-class"
    elif dist <= rtol:
        expected = "identical"
    else:
        expected = "fplr" if found else "function-preserving-other"
    assert got == expected


def test_classify_edges():
    kw = dict(has_reference=True, fplr_found=True, rtol=1e-8)
    assert classify(function_deviation=1e-3, function_tolerance=1e-3, weight_distance=1.0, **kw) == "fplr"
    assert classify(function_deviation=1e-3, function_tolerance=1e-3, weight_distance=1e-8, **kw) == "identical"


@st.composite
def audits(draw):
    cls = draw(st.sampled_from(CLASSES))
    opts = draw(st.lists(st.sampled_from(OPTIMIZERS), min_size=1, max_size=3, unique=True))
    slow = {o: draw(slowdowns()) for o in opts}
    recs = {}
    if cls not in ("unreferenced",):
        for rec in draw(st.lists(st.sampled_from(["R2", "R1"]), max_size=2, unique=True)):
            recs[rec] = {o: draw(slowdowns()) for o in opts}
    extra = {"R2": 0, "R1": draw(st.integers(1, 500))}
    return cls, slow, recs, extra, draw(st.integers(1000, 10**6))


def _expected_verdict(cls, slow, recs) -> str:
    hit = [o for o, s in slow.items() if _expected_slowed(s)]
    table = {"outside-class": "outside-class", "identical": "no-defense"}
    if cls in table:
        return table[cls]
    if cls == "unreferenced":
        return "fplr-defeated" if hit else "no-defense"
    if not hit:
        return "fplr-no-slowdown" if cls == "fplr" else "no-defense"
    if cls == "function-preserving-other":
        return "other-slowdown"
    good = [r for r, ratios in recs.items() if all(_expected_recovered(ratios[o]) for o in hit if o in ratios)]
    return "fplr-defeated" if good else "fplr-not-recovered"


@settings(max_examples=300)  # pure Python, milliseconds per example
@given(audits())
def test_decide_follows_the_rules(a):
    cls, slow, recs, extra, n_params = a
    verdict, evidence = decide(cls, slow, recs, extra, n_params)
    assert verdict in VERDICTS
    assert verdict == _expected_verdict(cls, slow, recs)
    text = " ".join(evidence)
    # the slowdown sentence cites every optimizer's ratio and the threshold
    for o, s in slow.items():
        assert ratio_text(s) in text
    assert f"threshold {SLOWDOWN_THRESHOLD}x" in text
    assert ("canonical point" if cls == "unreferenced" else "the reference") in text
    if verdict in ("fplr-defeated", "fplr-not-recovered") and cls == "fplr":
        assert f"{RECOVERY_THRESHOLD}x" in text
        for rec, ratios in recs.items():
            n = extra.get(rec, 0)
            assert f"{n} extra parameters" in text
            if n:
                assert f"{100.0 * n / n_params:.3g}% of the model" in text
            for o, s in ratios.items():
                assert f"{ratio_text(s)} for" in text
    if verdict == "fplr-not-recovered":
        assert "THEORY.md R1" in text
    if cls == "outside-class":
        assert evidence[0].startswith("the function changed beyond tolerance")
    if cls == "identical":
        assert evidence[0] == "the claimed weights equal the reference's (T = I)."


def test_decide_names_the_recovery_that_worked():
    base = _search(10)
    slow = {"sgd": Slowdown.between(base, _search(40)), "adam": Slowdown.between(base, _search(11))}
    recs = {"R2": {"sgd": Slowdown.between(base, _search(30)), "adam": Slowdown.between(base, _search(10))},
            "R1": {"sgd": Slowdown.between(base, _search(10)), "adam": Slowdown.between(base, _search(10))}}
    verdict, ev = decide("fplr", slow, recs, {"R2": 0, "R1": 64}, 2400)
    assert verdict == "fplr-defeated"
    assert ev[1] == ("recovered to within 1.2x by reparameterization theta' = T phi (R1) at 64 extra parameters, "
                     "2.67% of the model.")
    assert ev[0] == ("slowdown relative to the reference at each optimizer's best learning rate: 4x for SGD, "
                     "1.1x for Adam (threshold 1.5x).")
    assert "canonicalization (R2) at 0 extra parameters: recovered slowdown 3x for SGD, 1x for Adam." in ev
    verdict, ev = decide("fplr", slow, {"R2": recs["R2"]}, {"R2": 0}, 2400)
    assert verdict == "fplr-not-recovered" and "(SGD)" in ev[1]


def test_decide_rejects_unknown_class():
    with pytest.raises(ValueError, match="unknown class"):
        decide("claimed", {}, {}, {}, 1)


def _s(base, steps, budget=100):
    return Slowdown.between(_search(base, budget), _search(steps, budget))


def test_evidence_sentences_of_every_branch():
    """The evidence each verdict prints (audit.json "evidence", audit.md), branch by branch."""
    slow = {"sgd": _s(10, 30), "lora-adam": _s(10, 10)}  # an optimizer without a display name keeps its own
    head = ("slowdown relative to {} at each optimizer's best learning rate: 3x for SGD, 1x for lora-adam "
            "(threshold 1.5x).")
    v, ev = decide("outside-class", slow, {}, {}, 100)
    assert (v, ev) == ("outside-class", ["the function changed beyond tolerance, so the theory's limit does not apply; "
                                         "only the measured attacks stand.", head.format("the reference")])
    v, ev = decide("identical", slow, {}, {}, 100)
    assert (v, ev) == ("no-defense", ["the claimed weights equal the reference's (T = I).", head.format("the reference")])
    v, ev = decide("unreferenced", slow, {}, {}, 100)
    assert (v, ev) == ("fplr-defeated", [head.format("its canonical point"),
                                         "canonicalization (R2) at 0 extra parameters removes it (the canonical "
                                         "point is the baseline)."])
    calm = {"sgd": _s(10, 11)}
    v, ev = decide("unreferenced", calm, {}, {}, 100)
    assert v == "no-defense" and ev[0] == "no slowdown relative to the canonical point of the model's symmetry orbit."
    assert ev[1].startswith("slowdown relative to its canonical point")
    v, ev = decide("function-preserving-other", slow, {}, {}, 100)
    assert (v, ev[0]) == ("other-slowdown", "the function is preserved but no T in the supported symmetry groups maps "
                                            "the reference to the claimed weights.")
    recs = {"R3": {"sgd": _s(10, 30)}, "R1": {"sgd": _s(10, 25)}}  # a recovery without a display name, R1 without cost
    v, ev = decide("fplr", slow, recs, {"R3": 5}, 0)
    assert v == "fplr-not-recovered"
    assert ev[1] == ("no recovery brings the slowed optimizers (SGD) within 1.2x: a finding against THEORY.md R1, "
                     "which predicts a recovered slowdown of exactly 1.")
    assert ev[2] == "R3 at 5 extra parameters, 0% of the model: recovered slowdown 3x for SGD."
    assert ev[3] == "reparameterization theta' = T phi (R1) at 0 extra parameters: recovered slowdown 2.5x for SGD."
    two = {"sgd": _s(10, 30), "momentum": _s(10, 40)}
    v, ev = decide("fplr", two, {"R2": {"sgd": _s(10, 10), "momentum": _s(10, 11)},
                                 "R9": {"sgd": _s(10, 10), "momentum": _s(10, 10)}}, {"R2": 0, "R9": 7}, 700)
    assert v == "fplr-defeated"
    assert ev[1] == ("recovered to within 1.2x by canonicalization (R2) at 0 extra parameters and by R9 at 7 extra "
                     "parameters, 1% of the model.")
    v, ev = decide("fplr", two, {"R2": {"sgd": _s(10, 30), "momentum": _s(10, 40)}}, {"R2": 0}, 700)
    assert "optimizers (SGD, SGD+momentum) within" in ev[1]


def test_classify_requires_the_measurements_with_a_reference():
    with pytest.raises(AssertionError):
        classify(has_reference=True, function_deviation=None, function_tolerance=1e-3, weight_distance=0.1,
                 fplr_found=True, rtol=1e-8)
    with pytest.raises(AssertionError):
        classify(has_reference=True, function_deviation=1e-9, function_tolerance=None, weight_distance=0.1,
                 fplr_found=True, rtol=1e-8)
    with pytest.raises(AssertionError):
        classify(has_reference=True, function_deviation=1e-9, function_tolerance=1e-3, weight_distance=None,
                 fplr_found=True, rtol=1e-8)
