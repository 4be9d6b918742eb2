"""Battery entries for PREC (floating-point limit of a SpecDef-defended S1 pair).

* ``prec_forward_error_bound``: for weights with controlled spectra (r in 2..16, n_in, n_out
  in 1..32, weight scale 10^-2..10^4), Gaussian data and K log-uniform in [1, 1e6], in each of
  fp64, fp32, bf16, fp16: the measured per-sample error ||y^_k - W_b W_a x_k||_2 (exact
  reference) is at most the rigorous bound of ``theory.bounds_precision.forward_error_bound``
  (checked on the sample with the largest error / bound ratio), whenever nothing overflowed;
  and the overflow predictions are honoured: ``no_overflow_guaranteed`` implies finite outputs,
  ``overflow_certain`` implies an overflow.
* ``prec_safe_K_certified``: the measured largest safe K (bisection on fixed probes) is at least
  the certified one (same bisection with the bound as predicate), per dtype and tolerance --
  which holds because the certified predicate implies the measured one at every probe.

No check of the error *growth* in K: rounding errors may cancel, so no rigorous lower bound
exists; ``numerics.fp_precision.growth_exponent`` reports the empirical exponent instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import mpmath
from hypothesis import strategies as st

from convrate.numerics.battery import entry
from convrate.numerics.fp_precision import (BOUND_SLACK, DTYPES, PrecisionProblem, controlled_pair)
from convrate.theory.core import CheckResult, compare

PRECISION = ("exact rational reference (fmpq) + arb sqrt at 128 bits; "
             "bound in mpmath dps=30 inflated by 1e-20")


@dataclass(frozen=True)
class PrecInstance:
    """Drawn integers; weights built by ``controlled_pair``. K = 10^(k_centi / 100),
    scale = 10^(scale_deci / 10), cond = 10^(cond_deci / 10)."""

    seed: int
    r: int
    n_in: int
    n_out: int
    N: int
    k_centi: int
    scale_deci: int
    cond_deci: int

    @property
    def K(self) -> float:
        return 10.0 ** (self.k_centi / 100)

    def problem(self) -> PrecisionProblem:
        return PrecisionProblem(*controlled_pair(self.seed, self.r, self.n_in, self.n_out, self.N,
                                                 10.0 ** (self.scale_deci / 10), 10.0 ** (self.cond_deci / 10)))

    def describe(self, with_K: bool = True) -> str:
        k = f", K=1e{self.k_centi / 100:g}" if with_K else ""
        return (f"pair(seed={self.seed}, r={self.r}, n_in={self.n_in}, n_out={self.n_out}, N={self.N}{k}, "
                f"scale=1e{self.scale_deci / 10:g}, cond=1e{self.cond_deci / 10:g})")

    def __str__(self) -> str:
        return self.describe()


def prec_instances(max_r: int = 16, max_dim: int = 32, max_k_centi: int = 600) -> st.SearchStrategy[PrecInstance]:
    """Strategy for PrecInstance (K log-uniform on [1, 10^(max_k_centi/100)])."""
    return st.builds(PrecInstance, seed=st.integers(0, 2**16), r=st.integers(2, max_r),
                     n_in=st.integers(1, max_dim), n_out=st.integers(1, max_dim), N=st.integers(1, 6),
                     k_centi=st.integers(0, max_k_centi), scale_deci=st.integers(-20, 40),
                     cond_deci=st.integers(0, 30))


@entry("prec_forward_error_bound", ["PREC"], prec_instances())
def check_forward_error_bound(inst: PrecInstance) -> list[CheckResult]:
    prob = inst.problem()
    out: list[CheckResult] = []
    for d in DTYPES:
        fe = prob.evaluate_K(inst.K, d)
        tag = f"{inst} {d}"
        if fe.no_overflow_guaranteed:
            out.append(compare("PREC", tag, int(fe.overflow), "<=", 0, precision="exact (flags)",
                               detail="no overflow guaranteed by the entrywise bound => outputs finite"))
        if fe.overflow_certain:
            out.append(compare("PREC", tag, int(fe.overflow), ">=", 1, precision="exact (flags)",
                               detail="an entry at or above the overflow threshold => overflow"))
        if fe.overflow or fe.bounds is None:
            continue
        k = max(range(prob.N), key=lambda i: fe.abs_errors[i] / fe.bounds[i])
        b = fe.bounds[k]
        out.append(compare("PREC", tag, fe.abs_errors[k], "<=", b, precision=PRECISION,
                           err=fe.err_abs + float(BOUND_SLACK * b),
                           detail=f"sample {k}: rel error {fe.rel_errors[k]:.3g}, bound / error = "
                                  f"{mpmath.nstr(b / fe.abs_errors[k], 4) if fe.abs_errors[k] else 'inf'}"))
    return out


@entry("prec_safe_K_certified", ["PREC"],
       st.tuples(prec_instances(max_r=6, max_dim=10), st.sampled_from([1e-1, 1e-2, 1e-3])), cost=3)
def check_safe_K_certified(drawn: tuple[PrecInstance, float]) -> list[CheckResult]:
    inst, rtol = drawn
    prob = inst.problem()
    out = []
    for d in DTYPES:
        meas = prob.safe_K_search(d, rtol, resolution=0.1)
        cert = prob.safe_K_search(d, rtol, certified=True, resolution=0.1)
        out.append(compare("PREC", f"{inst.describe(with_K=False)} {d} rtol={rtol:g}", meas.K, ">=", cert.K,
                           precision="exact (same fixed bisection probes)",
                           detail=f"measured safe K {meas.K:.4g} ({meas.cause}), certified {cert.K:.4g}"))
    return out
