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
    return max(value, 0.0) if kind == "bce" else value


def _batch() -> dict[str, torch.Tensor]:
    n = len(LOGIT)
    return {"label": LABEL, "observed": OBSERVED, "weight": WEIGHT,
            "rho01": torch.full((n,), RHO01, dtype=torch.float64), "rho10": torch.full((n,), RHO10, dtype=torch.float64)}


def _closed_forms(kind: str) -> dict[str, float]:
    z, r, o, w, y_hat = LOGIT.tolist(), LABEL.tolist(), OBSERVED.tolist(), WEIGHT.tolist(), Y_HAT.tolist()
    n, n_obs = len(z), sum(o)
    dr = [(_l(z[i], y_hat[i], kind) + w[i] * (_l_tilde(z[i], r[i], kind) - _l(z[i], y_hat[i], kind))) for i in range(n)]
    dr_plain = [(_l(z[i], y_hat[i], kind) + w[i] * (_l(z[i], r[i], kind) - _l(z[i], y_hat[i], kind))) for i in range(n)]
    if kind == "bce":
        dr, dr_plain = [max(t, 0.0) for t in dr], [max(t, 0.0) for t in dr_plain]
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
        # The trainer's dispatcher computes the same number.
        dispatched = L.pointwise_objective(name, LOGIT, _batch(), base=kind, y_hat=Y_HAT)
        assert float(dispatched) == pytest.approx(expected[name], rel=1e-12), name


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
    # BCE's guard clamps l~ where it would turn negative (logit > ~1.05 for r = 1, < ~-1.7 for r = 0 at
    # these rates): the unbiasedness claim is about the unclamped surrogate, so stay inside that range.
    logit = torch.tensor(rng.normal(1.0, 0.7, n) if kind == "mse" else rng.uniform(-1.6, 1.0, n))
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


def test_bce_guard_keeps_the_corrected_loss_bounded_below() -> None:
    logit = torch.linspace(-60, 60, 121, dtype=torch.float64, requires_grad=True)
    ones = torch.ones_like(logit)
    guarded = L.corrected_loss(logit, ones, torch.tensor(RHO01), torch.tensor(RHO10), "bce")
    assert float(guarded.detach().min()) >= 0.0
    guarded.sum().backward()
    # Past the point where the term would turn negative, the gradient is exactly zero: no run-off to +inf.
    assert float(logit.grad[-1]) == 0.0
    mse = L.corrected_loss(logit.detach(), ones, torch.tensor(RHO01), torch.tensor(RHO10), "mse")
    # With the bounded MSE base the surrogate is bounded below by -rho01 / (1 - rho01 - rho10).
    assert float(mse.min()) >= -RHO01 / (1 - RHO01 - RHO10) - 1e-6


def test_pair_loss_closed_form_and_flip_unbiasedness() -> None:
    chosen, rejected = torch.tensor([1.5], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    eps = torch.tensor([0.2], dtype=torch.float64)
    q = _sigmoid(1.0)
    assert float(L.pair_loss(chosen, rejected)) == pytest.approx((1 - q) ** 2)
    expected = (0.8 * math.log1p(math.exp(-1.0)) - 0.2 * math.log1p(math.exp(1.0))) / 0.6
    assert float(L.pair_loss(chosen, rejected, kind="bce", flip=eps)) == pytest.approx(max(expected, 0.0))
    # Monte Carlo: observed order reversed with probability eps.
    rng = np.random.default_rng(3)
    n = 400_000
    delta = torch.tensor(rng.normal(0.5, 1.0, n))  # score(truly better) - score(truly worse)
    reverse = torch.tensor(rng.random(n) < 0.2)
    observed_delta = torch.where(reverse, -delta, delta)
    surrogate = L.pair_loss(observed_delta, torch.zeros(n, dtype=torch.float64), flip=torch.full((n,), 0.2, dtype=torch.float64))
    clean = L.pair_loss(delta, torch.zeros(n, dtype=torch.float64))
    difference = (surrogate - clean).numpy()
    assert abs(difference.mean()) < _tolerance(difference)


def test_pairwise_terms_weighting() -> None:
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    weight, flip = torch.tensor([2.0, 6.0]), torch.tensor([0.1, 0.1])
    terms, rows = L.pairwise_terms("ips", chosen, rejected, weight, flip)
    plain = L.pair_loss(chosen, rejected)
    assert float(terms.sum() / rows.sum()) == pytest.approx(float((weight * plain).sum() / weight.sum()))
    with pytest.raises(ValueError, match="no pairwise form"):
        L.pairwise_terms("causalrm-dr", chosen, rejected, weight, flip)


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
