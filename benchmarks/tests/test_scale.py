"""bench_scale's instruments: the audit's fixed counts from the profile (closed forms), and the
document and targets built from a result (every part, a missed and a met target)."""
from __future__ import annotations

from bench_scale import _audit_counts, markdown, targets

from convrate.models.attacks import log_grid
from convrate.models.attacks.search import halving_budgets
from convrate.models.audit import PROFILES


def test_audit_counts_follow_the_default_profile():
    prof = PROFILES["default"]
    c = _audit_counts()
    n_lrs = sum(len(prof.grid(o, "hf")) for o in prof.optimizers_for("hf"))
    assert len(log_grid(1e-5, 10.0, 2)) == len(prof.grid("sgd", "hf")) == 13  # one grid by hand
    assert c["attackers"] == list(prof.optimizers_for("hf")) and "gauss-newton" not in c["attackers"]
    assert c["pilot_steps"] == n_lrs * 100 == n_lrs * prof.pilot_budget
    assert c["search_steps_at_least"] == n_lrs * 3 * halving_budgets(400)[0]
    assert c["hvps"] == 2 * (2 + 2 * 60 - 1 + 4 + 32)


def test_document_and_targets():
    mem = {"peak_rss": 2 * 2**30, "added_at_peak": 2**29, "counted_vectors": 2**28, "rss_at_start": 2**30}
    res = {"lanczos": {"examples": 8, "steps": 20, "memory_ratio": 4.0, "top_relative_difference": 1e-15,
                       "rows": {"none": {"n": 10, "steps": 20, "top": 1.0, "products": 43, "memory": mem,
                                         "seconds": 1.0, "cpu_seconds": 1.0},
                                "full": {"n": 10, "steps": 20, "top": 1.0, "products": 23, "memory": mem,
                                         "seconds": 1.0, "cpu_seconds": 1.0}}},
           "hessian": {"examples": 8, "steps": 20, "wall_ratio": 0.6, "compute_ratio": 0.55, "agree": True,
                       "rows": {"1": {"wall_s": 10.0, "compute_wall_s": 8.0, "cpu_s": 8.0, "top": 1.0,
                                      "peak_rss_max": 2**30},
                                "2": {"error": "exit 1: boom", "wall_s": 1.0}}},
           "audit": {"counts": _audit_counts(), "step": {"per_step_cpu": 6.5, "memory": mem},
                     "hvp": {"per_hvp_cpu": 34.0, "memory": mem}, "cpu_seconds_at_least": 36000.0,
                     "wall_seconds_at_least_2_cores": 18000.0, "peak_rss_pieces": 2 * 2**30}}
    doc = markdown(res)
    assert "O(n), no basis (new)" in doc and "error: exit 1: boom" in doc and ">= 300 min" in doc
    by = {t["id"]: t for t in targets(res)}
    assert by["T-lanczos-memory"]["met"] and by["T-audit-memory"]["met"]
    assert not by["T-audit-time"]["met"] and by["T-audit-time"]["ratio"] == 30.0
