"""Compare a regenerated report with a committed one within each number's stated sensitivity.

``compare_results(new, old)`` walks the two ``results.json`` trees side by side and classifies
every leaf (``convrate report --compare DIR``, ``convrate compare NEW OLD``):

* **ranged** -- a number with a sibling ``<key>_range`` [lo, hi] in both reports (step counts and
  slowdowns of the sweeps and recoveries, ``models.sensitivity``; None = not reached within the
  budget): it *moved* when the two ranges do not intersect (two samples of the same
  rounding-level spread intersect);
* **exact** -- booleans (verdicts: holds, within_bound, r1_within_range, ...), the structural
  integers of ``EXACT_INTS`` (instances, extra parameters, budgets, ...), the labels of
  ``EXACT_STRINGS`` (statuses, verdicts, names) and the shape of the tree (keys, list lengths of
  records): any change *moved*;
* **ignored** -- provenance and timings (``IGNORED``);
* **informational** -- every other number (losses, residuals, margins, learning rates): listed
  with its relative change when it differs, not judged, since no sensitivity is stated for it.

The reports must share profile and seed (else the comparison is refused: InvalidInputError).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from convrate.errors import InvalidInputError
from convrate.models.sensitivity import overlap

#: keys never compared (timings, dates, machine description)
IGNORED = frozenset({"generated", "wall_seconds", "section_seconds", "seconds", "search_seconds", "wall_s", "platform",
                     "device", "versions"})
#: integers that must be reproduced exactly
EXACT_INTS = frozenset({"instances", "extra_parameters", "r1_extra_parameters", "groups", "model_parameters",
                        "defended_parameters", "budget", "n_parameters", "checks", "pair_parameters", "seed",
                        "inequality_checks", "n_out", "r"})
#: strings that must be reproduced exactly
EXACT_STRINGS = frozenset({"status", "label", "scope", "verdict", "class", "id", "statement", "defense", "optimizer",
                           "network", "model", "relation", "profile", "family"})


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


class _Walk:
    def __init__(self) -> None:
        self.moved: list[dict[str, Any]] = []
        self.informational: list[dict[str, Any]] = []
        self.ranged = self.exact = 0

    def flag(self, path: str, kind: str, old: Any, new: Any, why: str) -> None:
        self.moved.append({"path": path, "kind": kind, "old": old, "new": new, "why": why})

    def leaf(self, path: str, key: str, old: Any, new: Any, old_parent: Mapping, new_parent: Mapping) -> None:
        rk = f"{key}_range"
        if rk in old_parent and rk in new_parent and old_parent[rk] is not None and new_parent[rk] is not None:
            self.ranged += 1
            if not overlap(old_parent[rk], new_parent[rk]):
                self.flag(path, "ranged", [old, old_parent[rk]], [new, new_parent[rk]],
                          "outside its sensitivity range (the ranges do not intersect)")
            return
        if isinstance(old, bool) or isinstance(new, bool) or (key in EXACT_INTS and (_is_num(old) or _is_num(new))) \
                or (key in EXACT_STRINGS and (isinstance(old, str) or isinstance(new, str))):
            self.exact += 1
            if old != new:
                self.flag(path, "exact", old, new, "changed")
            return
        if _is_num(old) and _is_num(new):
            if old != new:
                self.informational.append({"path": path, "old": old, "new": new, "relative_change": _rel(old, new)})
        elif old != new and not (isinstance(old, str) and isinstance(new, str)):
            self.informational.append({"path": path, "old": old, "new": new, "relative_change": None})

    def walk(self, path: str, old: Any, new: Any, old_parent: Mapping | None = None,
             new_parent: Mapping | None = None, key: str = "") -> None:
        if isinstance(old, dict) and isinstance(new, dict):
            for k in sorted(set(old) | set(new)):
                if k in IGNORED or (k.endswith("_range") and k.removesuffix("_range") in (old if k in old else new)):
                    continue  # a range is read with the number it qualifies
                p = f"{path}/{k}"
                if k not in old or k not in new:
                    self.flag(p, "exact", old.get(k, "<absent>") if k in old else "<absent>",
                              new.get(k, "<absent>") if k in new else "<absent>", "present in one report only")
                    continue
                self.walk(p, old[k], new[k], old, new, k)
        elif isinstance(old, list) and isinstance(new, list):
            records = any(isinstance(x, (dict, list)) for x in old + new)
            if len(old) != len(new):
                if records:
                    self.flag(path, "exact", f"{len(old)} records", f"{len(new)} records", "different number of records")
                else:
                    self.informational.append({"path": path, "old": f"{len(old)} values", "new": f"{len(new)} values",
                                               "relative_change": None})
                return
            for i, (a, b) in enumerate(zip(old, new)):
                if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
                    self.walk(f"{path}[{i}]", a, b)
                else:
                    self.leaf(f"{path}[{i}]", key, a, b, {}, {})
        else:
            self.leaf(path, key, old, new, old_parent or {}, new_parent or {})


def compare_results(new: Mapping[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    """The comparison of two ``results.json`` trees (module doc): ``ok`` (nothing moved),
    ``moved`` (path, kind, old, new, why), ``informational`` (other differing numbers and their
    relative change), and the counts of ranged and exact leaves compared."""
    po, pn = old.get("Provenance", {}), new.get("Provenance", {})
    for k in ("profile", "seed"):
        if po.get(k) != pn.get(k):
            raise InvalidInputError(f"the reports differ in {k} ({po.get(k)!r} vs {pn.get(k)!r}): not comparable")
    w = _Walk()
    w.walk("", {k: v for k, v in old.items() if k != "Provenance"}, {k: v for k, v in new.items() if k != "Provenance"})
    worst = max((i["relative_change"] for i in w.informational if i["relative_change"] is not None), default=0.0)
    return {"ok": not w.moved, "moved": w.moved, "ranged_compared": w.ranged, "exact_compared": w.exact,
            "informational": w.informational, "informational_max_relative_change": worst}


def load_results(path: str | Path) -> dict[str, Any]:
    """``results.json`` of a report directory (or the file itself); InvalidInputError when it is
    missing, not JSON or not an object."""
    from convrate.models.io import _read_json

    p = Path(path)
    return _read_json(p / "results.json" if p.is_dir() else p)


def compare_reports(new: str | Path, old: str | Path) -> dict[str, Any]:
    """``compare_results`` of two report directories (or results.json files)."""
    return compare_results(load_results(new), load_results(old))


__all__ = ["compare_reports", "compare_results", "load_results", "IGNORED", "EXACT_INTS", "EXACT_STRINGS"]
