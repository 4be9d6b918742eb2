"""``convrate derive``: run every symbolic derivation and render the results.

``run_all`` runs the derivation of every statement in ``REGISTRY`` and returns one plain dict
per statement (id, title, text, status, scope, label, steps, general_steps, instance_steps,
argued_steps, closed_forms, latex_forms, counterexample, corrected, bound, assumptions,
checked, seconds). ``scope`` says how far the proof goes ("general", "general + argued",
"instances + argued", "none"; ``theory.core``), ``label`` the status as shown ("proved
(general)", "proved (instances) + argued", ...), ``argued_steps`` the prose and cited steps.
A derivation that reports proved or corrected without a single load-bearing sympy step
(``[sympy]`` or ``[sympy:general]``) is downgraded to checked-only; one that raises is reported
checked-only with the error as its last step. ``to_markdown``, ``to_latex`` and
``to_json`` render the list.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterable

from convrate.theory.core import TAG_EXAMPLE, TAG_GENERAL, TAG_INSTANCE, Scope, Status, label, scope_of

#: characters of the statement texts and their LaTeX (math mode) rendering
_UNICODE_LATEX = {
    "θ": r"\theta", "∇": r"\nabla",
    "⊗": r"\otimes", "κ": r"\kappa", "λ": r"\lambda", "σ": r"\sigma", "ρ": r"\rho", "η": r"\eta", "ε": r"\varepsilon",
    "μ": r"\mu", "Σ": r"\Sigma", "ℓ": r"\ell", "≤": r"\le", "≥": r"\ge", "≈": r"\approx", "≻": r"\succ", "≫": r"\gg",
    "∘": r"\circ", "∈": r"\in", "∪": r"\cup", "‖": r"\|", "√": r"\surd", "⌈": r"\lceil", "⌉": r"\rceil", "½": r"\tfrac12",
    "·": r"\cdot", "→": r"\to", "−": "-", "…": r"\dots", "×": r"\times", "Θ": r"\Theta", "φ": r"\varphi", "Ĝ": r"\hat G",
    "γ": r"\gamma", "←": r"\leftarrow",
}
_SUPERSCRIPTS = {"⁻": "-", "ᵀ": "T", "¹": "1", "²": "2", "³": "3", "⁴": "4"}
_TEXT_ESCAPES = {"\\": r"\textbackslash{}", "_": r"\_", "^": r"\^{}", "&": r"\&", "%": r"\%", "#": r"\#",
                 "$": r"\$", "{": r"\{", "}": r"\}", "~": r"\~{}"}


def _count(steps: list[str], *tags: str) -> int:
    return sum(1 for s in steps for t in tags if s.startswith(t + " ")
               and not s.startswith(("[sympy] FAILED", "[sympy] NOT ")))


def _checked(steps: list[str]) -> int:
    """Number of load-bearing steps sympy verified (``[sympy]``, ``[sympy:general]``; not failed
    or unreduced)."""
    return _count(steps, TAG_INSTANCE, TAG_GENERAL)


def _downgrade(status: Status, checked: int) -> Status:
    if status in (Status.PROVED, Status.CORRECTED) and checked == 0:
        return Status.CHECKED_ONLY
    return status


def run_one(sid: str) -> dict[str, Any]:
    """Run the derivation of statement ``sid`` and return its result dict."""
    from convrate.theory.statements import REGISTRY

    st = REGISTRY[sid]
    t0 = time.perf_counter()
    steps: list[str]
    closed: dict[str, str] = {}
    latex: dict[str, str] = {}
    counterexample = None
    if st.derive is None:
        status, steps = Status.CHECKED_ONLY, ["[none] no symbolic derivation registered"]
    else:
        try:
            d = st.derive()
            steps, closed, counterexample = list(d.steps), dict(d.closed_forms), d.counterexample
            latex = dict(getattr(d, "latex_forms", {}) or {})
            status = _downgrade(d.status, _checked(steps))
        except Exception as exc:  # noqa: BLE001 - reported, never hidden
            status, steps = Status.CHECKED_ONLY, [f"[error] derivation raised {type(exc).__name__}: {exc}"]
    checked = _checked(steps)
    scope, argued = scope_of(steps) if status in (Status.PROVED, Status.CORRECTED) else (Scope.NONE, [])
    return {
        "id": st.id,
        "title": st.title,
        "text": st.text,
        "assumptions": list(st.assumptions),
        "status": status.value,
        "scope": scope.value,
        "label": label(status, scope),
        "steps": steps,
        "checked": checked,
        "general_steps": _count(steps, TAG_GENERAL),
        "instance_steps": _count(steps, TAG_INSTANCE),
        "example_steps": _count(steps, TAG_EXAMPLE),
        "argued_steps": argued,
        "closed_forms": closed,
        "latex_forms": latex,
        "counterexample": counterexample,
        "corrected": st.corrected if status in (Status.CORRECTED, Status.FALSE) else None,
        "bound": st.bound,
        "seconds": time.perf_counter() - t0,
    }


def run_all(progress: Callable[[str, int, int], None] | None = None, only: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Run every derivation (or those in ``only``), in registry order.

    ``progress(id, index, total)`` is called before each derivation when given.
    """
    from convrate.theory.statements import REGISTRY

    ids = [i for i in REGISTRY if only is None or i in set(only)]
    out = []
    for k, sid in enumerate(ids):
        if progress is not None:
            progress(sid, k, len(ids))
        out.append(run_one(sid))
    return out


# ---------------------------------------------------------------- rendering


def to_json(results: list[dict[str, Any]]) -> str:
    """The results as indented JSON."""
    return json.dumps(results, indent=2, ensure_ascii=False)


def to_markdown(results: list[dict[str, Any]]) -> str:
    """A Markdown report: summary table, then each statement with its steps and closed forms."""
    lines = ["# convrate derive: the statements of THEORY.md", "",
             "Status: *proved* (sympy verified every load-bearing identity; `[argument]` steps combine them with "
             "elementary inequalities, `[cited]` steps are classical theorems), *corrected* (false as THEORY.md "
             "states it: counterexample recorded, corrected statement proved), *checked-only*, *false*. Scope: "
             "*(general)* every identity verified in every dimension (`[sympy:general]`: matrix expressions of "
             "symbolic size, or scalar laws that are the general case); *(general) + argued* the same plus the "
             "listed argued/cited steps; *(instances) + argued* some identity verified only on fixed-size symbolic "
             "instances (`[sympy]`), its generalization argued. `[sympy:example]` steps illustrate.",
             "", "| id | status | statement | general / instance sympy steps | argued steps | seconds |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['id']} | {r.get('label', r['status'])} | {r['title']} | {r.get('general_steps', 0)} / "
                     f"{r.get('instance_steps', r['checked'])} | {len(r.get('argued_steps', []))} | {r['seconds']:.2f} |")
    lines.append("")
    for r in results:
        lines += [f"## {r['id']}: {r['title']} ({r.get('label', r['status'])})", "", f"> {r['text']}", ""]
        if r["assumptions"]:
            lines.append("Assumptions: " + "; ".join(r["assumptions"]) + ".")
            lines.append("")
        if r.get("bound"):
            lines += [f"Bound function: `convrate.theory.bounds.{r['bound']}`.", ""]
        if r.get("counterexample"):
            lines += [f"**Counterexample.** {r['counterexample']}", ""]
        if r.get("corrected"):
            lines += [f"**Corrected statement.** {r['corrected']}", ""]
        lines.append("Steps:")
        lines.append("")
        lines += [f"{k + 1}. {s}" for k, s in enumerate(r["steps"])]
        lines.append("")
        if r["closed_forms"]:
            lines.append("Closed forms:")
            lines.append("")
            lines += [f"- {name}: `{val}`" for name, val in r["closed_forms"].items()]
            lines.append("")
    return "\n".join(lines) + "\n"


def _tex_text(s: str) -> str:
    """Escape plain text for LaTeX; runs of known unicode math characters become one inline
    formula, consecutive superscript characters one exponent (T⁻ᵀ -> T$^{-T}$)."""
    out: list[str] = []
    run: list[str] = []
    sup: list[str] = []

    def flush_sup() -> None:
        if sup:
            run.append("^{" + "".join(sup) + "}")
            sup.clear()

    def flush_run() -> None:
        flush_sup()
        if run:
            out.append("$" + " ".join(run) + "$")
            run.clear()

    for ch in s:
        if ch in _SUPERSCRIPTS:
            sup.append(_SUPERSCRIPTS[ch])
        elif ch in _UNICODE_LATEX:
            flush_sup()
            run.append(_UNICODE_LATEX[ch])
        else:
            flush_run()
            if ch in _TEXT_ESCAPES:
                out.append(_TEXT_ESCAPES[ch])
            elif ord(ch) < 128:
                out.append(ch)
            else:
                out.append("?")
    flush_run()
    return "".join(out)


def to_latex(results: list[dict[str, Any]]) -> str:
    """A standalone LaTeX document: each statement, its key relation and closed forms via sympy.latex."""
    from convrate.theory.statements import FORMULAS

    body = [r"\documentclass[10pt]{article}", r"\usepackage{amsmath,amssymb}", r"\usepackage[margin=2cm]{geometry}",
            r"\begin{document}", r"\section*{convrate derive: the statements of THEORY.md}",
            r"\begin{tabular}{lll}", r"\textbf{id} & \textbf{status} & \textbf{statement}\\"]
    for r in results:
        body.append(f"{_tex_text(r['id'])} & {_tex_text(r.get('label', r['status']))} & {_tex_text(r['title'])}\\\\")
    body.append(r"\end{tabular}")
    for r in results:
        body.append(rf"\subsection*{{{_tex_text(r['id'])}: {_tex_text(r['title'])} ({_tex_text(r.get('label', r['status']))})}}")
        body.append(r"\noindent " + _tex_text(r["text"]))
        if r["id"] in FORMULAS:
            body.append(r"\[ " + FORMULAS[r["id"]] + r" \]")
        if r.get("counterexample"):
            body.append(r"\paragraph{Counterexample.} " + _tex_text(r["counterexample"]))
        if r.get("corrected"):
            body.append(r"\paragraph{Corrected.} " + _tex_text(r["corrected"]))
        body.append(r"\begin{enumerate}\itemsep0pt")
        body += [r"\item " + _tex_text(s) for s in r["steps"]]
        body.append(r"\end{enumerate}")
        for name, tex in r.get("latex_forms", {}).items():
            body.append(r"\noindent " + _tex_text(name) + r": \[ " + tex + r" \]")
    body.append(r"\end{document}")
    return "\n".join(body) + "\n"
