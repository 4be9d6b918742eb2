"""The audit's class and verdict: named thresholds, step ratios, and the evidence sentences.

Class (what the claimed model is, relative to the reference):

* ``identical``: max over parameter tensors ||theta'_p - theta_p|| / ||theta'_p|| <= rtol
  (the FPLR rtol of ``fplr``: T = I);
* ``fplr``: function preserved and a T in the supported groups maps theta to theta'
  (``fplr.infer_reparameterization``, residual <= rtol);
* ``function-preserving-other``: function preserved on the probe inputs, no such T;
* ``outside-class``: function deviation > tolerance: the theory's limit does not apply,
  only the measured attacks stand;
* ``unreferenced``: no reference given (the claimed model is compared with its own
  canonical point, R2).

"Function preserved" means deviation = max|f(x; theta') - f(x; theta)| / max|f(x; theta)|
on the probe inputs (both evaluated in float64) <= ``defense.PRESERVATION_TOLERANCE`` of the
coarser dtype; the function check comes first, so a T found for weights whose function moved
beyond tolerance (possible only through round-off at huge kappa) still gives outside-class.

Verdict (SLOWDOWN_THRESHOLD = 1.5, RECOVERY_THRESHOLD = 1.2):

* ``no-defense``: identical; or function-preserving-other / unreferenced without an
  optimizer slowed by SLOWDOWN_THRESHOLD;
* ``fplr-no-slowdown``: fplr, no optimizer (at its best learning rate) slowed by 1.5x;
* ``fplr-defeated``: fplr with a slowdown, and a recovery brings every slowed optimizer back
  to within 1.2x of the reference (R2: canonicalization, 0 extra parameters; R1:
  reparameterization theta' = T phi with the inferred T); unreferenced with a slowdown
  relative to its canonical point (R2 removes it by construction);
* ``fplr-not-recovered``: fplr with a slowdown that neither recovery brings within 1.2x --
  a finding against THEORY.md R1 (which predicts exactly 1): the evidence shows it;
* ``other-slowdown``: function-preserving-other with a slowdown (outside the class);
* ``outside-class``: the function changed.

A slowdown is steps / reference_steps at each one's best learning rate (``attacks.Slowdown``);
when the slowed run misses the target within the budget, budget / reference_steps is a lower
bound and counts as a slowdown when >= 1.5, and as "not recovered" for a recovery.
"""
from __future__ import annotations

from typing import Any, Mapping

from convrate.models.attacks import Slowdown

SLOWDOWN_THRESHOLD = 1.5
RECOVERY_THRESHOLD = 1.2
CLASSES = ("identical", "fplr", "function-preserving-other", "outside-class", "unreferenced")
VERDICTS = ("no-defense", "fplr-no-slowdown", "fplr-defeated", "fplr-not-recovered", "other-slowdown",
            "outside-class")
RECOVERY_NAMES = {"R2": "canonicalization (R2)", "R1": "reparameterization theta' = T phi (R1)",
                  "merge": "merging the inserted layers (M)"}
OPTIMIZER_NAMES = {"sgd": "SGD", "adam": "Adam", "momentum": "SGD+momentum", "adamw": "AdamW"}


def slowed(s: Slowdown) -> bool:
    """ratio >= SLOWDOWN_THRESHOLD (a lower bound counts)."""
    return s.ratio is not None and s.ratio >= SLOWDOWN_THRESHOLD


def recovered(s: Slowdown) -> bool:
    """An exact ratio <= RECOVERY_THRESHOLD (a lower bound or an undefined ratio does not count)."""
    return s.ratio is not None and not s.is_lower_bound and s.ratio <= RECOVERY_THRESHOLD


def ratio_text(s: Slowdown) -> str:
    if s.ratio is None:
        return "undefined"
    return (">= " if s.is_lower_bound else "") + f"{s.ratio:.3g}x"


def ratio_json(s: Slowdown) -> dict[str, Any]:
    """The JSON form of a slowdown: ratio (None: undefined), lower_bound, both step counts
    (None: target missed) and the budget."""
    return {"ratio": s.ratio, "lower_bound": s.is_lower_bound, "reference_steps": s.undefended.best_steps,
            "steps": s.defended.best_steps, "budget": s.defended.budget}


def classify(*, has_reference: bool, function_deviation: float | None, function_tolerance: float | None,
             weight_distance: float | None, fplr_found: bool, rtol: float) -> str:
    """The class (module doc)."""
    if not has_reference:
        return "unreferenced"
    assert function_deviation is not None and function_tolerance is not None and weight_distance is not None
    if not function_deviation <= function_tolerance:  # NaN -> outside
        return "outside-class"
    if weight_distance <= rtol:
        return "identical"
    return "fplr" if fplr_found else "function-preserving-other"


def _opt(name: str) -> str:
    return OPTIMIZER_NAMES.get(name, name)


def _slowdown_text(slowdown: Mapping[str, Slowdown]) -> str:
    return ", ".join(f"{ratio_text(r)} for {_opt(o)}" for o, r in slowdown.items())


def decide(cls: str, slowdown: Mapping[str, Slowdown], recoveries: Mapping[str, Mapping[str, Slowdown]],
           extra_parameters: Mapping[str, int], model_parameters: int) -> tuple[str, list[str]]:
    """(verdict, evidence sentences) from the class, the slowdown per optimizer, the
    recovered slowdown per recovery and optimizer, and each recovery's extra parameters."""
    if cls not in CLASSES:
        raise ValueError(f"unknown class {cls!r}")
    hit = [o for o, r in slowdown.items() if slowed(r)]
    sd = _slowdown_text(slowdown)
    base = "the reference" if cls != "unreferenced" else "its canonical point"
    ev = [f"slowdown relative to {base} at each optimizer's best learning rate: {sd} "
          f"(threshold {SLOWDOWN_THRESHOLD}x)."]
    if cls == "outside-class":
        return "outside-class", ["the function changed beyond tolerance, so the theory's limit does not apply; "
                                 "only the measured attacks stand.", *ev]
    if cls == "identical":
        return "no-defense", ["the claimed weights equal the reference's (T = I).", *ev]
    if cls == "unreferenced":
        if not hit:
            return "no-defense", ["no slowdown relative to the canonical point of the model's symmetry orbit.", *ev]
        return "fplr-defeated", [*ev, "canonicalization (R2) at 0 extra parameters removes it (the canonical "
                                      "point is the baseline)."]
    if not hit:
        return ("fplr-no-slowdown" if cls == "fplr" else "no-defense"), ev
    if cls == "function-preserving-other":
        return "other-slowdown", ["the function is preserved but no T in the supported symmetry groups maps the "
                                  "reference to the claimed weights.", *ev]
    ok = []
    lines = []
    for rec, ratios in recoveries.items():
        good = all(recovered(ratios[o]) for o in hit if o in ratios)
        rs = ", ".join(f"{ratio_text(ratios[o])} for {_opt(o)}" for o in ratios)
        n = extra_parameters.get(rec, 0)
        pct = 100.0 * n / model_parameters if model_parameters else 0.0
        cost = f"{n} extra parameters" + (f", {pct:.3g}% of the model" if n else "")
        lines.append(f"{RECOVERY_NAMES.get(rec, rec)} at {cost}: recovered slowdown {rs}.")
        if good:
            ok.append(f"{RECOVERY_NAMES.get(rec, rec)} at {cost}")
    if ok:
        return "fplr-defeated", [*ev, f"recovered to within {RECOVERY_THRESHOLD}x by " + " and by ".join(ok) + ".",
                                 *lines]
    return "fplr-not-recovered", [*ev, f"no recovery brings the slowed optimizers ({', '.join(map(_opt, hit))}) "
                                       f"within {RECOVERY_THRESHOLD}x: a finding against THEORY.md R1, which "
                                       "predicts a recovered slowdown of exactly 1.", *lines]


__all__ = ["SLOWDOWN_THRESHOLD", "RECOVERY_THRESHOLD", "CLASSES", "VERDICTS", "classify", "decide", "ratio_json",
           "ratio_text", "recovered", "slowed"]
