"""One visual vocabulary for every figure of the report and the audit.

- one fixed colour per attacker (Okabe-Ito and Paul Tol's colour-blind-safe palettes; the same
  attacker has the same colour in every figure), and a line style per attacker family;
- one marker per defense (and per audit variant);
- lower bounds (the defended search hit its budget) drawn as open markers with an upward caret;
- y-ranges set by the measured data (log scale, padded); reference curves (kappa(T), kappa(T)^2)
  clipped to that range and labelled where they leave it;
- small multiples: ``FAMILY_PANELS`` groups attackers into a few panels.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

#: colour-blind-safe colours (Okabe-Ito; Tol muted and vibrant), one per attacker
ATTACKER_COLORS = {
    "sgd": "#000000", "momentum": "#999933", "lora-sgd": "#882255",
    "adam": "#E69F00", "adamw": "#DDCC77", "lora-adam": "#CC79A7",
    "lbfgs": "#56B4E9", "lbfgs-wolfe": "#0072B2", "newton-cg": "#D55E00", "gauss-newton": "#CC6677", "kfac": "#AA4499",
    "shampoo": "#009E73", "soap": "#117733", "sophia": "#332288", "muon": "#EE3377",
}
#: panels of the small multiples: (title, attackers)
FAMILY_PANELS = (
    ("first-order", ("sgd", "momentum", "lora-sgd")),
    ("adaptive", ("adam", "adamw", "lora-adam")),
    ("quasi-Newton / second-order", ("lbfgs", "lbfgs-wolfe", "newton-cg", "gauss-newton", "kfac")),
    ("gradient-statistics preconditioners", ("shampoo", "soap", "sophia", "muon")),
)
#: line styles by position within a family panel (so neighbours differ in dash as well as colour)
_LINES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)))
#: one marker per defense (sweeps) and per audit variant
DEFENSE_MARKERS = {"none": "o", "specdef": "s", "specdef:spike": "^", "diagonal": "D", "inserted": "v"}
VARIANT_MARKERS = {"reference": "o", "claimed": "s", "R2": "D", "R1": "v"}
VARIANT_LINES = {"reference": "-", "claimed": "-", "R2": "-.", "R1": ":"}
REFERENCE_COLOR = "#777777"


def family_of(attacker: str) -> str:
    for title, names in FAMILY_PANELS:
        if attacker in names:
            return title
    return "other"


def attacker_color(attacker: str) -> str:
    """The attacker's colour (unknown names: grey)."""
    return ATTACKER_COLORS.get(attacker, "#BBBBBB")


def attacker_line(attacker: str) -> Any:
    """The attacker's line style: its position within its family panel picks a dash pattern."""
    for _, names in FAMILY_PANELS:
        if attacker in names:
            return _LINES[names.index(attacker) % len(_LINES)]
    return "-"


def defense_marker(defense: str) -> str:
    return DEFENSE_MARKERS.get(defense, DEFENSE_MARKERS.get(defense.split(":")[0], "P"))


def panels_for(attackers: Iterable[str]) -> list[tuple[str, list[str]]]:
    """The family panels that hold at least one of ``attackers`` (in panel order), plus "other"."""
    present = list(dict.fromkeys(attackers))
    out = [(t, [a for a in names if a in present]) for t, names in FAMILY_PANELS]
    other = [a for a in present if family_of(a) == "other"]
    return [(t, a) for t, a in out if a] + ([("other", other)] if other else [])


def log_limits(values: Iterable[float], pad: float = 1.6, floor: float = 1e-300) -> tuple[float, float]:
    """(lo, hi) for a log axis holding every positive finite value, padded by the factor ``pad``
    (a decade at least around a single value)."""
    vals = [v for v in values if v is not None and math.isfinite(v) and v > floor]
    if not vals:
        return 0.5, 2.0
    lo, hi = min(vals) / pad, max(vals) * pad
    if hi / lo < 10:
        mid = math.sqrt(lo * hi)
        lo, hi = mid / math.sqrt(10), mid * math.sqrt(10)
    return lo, hi


def clipped_reference(ax: Any, xs: Sequence[float], ys: Sequence[float], label: str, ylim: tuple[float, float],
                      ls: str = "--", slot: int = 0) -> None:
    """Draw a reference curve only inside ``ylim``; where it leaves the range above, write its
    largest value under the top edge (line ``slot`` of the notes, so two notes do not overlap),
    so the data keep the axis."""
    lo, hi = ylim
    inside = [(x, y) for x, y in zip(xs, ys) if lo <= y <= hi]
    if len(inside) >= 2:
        ax.plot([x for x, _ in inside], [y for _, y in inside], ls, color=REFERENCE_COLOR, lw=1, label=label, zorder=1)
    above = [(x, y) for x, y in zip(xs, ys) if y > hi]
    if above:
        x, y = above[-1]
        ax.annotate(f"{label} up to {y:.2g}", xy=(1, 1), xycoords="axes fraction", xytext=(-3, -3 - 8 * slot),
                    textcoords="offset points", ha="right", va="top", fontsize=6, color=REFERENCE_COLOR)


def mark_points(ax: Any, xs: Sequence[float], ys: Sequence[float], lower: Sequence[bool], color: str, marker: str) -> None:
    """Measured points: filled markers; lower bounds (budget hit): open markers with a caret above."""
    for x, y, lb in zip(xs, ys, lower):
        if lb:
            ax.plot([x], [y], marker, mfc="white", mec=color, mew=1.4, ms=6, zorder=3)
            ax.annotate("", xy=(x, y * 1.5), xytext=(x, y), arrowprops={"arrowstyle": "->", "color": color, "lw": 1})
        else:
            ax.plot([x], [y], marker, color=color, ms=5, zorder=3)


__all__ = ["ATTACKER_COLORS", "FAMILY_PANELS", "DEFENSE_MARKERS", "VARIANT_MARKERS", "VARIANT_LINES",
           "REFERENCE_COLOR", "family_of", "attacker_color", "attacker_line", "defense_marker", "panels_for",
           "log_limits", "clipped_reference", "mark_points"]
