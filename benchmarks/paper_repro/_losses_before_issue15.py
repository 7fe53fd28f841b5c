"""The CausalRM losses (arXiv 2603.18736), one small function each, in the paper's notation.

Per exposure i in the dataset D (observed and unobserved rows alike):

* f(x_i): the reward model's logit; its probability sigmoid(f(x_i)) is the predicted reward;
* r*_i: the true (clean) label, never seen in production; r_i: the observed, possibly flipped label
  (defined only where o_i = 1); o_i: observed indicator; p_i: propensity P(o_i = 1 | x_i);
* w_i = o_i / p_i: the ``weight`` column of the weighted dataset (0 on unobserved rows; 1/p, or its
  clipped / self-normalised variant, on observed rows, as exported);
* rho01 = P(r = 0 | r* = 1), rho10 = P(r = 1 | r* = 0): the flip rates (``rho01`` / ``rho10`` columns).

Base loss l(f, y):

* ``mse`` (default): (sigmoid(f) - y)^2, bounded in [0, 1]. The noise-corrected surrogate puts a
  negative weight on the wrong-label loss; with a bounded l the objective stays bounded below and the
  head stays calibrated (the paper reports MSE / MAE / R2 of this probability).
* ``bce``: -y log sigmoid(f) - (1 - y) log(1 - sigmoid(f)). Unbounded, so the corrected objective
  is unbounded below: a flexible head can push logits to +-inf on the rows where the negative part
  wins. Guard (the "non-negative correction", as in nnPU, Kiryo et al. 2017): every corrected
  per-sample term (l~, and the DR term) is clamped at >= 0, which stops the gradient exactly where a
  term would go negative. This biases l~ upwards only on rows that are already fitted confidently.

Every ``*_loss`` function returns the scalar mean; :func:`pointwise_terms` gives the per-row terms
and the row counts the trainer sums over batches for validation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BASE_LOSSES: tuple[str, ...] = ("mse", "bce")
POINTWISE_LOSSES: tuple[str, ...] = ("naive", "ips", "noise", "causalrm-ips", "causalrm-dr", "dr-debias-only")
#: Losses averaged over observed rows only (the trainer drops unobserved rows for them).
OBSERVED_ONLY: frozenset[str] = frozenset({"naive", "noise"})
#: Losses that need the imputation head y_hat.
DOUBLY_ROBUST: frozenset[str] = frozenset({"causalrm-dr", "dr-debias-only"})
#: Losses that apply the flip-rate correction.
DENOISED: frozenset[str] = frozenset({"noise", "causalrm-ips", "causalrm-dr"})


def base_loss(logit: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """l(f, y) per sample; ``target`` may be soft (in [0, 1]). Shapes (n,) -> (n,).

    mse: (sigmoid(f) - y)^2;  bce: softplus(f) - y f  (= -y log q - (1 - y) log(1 - q)).
    """
    if kind == "mse":
        return (torch.sigmoid(logit) - target).square()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    raise ValueError(f"unknown base loss {kind!r}; use one of {BASE_LOSSES}")


def corrected_loss(logit: torch.Tensor, r: torch.Tensor, rho01: torch.Tensor, rho10: torch.Tensor,
                   kind: str = "mse") -> torch.Tensor:
    """Noise-aware surrogate l~(f, r) per sample (Natarajan et al. 2013; CausalRM eq. for l~):

        l~(f, 1) = [(1 - rho10) l(f, 1) - rho01 l(f, 0)] / (1 - rho01 - rho10)
        l~(f, 0) = [(1 - rho01) l(f, 0) - rho10 l(f, 1)] / (1 - rho01 - rho10)

    so that E_r[l~(f, r) | r*] = l(f, r*) under the flip model. With ``kind="bce"`` the result is
    clamped at >= 0 (the guard described in the module docstring). Shapes (n,) -> (n,).
    """
    loss1 = base_loss(logit, torch.ones_like(logit), kind)
    loss0 = base_loss(logit, torch.zeros_like(logit), kind)
    denominator = 1.0 - rho01 - rho10
    positive = ((1.0 - rho10) * loss1 - rho01 * loss0) / denominator
    negative = ((1.0 - rho01) * loss0 - rho10 * loss1) / denominator
    corrected = r * positive + (1.0 - r) * negative
    return corrected.clamp(min=0.0) if kind == "bce" else corrected


def naive_loss(logit: torch.Tensor, r: torch.Tensor, o: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Naive: plain loss on observed rows, (1 / sum_i o_i) sum_i o_i l(f(x_i), r_i)."""
    return (o * base_loss(logit, r, kind)).sum() / o.sum().clamp(min=1.0)


def ips_loss(logit: torch.Tensor, r: torch.Tensor, w: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """IPS (debias only): (1 / |D|) sum_{i in D} o_i / p_i l(f(x_i), r_i), with w_i = o_i / p_i."""
    return (w * base_loss(logit, r, kind)).mean()


def noise_loss(logit: torch.Tensor, r: torch.Tensor, o: torch.Tensor, rho01: torch.Tensor, rho10: torch.Tensor,
               kind: str = "mse") -> torch.Tensor:
    """Noise (denoise only): (1 / sum_i o_i) sum_i o_i l~(f(x_i), r_i), unweighted."""
    return (o * corrected_loss(logit, r, rho01, rho10, kind)).sum() / o.sum().clamp(min=1.0)


def causalrm_ips_loss(logit: torch.Tensor, r: torch.Tensor, w: torch.Tensor, rho01: torch.Tensor,
                      rho10: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """CausalRM-IPS: (1 / |D|) sum_{i in D} o_i / p_i l~(f(x_i), r_i)."""
    return (w * corrected_loss(logit, r, rho01, rho10, kind)).mean()


def _dr_terms(logit: torch.Tensor, observed_term: torch.Tensor, w: torch.Tensor, y_hat: torch.Tensor,
              kind: str) -> torch.Tensor:
    # e_i depends on f through its logit (only y_hat is detached), so the DR gradient differs from
    # IPS's; with an e that ignored f, d/df of [e + w (l~ - e)] would be exactly w dl~/df.
    imputed_error = base_loss(logit, y_hat.detach(), kind)
    terms = imputed_error + w * (observed_term - imputed_error)
    return terms.clamp(min=0.0) if kind == "bce" else terms


def causalrm_dr_loss(logit: torch.Tensor, r: torch.Tensor, w: torch.Tensor, rho01: torch.Tensor,
                     rho10: torch.Tensor, y_hat: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """CausalRM-DR: (1 / |D|) sum_{i in D} [ e_i + o_i / p_i (l~(f(x_i), r_i) - e_i) ],

    with the imputed error e_i = l(f(x_i), y_hat_i) and y_hat_i = sigmoid(g(x_i)) from the imputation
    head g (trained by the trainer on the CausalRM-IPS objective, see ``rm_train.train``). Unbiased
    when either the propensities or the imputation are right (doubly robust).
    """
    return _dr_terms(logit, corrected_loss(logit, r, rho01, rho10, kind), w, y_hat, kind).mean()


def dr_debias_only_loss(logit: torch.Tensor, r: torch.Tensor, w: torch.Tensor, y_hat: torch.Tensor,
                        kind: str = "mse") -> torch.Tensor:
    """DR without noise correction: (1 / |D|) sum_{i in D} [ e_i + o_i / p_i (l(f(x_i), r_i) - e_i) ]."""
    return _dr_terms(logit, base_loss(logit, r, kind), w, y_hat, kind).mean()


def imputation_loss(logit: torch.Tensor, r: torch.Tensor, w: torch.Tensor, rho01: torch.Tensor,
                    rho10: torch.Tensor, *, denoise: bool = True) -> torch.Tensor:
    """Objective of the imputation head g: (1 / |D|) sum_i o_i / p_i l~(g(x_i), r_i) with the bounded
    MSE base (plain l instead of l~ when ``denoise`` is false, for dr-debias-only). Its minimiser is
    y_hat(x) = E[r* | x] on the full exposure distribution, the label the DR loss imputes."""
    if denoise:
        return causalrm_ips_loss(logit, r, w, rho01, rho10, "mse")
    return ips_loss(logit, r, w, "mse")


def pointwise_terms(loss: str, logit: torch.Tensor, batch: dict[str, torch.Tensor], *, base: str = "mse",
                    y_hat: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row terms and row counts of a named loss: the objective is ``terms.sum() / rows.sum()``.

    ``batch`` holds tensors of shape (n,): ``label`` (r, 0 where unobserved), ``observed`` (o, 0/1),
    ``weight`` (w = o / p), ``rho01``, ``rho10``. Summing terms and rows over batches gives the same
    estimator on a whole split (used for the validation loss and early stopping).
    """
    r, o, w = batch["label"], batch["observed"], batch["weight"]
    if loss == "naive":
        return o * base_loss(logit, r, base), o
    if loss == "noise":
        return o * corrected_loss(logit, r, batch["rho01"], batch["rho10"], base), o
    rows = torch.ones_like(logit)
    if loss == "ips":
        return w * base_loss(logit, r, base), rows
    if loss == "causalrm-ips":
        return w * corrected_loss(logit, r, batch["rho01"], batch["rho10"], base), rows
    if loss in DOUBLY_ROBUST:
        if y_hat is None:
            raise ValueError(f"{loss} needs the imputation head's y_hat")
        observed_term = (corrected_loss(logit, r, batch["rho01"], batch["rho10"], base) if loss == "causalrm-dr"
                         else base_loss(logit, r, base))
        return _dr_terms(logit, observed_term, w, y_hat, base), rows
    raise ValueError(f"unknown loss {loss!r}; use one of {POINTWISE_LOSSES}")


def pointwise_objective(loss: str, logit: torch.Tensor, batch: dict[str, torch.Tensor], *, base: str = "mse",
                        y_hat: torch.Tensor | None = None) -> torch.Tensor:
    """The named loss on a batch (scalar): ``sum(terms) / sum(rows)`` of :func:`pointwise_terms`."""
    terms, rows = pointwise_terms(loss, logit, batch, base=base, y_hat=y_hat)
    return terms.sum() / rows.sum().clamp(min=1.0)


def pair_loss(score_chosen: torch.Tensor, score_rejected: torch.Tensor, *, kind: str = "mse",
              flip: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry pair loss per pair, flip-corrected when ``flip`` (epsilon_k) is given.

    With Delta_k = f(x_chosen) - f(x_rejected) and P(chosen > rejected) = sigmoid(Delta_k):
    l(+) = (1 - sigmoid(Delta))^2 (mse) or softplus(-Delta) (bce); l(-) the same for -Delta;
    corrected: l~ = [(1 - eps) l(+) - eps l(-)] / (1 - 2 eps), so E[l~] = l(true order) when the
    pair's order is reversed with probability eps. Clamped at >= 0 with bce (same guard as above).
    """
    delta = score_chosen - score_rejected
    forward = base_loss(delta, torch.ones_like(delta), kind)
    if flip is None:
        return forward
    backward = base_loss(delta, torch.zeros_like(delta), kind)
    corrected = ((1.0 - flip) * forward - flip * backward) / (1.0 - 2.0 * flip)
    return corrected.clamp(min=0.0) if kind == "bce" else corrected


def pairwise_terms(loss: str, score_chosen: torch.Tensor, score_rejected: torch.Tensor, weight: torch.Tensor,
                   flip: torch.Tensor, *, base: str = "mse") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair terms and normalisers for ``--pairs`` training (objective: sum terms / sum rows).

    naive: mean_k l(+);  ips: sum_k w_k l(+) / sum_k w_k (self-normalised over pairs: the number of
    pairs that could have been observed is unknown);  noise: mean_k l~_k;  causalrm-ips:
    sum_k w_k l~_k / sum_k w_k. ``w_k = 1 / (p_chosen p_rejected)`` and eps_k come from pairs.parquet.
    """
    if loss not in ("naive", "ips", "noise", "causalrm-ips"):
        raise ValueError(f"loss {loss!r} has no pairwise form; use naive, ips, noise or causalrm-ips with --pairs")
    terms = pair_loss(score_chosen, score_rejected, kind=base, flip=flip if loss in DENOISED else None)
    if loss in ("ips", "causalrm-ips"):
        return weight * terms, weight
    return terms, torch.ones_like(terms)
