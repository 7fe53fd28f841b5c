"""Each CausalRM loss against its closed form on a hand-built batch, plus Monte-Carlo unbiasedness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rm_train import losses as L

# A hand-built batch of 5 exposures: three observed (labels 1, 0, 1), two unobserved.
LOGIT = torch.tensor([0.3, -1.2, 2.0, 0.5, -0.4], dtype=torch.float64)
LABEL = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
OBSERVED = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
PROPENSITY = np.array([0.5, 0.25, 0.8, 0.1, 0.4])
WEIGHT = OBSERVED * torch.tensor(1.0 / PROPENSITY)
RHO01, RHO10 = 0.2, 0.1
Y_HAT = torch.tensor([0.7, 0.2, 0.9, 0.6, 0.3], dtype=torch.float64)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _l(z: float, y: float, kind: str) -> float:
    q = _sigmoid(z)
    if kind == "mse":
        return (q - y) ** 2
    return -(y * math.log(q) + (1 - y) * math.log(1 - q))


def _l_tilde(z: float, r: float, kind: str) -> float:
    d = 1 - RHO01 - RHO10
    if r == 1:
        value = ((1 - RHO10) * _l(z, 1, kind) - RHO01 * _l(z, 0, kind)) / d
    else:
        value = ((1 - RHO01) * _l(z, 0, kind) - RHO10 * _l(z, 1, kind)) / d
    return value


def _batch() -> dict[str, torch.Tensor]:
    n = len(LOGIT)
    return {"label": LABEL, "observed": OBSERVED, "weight": WEIGHT,
            "rho01": torch.full((n,), RHO01, dtype=torch.float64), "rho10": torch.full((n,), RHO10, dtype=torch.float64)}


def _imputed(z: float, y_hat: float, kind: str) -> float:
    """E_{y ~ Bernoulli(y_hat)} l(f, y): the DR imputed error (issue 15)."""
    return y_hat * _l(z, 1, kind) + (1 - y_hat) * _l(z, 0, kind)


def _closed_forms(kind: str) -> dict[str, float]:
    z, r, o, w, y_hat = LOGIT.tolist(), LABEL.tolist(), OBSERVED.tolist(), WEIGHT.tolist(), Y_HAT.tolist()
    n, n_obs = len(z), sum(o)
    dr = [(_imputed(z[i], y_hat[i], kind) + w[i] * (_l_tilde(z[i], r[i], kind) - _imputed(z[i], y_hat[i], kind))) for i in range(n)]
    dr_plain = [(_imputed(z[i], y_hat[i], kind) + w[i] * (_l(z[i], r[i], kind) - _imputed(z[i], y_hat[i], kind))) for i in range(n)]
    return {
        "naive": sum(o[i] * _l(z[i], r[i], kind) for i in range(n)) / n_obs,
        "ips": sum(w[i] * _l(z[i], r[i], kind) for i in range(n)) / n,
        "noise": sum(o[i] * _l_tilde(z[i], r[i], kind) for i in range(n)) / n_obs,
        "causalrm-ips": sum(w[i] * _l_tilde(z[i], r[i], kind) for i in range(n)) / n,
        "causalrm-dr": sum(dr) / n,
        "dr-debias-only": sum(dr_plain) / n,
    }


@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_each_loss_equals_its_closed_form(kind: str) -> None:
    rho01, rho10 = _batch()["rho01"], _batch()["rho10"]
    expected = _closed_forms(kind)
    got = {
        "naive": L.naive_loss(LOGIT, LABEL, OBSERVED, kind),
        "ips": L.ips_loss(LOGIT, LABEL, WEIGHT, kind),
        "noise": L.noise_loss(LOGIT, LABEL, OBSERVED, rho01, rho10, kind),
        "causalrm-ips": L.causalrm_ips_loss(LOGIT, LABEL, WEIGHT, rho01, rho10, kind),
        "causalrm-dr": L.causalrm_dr_loss(LOGIT, LABEL, WEIGHT, rho01, rho10, Y_HAT, kind),
        "dr-debias-only": L.dr_debias_only_loss(LOGIT, LABEL, WEIGHT, Y_HAT, kind),
    }
    for name, value in got.items():
        assert float(value) == pytest.approx(expected[name], rel=1e-12), name
        # The trainer's dispatcher computes the same number (the per-row terms; bce's objective adds
        # the batch-level non-negative correction, checked below).
        terms, rows = L.pointwise_terms(name, LOGIT, _batch(), base=kind, y_hat=Y_HAT)
        assert float(terms.sum() / rows.sum()) == pytest.approx(expected[name], rel=1e-12), name
        if kind == "bce":
            positive, negative, _ = L.bce_parts(name, LOGIT, _batch(), y_hat=Y_HAT)
            np.testing.assert_allclose((positive + negative).numpy(), terms.numpy(), rtol=1e-12, atol=1e-12)
            value = float(L.pointwise_objective(name, LOGIT, _batch(), base=kind, y_hat=Y_HAT))
            nonnegative = (max(float(positive.sum()), 0.0) + max(float(negative.sum()), 0.0)) / float(rows.sum())
            assert value == pytest.approx(nonnegative, rel=1e-12), name


def test_corrected_loss_closed_form_per_label() -> None:
    z = torch.tensor([0.3, 0.3], dtype=torch.float64)
    r = torch.tensor([1.0, 0.0], dtype=torch.float64)
    got = L.corrected_loss(z, r, torch.tensor(RHO01), torch.tensor(RHO10), "mse").tolist()
    q = _sigmoid(0.3)
    assert got[0] == pytest.approx((0.9 * (q - 1) ** 2 - 0.2 * q**2) / 0.7)
    assert got[1] == pytest.approx((0.8 * q**2 - 0.1 * (q - 1) ** 2) / 0.7)


def _tolerance(samples: np.ndarray) -> float:
    """Four standard errors of a Monte-Carlo mean."""
    return 4.0 * samples.std() / math.sqrt(len(samples))


@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_surrogate_is_unbiased_under_the_flip_model(kind: str) -> None:
    rng = np.random.default_rng(0)
    n = 400_000
    logit = torch.tensor(rng.normal(1.0, 0.7, n))
    r_star = torch.tensor(rng.binomial(1, 0.6, n).astype(float))
    flip = torch.tensor(rng.random(n)) < torch.where(r_star == 1, RHO01, RHO10)
    r = torch.where(flip, 1 - r_star, r_star)
    surrogate = L.corrected_loss(logit, r, torch.tensor(RHO01), torch.tensor(RHO10), kind).numpy()
    clean = L.base_loss(logit, r_star, kind).numpy()
    difference = surrogate - clean
    assert abs(difference.mean()) < _tolerance(difference)
    # The noisy loss itself is biased (the test can fail): E[l(f, r)] != l(f, r*).
    noisy = L.base_loss(logit, r, kind).numpy() - clean
    assert abs(noisy.mean()) > 5 * _tolerance(noisy)


def _selection(n: int, seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    logit = torch.tensor(rng.normal(0.8, 1, n))  # a model leaning positive: l(f, 0) > l(f, 1) on average
    r_star = torch.tensor(rng.binomial(1, 0.5, n).astype(float))
    # Selection depends on the label (MNAR given f): the naive average is biased.
    propensity = np.clip(0.1 + 0.5 * r_star.numpy() + 0.1 * rng.random(n), 0.05, 1.0)
    observed = torch.tensor(rng.binomial(1, propensity).astype(float))
    flip = torch.tensor(rng.random(n)) < torch.where(r_star == 1, RHO01, RHO10)
    return {"logit": logit, "r_star": r_star, "observed": observed, "weight": observed / torch.tensor(propensity),
            "noisy": torch.where(flip, 1 - r_star, r_star), "y_hat": torch.tensor(rng.random(n))}


def test_ips_over_exposures_is_unbiased_for_the_fully_observed_clean_loss() -> None:
    s = _selection(400_000, 1)
    clean = L.base_loss(s["logit"], s["r_star"]).numpy()
    ips_terms = (s["weight"] * L.base_loss(s["logit"], s["r_star"])).numpy()
    assert abs(ips_terms.mean() - clean.mean()) < _tolerance(ips_terms - clean)
    naive = float(L.naive_loss(s["logit"], s["r_star"], s["observed"]))
    assert abs(naive - clean.mean()) > 10 * _tolerance(clean)


def test_causalrm_ips_and_dr_are_unbiased_with_noise_and_selection() -> None:
    s = _selection(400_000, 2)
    n = len(s["logit"])
    rho01, rho10 = torch.full((n,), RHO01, dtype=torch.float64), torch.full((n,), RHO10, dtype=torch.float64)
    clean = L.base_loss(s["logit"], s["r_star"]).numpy()
    batch = {"label": s["noisy"] * s["observed"], "observed": s["observed"], "weight": s["weight"], "rho01": rho01, "rho10": rho10}
    for loss in ("causalrm-ips", "causalrm-dr"):
        # y_hat is deliberately wrong (uniform noise): DR stays unbiased because the propensities are right.
        terms, _ = L.pointwise_terms(loss, s["logit"], batch, y_hat=s["y_hat"])
        difference = terms.numpy() - clean
        assert abs(difference.mean()) < _tolerance(difference), loss


def test_dr_gradient_depends_on_the_imputation_and_differs_from_ips() -> None:
    logit = LOGIT.clone().requires_grad_(True)
    batch = _batch()
    L.pointwise_objective("causalrm-ips", logit, batch).backward()
    ips_grad = logit.grad.clone()
    logit.grad = None
    L.pointwise_objective("causalrm-dr", logit, batch, y_hat=Y_HAT).backward()
    dr_grad = logit.grad.clone()
    assert torch.all(ips_grad[3:] == 0)  # unobserved rows carry no IPS gradient
    assert torch.all(dr_grad[3:] != 0)  # DR pulls them towards y_hat
    # y_hat itself receives no gradient through the reward model's loss.
    y_hat = Y_HAT.clone().requires_grad_(True)
    L.pointwise_objective("causalrm-dr", LOGIT.clone().requires_grad_(True), batch, y_hat=y_hat).backward()
    assert y_hat.grad is None


def test_pair_loss_closed_form() -> None:
    chosen, rejected = torch.tensor([1.5], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    eps = torch.tensor([0.2], dtype=torch.float64)
    q = _sigmoid(1.0)
    assert float(L.pair_loss(chosen, rejected)) == pytest.approx((1 - q) ** 2)
    # The posterior target 1 - eps (soft-label BT): 0.8 softplus(-1) + 0.2 softplus(1).
    expected = 0.8 * math.log1p(math.exp(-1.0)) + 0.2 * math.log1p(math.exp(1.0))
    assert float(L.pair_loss(chosen, rejected, kind="bce", flip=eps)) == pytest.approx(expected)
    assert float(L.pair_loss(chosen, rejected, kind="mse", flip=eps)) == pytest.approx((q - 0.8) ** 2)


def test_pairwise_terms_weighting() -> None:
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    weight, flip = torch.tensor([2.0, 6.0]), torch.tensor([0.1, 0.1])
    terms, rows = L.pairwise_terms("ips", chosen, rejected, weight, flip)
    plain = L.pair_loss(chosen, rejected)
    assert float(terms.sum() / rows.sum()) == pytest.approx(float((weight * plain).sum() / weight.sum()))
    with pytest.raises(ValueError, match="no pairwise form"):
        L.pairwise_terms("causalrm-dr", chosen, rejected, weight, flip)


@pytest.mark.parametrize("loss", ["naive", "noise"])
def test_pairwise_terms_unweighted_losses_are_plain_means(loss: str) -> None:
    """naive: mean_k l(+); noise: mean_k l~_k with the pair flip eps_k (mutation testing, issue 22:
    the noise pair loss had no test)."""
    chosen, rejected = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    weight, flip = torch.tensor([2.0, 6.0], dtype=torch.float64), torch.tensor([0.1, 0.3], dtype=torch.float64)
    terms, rows = L.pairwise_terms(loss, chosen, rejected, weight, flip)
    expected = L.pair_loss(chosen, rejected, flip=flip if loss == "noise" else None)
    assert rows.tolist() == [1.0, 1.0]
    np.testing.assert_allclose(terms.numpy(), expected.numpy())
    assert float(terms[0]) == pytest.approx((_sigmoid(1.0) - (0.9 if loss == "noise" else 1.0)) ** 2)


@pytest.mark.parametrize("denoise", [True, False])
def test_imputation_loss_closed_form(denoise: bool) -> None:
    """(1 / |D|) sum_i w_i l~(g(x_i), r_i) (plain l without denoising), bounded MSE base (issue 22:
    mutation testing found it untested)."""
    n = len(LOGIT)
    rho01, rho10 = torch.full((n,), RHO01, dtype=torch.float64), torch.full((n,), RHO10, dtype=torch.float64)
    value = float(L.imputation_loss(LOGIT, LABEL, WEIGHT, rho01, rho10, denoise=denoise))
    z, r, w = LOGIT.tolist(), LABEL.tolist(), WEIGHT.tolist()
    term = _l_tilde if denoise else _l
    assert value == pytest.approx(sum(w[i] * term(z[i], r[i], "mse") for i in range(n)) / n)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: L.base_loss(LOGIT, LABEL, "hinge"), "unknown base loss"),
        (lambda: L.pointwise_objective("causalrm-dr", LOGIT, _batch()), "needs the imputation head"),
        (lambda: L.pointwise_objective("focal", LOGIT, _batch()), "unknown loss"),
    ],
)
def test_loss_errors(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------- issue 15: bce guard and DR value


def _expected_batch(pi: float, rho01: float, rho10: float, propensity: float = 0.25, scale: int = 4_000) -> dict[str, torch.Tensor]:
    """The *expected* batch of a constant-context world: every cell (r*, r, o) replicated in exact
    proportion to its probability (scale * probability is an integer for the rates used here), so a
    batch objective on it is the expected objective, with no Monte Carlo error."""
    rows: list[tuple[float, float]] = []
    for r_star, p_star in ((1, pi), (0, 1 - pi)):
        for r in (0, 1):
            p_r = (1 - rho01 if r == 1 else rho01) if r_star == 1 else (rho10 if r == 1 else 1 - rho10)
            for o, p_o in ((1, propensity), (0, 1 - propensity)):
                count = scale * p_star * p_r * p_o
                assert abs(count - round(count)) < 1e-6, "choose rates with exact cell counts"
                rows += [(float(r * o), float(o))] * round(count)
    cells = torch.tensor(rows, dtype=torch.float64)
    n = len(cells)
    return {"label": cells[:, 0], "observed": cells[:, 1], "weight": cells[:, 1] / propensity,
            "rho01": torch.full((n,), rho01, dtype=torch.float64), "rho10": torch.full((n,), rho10, dtype=torch.float64)}


def _constant_model_minimiser(loss: str, batch: dict[str, torch.Tensor], y_hat: float) -> float:
    """argmin over a constant prediction q = sigmoid(f) of the bce objective: a 0.005 grid, then 0.0005."""
    n = len(batch["label"])
    imputation = torch.full((n,), y_hat, dtype=torch.float64)

    def value(q: float) -> float:
        logit = torch.full((n,), math.log(q / (1 - q)), dtype=torch.float64)
        return float(L.pointwise_objective(loss, logit, batch, base="bce", y_hat=imputation))

    coarse = np.arange(0.005, 0.9951, 0.005)
    best = coarse[int(np.argmin([value(q) for q in coarse]))]
    fine = np.arange(max(best - 0.005, 1e-4), min(best + 0.005, 1 - 1e-4), 0.0005)
    return float(fine[int(np.argmin([value(q) for q in fine]))])


@pytest.mark.parametrize(("loss", "rho01", "rho10"), [("causalrm-ips", 0.2, 0.1), ("noise", 0.2, 0.1),
                                                      ("causalrm-dr", 0.2, 0.1), ("dr-debias-only", 0.0, 0.0)])
@pytest.mark.parametrize("pi", [0.05, 0.3, 0.7, 0.95])
def test_bce_minimiser_on_a_constant_model_recovers_pi(loss: str, rho01: float, rho10: float, pi: float) -> None:
    """Issue 15.1: the old per-row clamp at 0 capped the reachable sigmoid(f) to [0.188, 0.741] under
    causalrm-ips (rho 0.2 / 0.1) and pi = 0.95 at 0.891 under dr-debias-only with no noise; the
    batch-level non-negative correction leaves the expected objective's minimiser at pi. The expected
    batch is exact, so the only error is the grid's (0.0005); the issue asks for 0.02. The DR losses
    impute a deliberately wrong y_hat = 0.5 (the propensity 0.25 is right)."""
    batch = _expected_batch(pi, rho01, rho10)
    assert abs(_constant_model_minimiser(loss, batch, y_hat=0.5) - pi) < 0.02


def test_nonnegative_objective_reverses_the_step_of_a_negative_part() -> None:
    """nnPU, Algorithm 1: a batch part below 0 gets gradient ascent (alone); the value counts it as 0."""
    f = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    positive, negative = 2.0 * f, -3.0 * f  # R+ = 1.4 >= 0, R- = -2.1 < 0
    value = L.nonnegative_objective(positive, negative, torch.tensor(2.0, dtype=torch.float64))
    value.backward()
    assert float(value.detach()) == pytest.approx(1.4 / 2)
    assert float(f.grad) == pytest.approx(3.0 / 2)  # d/df of -R- / 2: pushes R- back up towards 0
    f.grad = None
    L.nonnegative_objective(2.0 * f, 3.0 * f, torch.tensor(2.0, dtype=torch.float64)).backward()
    assert float(f.grad) == pytest.approx(5.0 / 2)  # both parts >= 0: the plain risk's gradient
    # The branch follows the totals over all ranks when given (DDP), not this rank's parts.
    f.grad = None
    L.nonnegative_objective(2.0 * f, -3.0 * f, torch.tensor(2.0, dtype=torch.float64),
                            positive_total=torch.tensor(5.0), negative_total=torch.tensor(1.0)).backward()
    assert float(f.grad) == pytest.approx(-1.0 / 2)


# A world with three contexts x (equally likely): P(r* = 1 | x), the true propensity p(x), a fixed model f(x).
_ETA = np.array([0.2, 0.5, 0.85])
_P_TRUE = np.array([0.1, 0.3, 0.6])
_LOGIT_X = np.array([0.0, 0.5, 1.0])


def _dr_world(n: int, seed: int, *, rho01: float, rho10: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, n)
    r_star = (rng.random(n) < _ETA[x]).astype(float)
    flip = rng.random(n) < np.where(r_star == 1, rho01, rho10)
    observed = (rng.random(n) < _P_TRUE[x]).astype(float)
    return {"x": x, "observed": observed, "label": np.where(flip, 1 - r_star, r_star) * observed}


def _population_loss(kind: str) -> float:
    """The target: (1/3) sum_x E[l(f(x), r*) | x] over all exposures, in closed form."""
    q = 1 / (1 + np.exp(-_LOGIT_X))
    l1, l0 = ((q - 1) ** 2, q**2) if kind == "mse" else (-np.log(q), -np.log(1 - q))
    return float(np.mean(_ETA * l1 + (1 - _ETA) * l0))


@pytest.mark.parametrize("kind", ["mse", "bce"])
@pytest.mark.parametrize(("loss", "rho01", "rho10"), [("causalrm-dr", 0.2, 0.1), ("dr-debias-only", 0.0, 0.0)])
@pytest.mark.parametrize("right", ["propensity", "imputation"])
def test_dr_value_is_doubly_robust(kind: str, loss: str, rho01: float, rho10: float, right: str) -> None:
    """Issue 15.2: the DR *value* is unbiased for the full-population clean loss when either the
    propensities or the imputation is right. Before the fix, e = (q - y_hat)^2 lacked the Bernoulli
    variance y_hat (1 - y_hat): with a wrong constant propensity 0.6 and the right y_hat, the mse value
    was off by (1/3) sum_x eta(1 - eta)(1 - p(x) / 0.6) = 0.086, ~40 standard errors here."""
    world = _dr_world(200_000, 15, rho01=rho01, rho10=rho10)
    x, n = world["x"], len(world["x"])
    propensity = _P_TRUE[x] if right == "propensity" else np.full(n, 0.6)
    y_hat = _ETA[x] if right == "imputation" else np.full(n, 0.5)
    batch = {"label": torch.tensor(world["label"]), "observed": torch.tensor(world["observed"]),
             "weight": torch.tensor(world["observed"] / propensity),
             "rho01": torch.full((n,), rho01, dtype=torch.float64), "rho10": torch.full((n,), rho10, dtype=torch.float64)}
    terms, _ = L.pointwise_terms(loss, torch.tensor(_LOGIT_X[x]), batch, base=kind, y_hat=torch.tensor(y_hat))
    terms = terms.numpy()
    assert abs(terms.mean() - _population_loss(kind)) < _tolerance(terms)
