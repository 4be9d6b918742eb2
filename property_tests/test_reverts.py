"""The battery can fail: each corrected statement, reverted to THEORY.md's original wording, is
caught by the exact battery under the ``ci`` profile's example count.

A revert replaces one bound function of ``convrate.theory.bounds`` by THEORY.md's first wording
(the battery's checks look the function up at call time), runs the entries that check the
statement on the derandomized ``ci`` examples (``numerics.battery.run_entry``, as ``convrate
check`` does) and requires at least one violated check. Without the revert the same entries
hold (``test_battery.py``). This guards the strategies themselves: if a change to them stops
drawing the instances that separate the corrected bound from the false one (aligned T, the
two-point worst case of F1, S2 groups for R1, r = 3 for SPECDEF-OPT), this test fails.
"""
from __future__ import annotations

import mpmath
import pytest
from hypothesis import settings

from convrate.numerics.battery import load_entries, run_entry
from convrate.theory import bounds


def _f1_kappa_over_2(kappa, tol):
    """THEORY F1: the best-fixed-step worst case is (kappa/2) ln(1/eps)."""
    return int(mpmath.ceil(bounds.mpf(kappa) / 2 * mpmath.log(1 / bounds.check_tol(tol))))


def _b_kappa_T_squared(kappa_T, kappa_H):
    """THEORY B: GD slowdown <= kappa(T)^2."""
    return bounds.mpf(kappa_T) ** 2


def _specdef_geometric_optimal(K, r):
    """THEORY SPECDEF-OPT: the geometric profile (top value sqrt K) is optimal."""
    return mpmath.sqrt(bounds.mpf(K))


def _r1_s2_counts_D_alone(family, r):
    """THEORY R1: r_p extra parameters for an S2 group (D alone), 2 r_p^2 for S1."""
    return 2 * r * r if family == "S1" else r


REVERTS = {
    "F1 (kappa/2) ln(1/eps)": ("gd_worst_case_steps", _f1_kappa_over_2, ("quad_F1_worst_case",)),
    "B slowdown <= kappa(T)^2": ("gd_slowdown_bound", _b_kappa_T_squared, ("tight_B_T3_aligned",)),
    "SPECDEF-OPT geometric optimal": ("specdef_max_gain", _specdef_geometric_optimal, ("nets_specdef_opt",)),
    "R1 r_p for S2": ("recovery_extra_parameters", _r1_s2_counts_D_alone, ("nets_R1",)),
}


@pytest.mark.parametrize("revert", sorted(REVERTS))
def test_reverted_statement_is_caught(monkeypatch, revert):
    name, wrong, entries = REVERTS[revert]
    monkeypatch.setattr(bounds, name, wrong)
    battery = load_entries()
    examples = settings.get_profile("ci").max_examples
    failed = [r for e in entries for r in run_entry(battery[e], max(1, examples // battery[e].cost)) if not r.holds]
    assert failed, f"reverting {revert} is not caught by {entries} on the ci examples"
