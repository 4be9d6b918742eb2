"""bench_scale's instruments: the audit's minimum and estimated counts from the profile (closed
forms) and their pricing, and the
document and targets built from a result (every part, a missed and a met target)."""
from __future__ import annotations

from bench_scale import _audit_counts, _audit_seconds, markdown, targets

from convrate.models.attacks import log_grid
from convrate.models.attacks.search import halving_budgets
from convrate.models.audit import PROFILES


def test_audit_counts_follow_the_default_profile():
    prof = PROFILES["default"]
    c = _audit_counts()
    n_lrs = sum(len(prof.grid(o, "hf")) for o in prof.optimizers_for("hf"))
    assert len(log_grid(1e-5, 10.0, 2)) == len(prof.grid("sgd", "hf")) == 13  # one grid by hand
    assert c["attackers"] == list(prof.optimizers_for("hf")) and "gauss-newton" not in c["attackers"]
    assert c["minimum"] == {"pilot_steps": n_lrs, "hvps": 2 * (2 + 1 + 32)}
    assert c["estimate"]["pilot_steps"] == n_lrs * 100 == n_lrs * prof.pilot_budget
    assert c["estimate"]["search_steps"] == n_lrs * 3 * halving_budgets(400)[0]
    assert c["estimate"]["hvps"] == 2 * (2 + 2 * 60 - 1 + 4 + 32)


def test_audit_seconds_price_the_counts():
    step, hvp = {"per_step_cpu": 2.0}, {"per_hvp_cpu": 10.0}
    assert _audit_seconds({"pilot_steps": 3, "hvps": 5}, step, hvp) == 3 * 2.0 + 5 * 10.0
    assert _audit_seconds({"pilot_steps": 3, "search_steps": 4, "hvps": 5}, step, hvp) == 7 * 2.0 + 5 * 10.0


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
                     "hvp": {"per_hvp_cpu": 34.0, "memory": mem}, "peak_rss_pieces": 2 * 2**30,
                     "minimum": {"cpu_seconds": 2400.0, "wall_seconds_2_cores": 1200.0},
                     "estimate": {"cpu_seconds": 36000.0, "wall_seconds_2_cores": 18000.0}}}
    doc = markdown(res)
    assert "O(n), no basis (new)" in doc and "error: exit 1: boom" in doc
    assert ">= 20 min on 2 cores; estimate 10 CPU hours, 5 h on 2 cores" in doc
    by = {t["id"]: t for t in targets(res)}
    assert by["T-lanczos-memory"]["met"]
    # the pieces' peak is a lower bound of the audit's: it cannot meet the memory goal
    assert not by["T-audit-memory"]["met"] and "lower bound" in by["T-audit-memory"]["why"]
    # a shaped run stopped part-way: its peak so far is a larger lower bound, still not decisive
    res["audit"]["shaped"] = {"stopped_after_s": 60.0, "stage": {"label": "attack sgd", "done": 4, "of": 16},
                              "peak_rss": 2.2 * 2**30}
    mem = {t["id"]: t for t in targets(res)}["T-audit-memory"]
    assert not mem["met"] and mem["measured"].startswith("2.2 GB (an audit of the default shape stopped")
    assert "stopped after 60 s in stage 'attack sgd' (4 of 16 stages done), peak so far 2253 MiB" in markdown(res)
    del res["audit"]["shaped"]
    audit_time = by["T-audit-time"]
    assert not audit_time["met"] and audit_time["ratio"] == 2.0 and audit_time["measured"].startswith(">= 20 min")
    assert "CPU-bound" in audit_time["why"]
    res["audit"]["minimum"]["wall_seconds_2_cores"] = 540.0  # a lower bound under the goal decides nothing
    audit_time = {t["id"]: t for t in targets(res)}["T-audit-time"]
    assert not audit_time["met"] and "--full-audit" in audit_time["why"]
    res["audit"]["shaped"] = {"peak_rss": 2.0 * 2**30, "audit_wall_s": 900.0, "class": "fplr", "lanczos_basis": ["none"],
                              "attackers": ["sgd", "adam"], "work": {}}
    res["audit"]["full"] = {"audit_wall_s": 540.0, "peak_rss": 3.5 * 2**30, "returncode": 0}
    by = {t["id"]: t for t in targets(res)}
    assert by["T-audit-time"]["met"] and by["T-audit-time"]["measured"] == "9 min"
    assert not by["T-audit-memory"]["met"] and "whole audit" in by["T-audit-memory"]["measured"]  # full first
    del res["audit"]["full"]
    by = {t["id"]: t for t in targets(res)}
    # the shape's peak plus the bound on the runs the default's halving rounds pause
    assert by["T-audit-memory"]["met"] and by["T-audit-memory"]["measured"].startswith("2.5 GB (an audit of the default")
    assert "peak 2048 MiB" in markdown(res)
    res["audit"]["shaped"]["peak_rss"] = 2.6 * 2**30
    assert not {t["id"]: t for t in targets(res)}["T-audit-memory"]["met"]  # 2.6 GB + 0.5 GB > 3 GB
