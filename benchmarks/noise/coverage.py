"""Coverage of the anchor intervals with impure anchors (issue 15), by Monte Carlo over seeds.

World (vectorised numpy, no proxy training): latent quality z ~ N(0, 1), clean label
r* ~ Bernoulli(sigmoid(2.5 z)) (so even the most extreme exposures are not pure), the proxy's score
z + N(0, 0.3) (a good but imperfect ranker), propensity p = 0.2 exp(0.5 z - 0.125) clipped to
[0.02, 0.9] (up-rated answers get more feedback, so the bottom anchors are thin and widen), flips
rho01 = 0.2, rho10 = 0.1, users of 40 exposures for the cluster bootstrap. Each seed calls
``propensity.noise.estimate.anchor_rates`` with the library's defaults (q = 0.97, min_anchors 300)
and true 1/p weights, and records whether the interval holds the configured rate: the bootstrap
interval alone (``rho*_ci_bootstrap``) and the reported interval widened by the quantile-sensitivity
term (``rho*_ci``).

    .venv/bin/python benchmarks/noise/coverage.py              # 200 seeds, 20k exposures (~5 min on 2 busy cores)
    .venv/bin/python benchmarks/noise/coverage.py --seeds 40   # quicker
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from propensity.noise.estimate import anchor_rates  # noqa: E402

RHO01, RHO10 = 0.2, 0.1


def impure_world(seed: int, n: int = 20_000, proxy_noise: float = 0.3) -> dict[str, np.ndarray]:
    """Arrays of shape (n,): score, observed, label, weight (1/p), user."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    r_star = rng.random(n) < 1 / (1 + np.exp(-2.5 * z))
    score = z + rng.normal(0, proxy_noise, n)
    propensity = np.clip(0.2 * np.exp(0.5 * z - 0.125), 0.02, 0.9)
    observed = rng.random(n) < propensity
    flip = rng.random(n) < np.where(r_star, RHO01, RHO10)
    label = np.where(flip, ~r_star, r_star).astype(np.int64)
    return {"score": score, "observed": observed, "label": label, "weight": 1 / propensity, "user": rng.integers(0, n // 40, n)}


def coverage(seeds: int, n: int, n_bootstrap: int) -> dict:
    covered = {"rho01": [0, 0], "rho10": [0, 0]}  # [bootstrap only, widened]
    width = {"rho01": [[], []], "rho10": [[], []]}
    errors = {"rho01": [], "rho10": []}
    for seed in range(seeds):
        world = impure_world(seed, n)
        out = anchor_rates(world["score"], world["observed"], world["label"], world["weight"], world["user"],
                           n_bootstrap=n_bootstrap, seed=seed)
        for name, truth in (("rho01", RHO01), ("rho10", RHO10)):
            for i, key in enumerate((f"{name}_ci_bootstrap", f"{name}_ci")):
                lo, hi = out[key]
                covered[name][i] += lo <= truth <= hi
                width[name][i].append(hi - lo)
            errors[name].append(out[name] - truth)
    return {
        name: {
            "coverage_bootstrap_only": covered[name][0] / seeds,
            "coverage_with_sensitivity": covered[name][1] / seeds,
            "binomial_se_at_0.95": math.sqrt(0.95 * 0.05 / seeds),
            "mean_width_bootstrap_only": float(np.mean(width[name][0])),
            "mean_width_with_sensitivity": float(np.mean(width[name][1])),
            "mean_error": float(np.mean(errors[name])),
        }
        for name in ("rho01", "rho10")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--out", type=Path, default=HERE / "coverage_results.json")
    args = parser.parse_args()
    started = time.perf_counter()
    result = {"seeds": args.seeds, "n_exposures": args.n, "bootstrap": args.bootstrap, "confidence": 0.95,
              "rates": coverage(args.seeds, args.n, args.bootstrap)}
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
