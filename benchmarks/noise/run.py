"""Noise-rate benchmark (issue 10): anchor and audit estimators on simulated logs, and the OASST
sanity check on real emoji votes.

    .venv/bin/python benchmarks/noise/run.py            # full: 100k exposures, 4-8 minutes on 2 busy cores
    .venv/bin/python benchmarks/noise/run.py --quick    # 20k exposures, about 1 minute

Writes ``benchmarks/noise/results.json`` and prints the markdown tables of README.md.

Truth: the simulator flips y_true ~ Bernoulli(r*) on observed rows, so the true rates are the
realised flip frequencies rho01 = P(flipped | y_true=1, observed), rho10 = P(flipped | y_true=0,
observed). The anchor estimator targets P(r=0 | top anchors), which equals rho01 only when the
anchors are pure; with purity m = P(y_true=1 | top anchors) its expectation is
rho01 + (1 - m)(1 - rho01 - rho10) ("impurity bias", reported per run).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from feedback_etl.simulator import SimulationConfig, exposure_frame  # noqa: E402
from feedback_etl.texts import find_shared_data  # noqa: E402
from propensity.noise.estimate import NoiseConfig, anchor_rates, anchor_sets, audit_rates, proxy_scores  # noqa: E402

log = logging.getLogger("benchmarks.noise")
HERE = Path(__file__).resolve().parent


def _truth(frame: pl.DataFrame) -> tuple[float, float]:
    votes = frame.filter(pl.col("observed"))
    return (
        float(votes.filter(pl.col("y_true") == 1)["flipped"].mean()),
        float(votes.filter(pl.col("y_true") == 0)["flipped"].mean()),
    )


def _anchor_run(frame: pl.DataFrame, cfg: NoiseConfig, score: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """One anchor estimate with true propensities; adds truth, purity and impurity bias."""
    propensity = frame["propensity"].to_numpy()
    weight = 1.0 / propensity
    info = None
    if score is None:
        score, info = proxy_scores(frame, cfg, weight=weight)
    observed = frame["observed"].to_numpy()
    label = frame["label"].fill_null(0).to_numpy()
    out = anchor_rates(
        score, observed, label, weight, frame["user_id"].to_numpy(), quantile=cfg.quantile, min_anchors=cfg.min_anchors,
        min_quantile=cfg.min_quantile, n_bootstrap=cfg.bootstrap, confidence=cfg.confidence, seed=cfg.seed,
    )
    true01, true10 = _truth(frame)
    y_true = frame["y_true"].to_numpy()
    top, bottom = anchor_sets(score, out["n_anchor_exposures"]["top"], out["n_anchor_exposures"]["bottom"])
    purity_top, impurity_bottom = float(y_true[top].mean()), float(y_true[bottom].mean())
    informative = 1 - true01 - true10
    # The proxy's own scores as probabilities (what the winner's curse warns against).
    out.update(
        true_rho01=true01, true_rho10=true10, err01=out["rho01"] - true01, err10=out["rho10"] - true10,
        covered01=out["rho01_ci"][0] <= true01 <= out["rho01_ci"][1], covered10=out["rho10_ci"][0] <= true10 <= out["rho10_ci"][1],
        purity_top=purity_top, p_true1_bottom=impurity_bottom,
        impurity_bias01=(1 - purity_top) * informative, impurity_bias10=impurity_bottom * informative,
        model_score_rho01=float(1 - score[top].mean()), model_score_rho10=float(score[bottom].mean()),
        proxy=info,
    )
    return out, score


def scenarios(n: int, seeds: list[int], pairs: list[tuple[float, float]], cfg: NoiseConfig) -> tuple[list[dict], dict]:
    rows, kept = [], {}
    for rho01, rho10 in pairs:
        for seed in seeds:
            t0 = time.time()
            frame = exposure_frame(SimulationConfig(out="unused", n_exposures=n, rho01=rho01, rho10=rho10, seed=seed))
            out, score = _anchor_run(frame, cfg)
            out.update(rho01_config=rho01, rho10_config=rho10, seed=seed, n_exposures=n, seconds=time.time() - t0)
            rows.append(out)
            kept.setdefault((rho01, rho10), (frame, score))
            log.info("rho %.2f/%.2f seed %d: err %+.3f %+.3f (%.0fs)", rho01, rho10, seed, out["err01"], out["err10"], out["seconds"])
    return rows, kept


def quantile_sweep(frame: pl.DataFrame, score: np.ndarray, quantiles: list[float], cfg: NoiseConfig) -> list[dict]:
    """The same proxy scores, anchors at fixed quantiles (no widening: min_anchors = 1)."""
    rows = []
    for q in quantiles:
        sweep_cfg = NoiseConfig(quantile=q, min_anchors=1, min_quantile=min(q, 0.75), bootstrap=cfg.bootstrap, seed=cfg.seed)
        out, _ = _anchor_run(frame, sweep_cfg, score=score)
        out["quantile_fixed"] = q
        rows.append(out)
    return rows


def richardson(sweep: list[dict], q: float) -> dict | None:
    """2 rho(f) - rho(2f), f = 1 - q: removes the part of the impurity bias linear in the anchor fraction."""
    by_q = {round(r["quantile_fixed"], 4): r for r in sweep}
    f = 1 - q
    a, b = by_q.get(round(q, 4)), by_q.get(round(1 - 2 * f, 4))
    if a is None or b is None:
        return None
    return {"quantile": q, "rho01": 2 * a["rho01"] - b["rho01"], "rho10": 2 * a["rho10"] - b["rho10"],
            "err01": 2 * a["rho01"] - b["rho01"] - a["true_rho01"], "err10": 2 * a["rho10"] - b["rho10"] - a["true_rho10"]}


def audit_coverage(pairs: list[tuple[float, float]], sizes: list[int], n_exposures: int, seeds: list[int]) -> list[dict]:
    """Coverage of the configured flip rate by audit intervals. Audits are DISJOINT random blocks of
    the observed exposures of fresh simulations (no model fit needed), so the draws are independent:
    the simulator flips each vote independently with the configured rate."""
    rows = []
    for rho01, rho10 in pairs:
        votes = pl.concat([
            exposure_frame(SimulationConfig(out="unused", n_exposures=n_exposures, rho01=rho01, rho10=rho10, seed=seed))
            .filter(pl.col("observed")).select("y_true", "label")
            for seed in seeds
        ])
        rng = np.random.default_rng(0)
        order = rng.permutation(votes.height)
        y_true, label = votes["y_true"].to_numpy()[order], votes["label"].to_numpy()[order]
        for size in sizes:
            n_draws = len(y_true) // size
            for interval in ("clopper-pearson", "wilson"):
                hits01 = hits10 = 0
                widths = []
                for d in range(n_draws):
                    block = slice(d * size, (d + 1) * size)
                    out = audit_rates(y_true[block], label[block], interval=interval)
                    hits01 += out["rho01_ci"][0] <= rho01 <= out["rho01_ci"][1]
                    hits10 += out["rho10_ci"][0] <= rho10 <= out["rho10_ci"][1]
                    widths.append((out["rho01_ci"][1] - out["rho01_ci"][0] + out["rho10_ci"][1] - out["rho10_ci"][0]) / 2)
                rows.append({"rho01": rho01, "rho10": rho10, "audit_size": size, "interval": interval, "draws": n_draws,
                             "coverage01": hits01 / n_draws, "coverage10": hits10 / n_draws, "mean_width": float(np.mean(widths))})
    return rows


def proxy_study(n: int, seed: int, cfg: NoiseConfig) -> list[dict]:
    frame = exposure_frame(SimulationConfig(out="unused", n_exposures=n, seed=seed))
    rows = []
    for proxy in ("lightgbm", "logistic"):
        t0 = time.time()
        out, _ = _anchor_run(frame, NoiseConfig(proxy=proxy, bootstrap=cfg.bootstrap, seed=cfg.seed, min_anchors=cfg.min_anchors))
        out.update(proxy_model=proxy, seconds=time.time() - t0, n_exposures=n)
        rows.append(out)
    return rows


# ------------------------------------------------------------------------------------ OASST


def oasst_exposures(path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One exposure per emoji vote on an assistant reply (label 1 for +1, 0 for -1), plus one
    unobserved exposure per reply nobody voted on. user_id is the conversation tree: a reply's
    votes (and its siblings') must share a fold, or the proxy would see the reply's other votes.

    Returns (exposures, replies): replies has message_id, tree, rank, n_siblings, up, down."""
    replies = []

    def walk(message: dict, tree: str) -> None:
        children = message.get("replies") or []
        assistant = [c for c in children if c.get("role") == "assistant"]
        for child in children:
            if child.get("role") == "assistant":
                emojis = child.get("emojis") or {}
                replies.append({
                    "message_id": child["message_id"], "tree": tree, "rank": child.get("rank"), "n_siblings": len(assistant),
                    "up": int(emojis.get("+1", 0)), "down": int(emojis.get("-1", 0)), "response_text": child["text"],
                })
            walk(child, tree)

    with path.open(encoding="utf-8") as handle:
        for line in handle:
            tree = json.loads(line)
            walk(tree["prompt"], tree["message_tree_id"])
    rows = []
    for r in replies:
        votes = [1] * r["up"] + [0] * r["down"]
        for j, v in enumerate(votes):
            rows.append({"exposure_id": f"{r['message_id']}-{j}", "message_id": r["message_id"], "user_id": r["tree"],
                         "observed": True, "label": v, "response_text": r["response_text"]})
        if not votes:
            rows.append({"exposure_id": f"{r['message_id']}-none", "message_id": r["message_id"], "user_id": r["tree"],
                         "observed": False, "label": None, "response_text": r["response_text"]})
    exposures = pl.DataFrame(rows).with_columns(pl.col("label").cast(pl.Int8))
    return exposures, pl.DataFrame(replies).drop("response_text")


def oasst(path: Path, seed: int) -> dict:
    exposures, replies = oasst_exposures(path)
    cfg = NoiseConfig(quantile=0.9, min_anchors=100, min_quantile=0.6, bootstrap=200, use_weights=False, seed=seed, n_folds=5)
    result = {"n_replies": replies.height, "n_votes": int(exposures["observed"].sum()),
              "up": int(replies["up"].sum()), "down": int(replies["down"].sum())}
    anchors = {}
    for proxy in ("lightgbm", "logistic"):
        score, info = proxy_scores(exposures, NoiseConfig(proxy=proxy, use_weights=False, seed=seed), weight=np.ones(exposures.height))
        out = anchor_rates(score, exposures["observed"].to_numpy(), exposures["label"].fill_null(0).to_numpy(),
                           np.ones(exposures.height), exposures["user_id"].to_numpy(), quantile=cfg.quantile,
                           min_anchors=cfg.min_anchors, min_quantile=cfg.min_quantile, n_bootstrap=cfg.bootstrap, seed=seed)
        out["proxy"] = info
        anchors[proxy] = out
    result["anchor"] = anchors
    # Ranks as the independent signal: within ranked sibling sets of >= 2, the best-ranked reply as
    # "r* = 1" and the worst-ranked as "r* = 0"; the emoji votes on them are then an audit.
    ranked = replies.filter(pl.col("rank").is_not_null() & (pl.col("n_siblings") >= 2))
    worst = ranked.group_by("tree", "n_siblings").agg(pl.col("rank").max().alias("worst"))
    ranked = ranked.join(worst, on=["tree", "n_siblings"]).with_columns(
        best=pl.col("rank") == 0, worst_flag=(pl.col("rank") == pl.col("worst")) & (pl.col("rank") > 0)
    )
    best, last = ranked.filter(pl.col("best")), ranked.filter(pl.col("worst_flag"))
    true = np.r_[np.ones(int(best["up"].sum() + best["down"].sum())), np.zeros(int(last["up"].sum() + last["down"].sum()))]
    seen = np.r_[np.ones(int(best["up"].sum())), np.zeros(int(best["down"].sum())), np.ones(int(last["up"].sum())), np.zeros(int(last["down"].sum()))]
    result["rank_audit"] = audit_rates(true, seen, interval="clopper-pearson")
    result["rank_audit"].update(n_best_votes=int(true.sum()), n_worst_votes=int((1 - true).sum()))
    by_rank = (
        ranked.group_by("rank").agg(pl.len().alias("replies"), pl.col("up").sum(), pl.col("down").sum())
        .with_columns(up_share=pl.col("up") / (pl.col("up") + pl.col("down"))).sort("rank")
    )
    result["up_share_by_rank"] = by_rank.to_dicts()
    # Do the anchor sets agree with the ranks? Mean sibling rank position (0 = best, 1 = worst) of
    # the replies in each anchor set (replies with a rank among >= 2 siblings).
    return result


# ------------------------------------------------------------------------------------ report


def _fmt_ci(ci: list[float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def markdown(results: dict) -> str:
    lines = ["### Paper scenarios and rates grid (anchor method, true propensities)", "",
             "| config rho01/rho10 | seed | true rho01 | rho01_hat [95% CI] | true rho10 | rho10_hat [95% CI] | err01 | err10 | n_anchor top/bottom | quantile top/bottom | purity top / P(y=1) bottom | impurity bias 01/10 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["scenarios"]:
        lines.append(
            f"| {r['rho01_config']}/{r['rho10_config']} | {r['seed']} | {r['true_rho01']:.3f} | {r['rho01']:.3f} {_fmt_ci(r['rho01_ci'])} | "
            f"{r['true_rho10']:.3f} | {r['rho10']:.3f} {_fmt_ci(r['rho10_ci'])} | {r['err01']:+.3f} | {r['err10']:+.3f} | "
            f"{r['n_anchor']['top']}/{r['n_anchor']['bottom']} | {r['quantile_by_side']['top']:.3f}/{r['quantile_by_side']['bottom']:.3f} | "
            f"{r['purity_top']:.3f} / {r['p_true1_bottom']:.3f} | {r['impurity_bias01']:+.3f}/{r['impurity_bias10']:+.3f} |"
        )
    errs = [abs(r[k]) for r in results["scenarios"] for k in ("err01", "err10")]
    cover = [r[k] for r in results["scenarios"] for k in ("covered01", "covered10")]
    lines += ["", f"max |error| {max(errs):.3f}, mean |error| {np.mean(errs):.3f}; bootstrap 95% intervals cover the truth in "
                  f"{sum(cover)}/{len(cover)} cases.", ""]
    lines += ["### How the estimate moves with the quantile (same proxy scores, no widening)", "",
              "| quantile | n_anchor top/bottom | purity top / P(y=1) bottom | rho01_hat | err01 | rho10_hat | err10 | proxy's own score: rho01 / rho10 (winner's curse) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, sweep in results["quantile_sweep"].items():
        lines.append(f"| **{key}** | | | | | | | |")
        for r in sweep:
            lines.append(
                f"| {r['quantile_fixed']} | {r['n_anchor']['top']}/{r['n_anchor']['bottom']} | {r['purity_top']:.3f} / {r['p_true1_bottom']:.3f} | "
                f"{r['rho01']:.3f} | {r['err01']:+.3f} | {r['rho10']:.3f} | {r['err10']:+.3f} | {r['model_score_rho01']:.3f} / {r['model_score_rho10']:.3f} |"
            )
    lines += ["", "Richardson extrapolation 2 rho(q) - rho(2q - 1) (a candidate impurity correction):", ""]
    for key, rich in results["richardson"].items():
        if rich:
            lines.append(f"- {key}, q = {rich['quantile']}: rho01 {rich['rho01']:.3f} (err {rich['err01']:+.3f}), rho10 {rich['rho10']:.3f} (err {rich['err10']:+.3f})")
    lines += ["", "### Audit intervals: coverage of the configured rate over random audits", "",
              "| rho01/rho10 | audit size | interval | draws | coverage rho01 | coverage rho10 | mean width |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["audit_coverage"]:
        lines.append(f"| {r['rho01']}/{r['rho10']} | {r['audit_size']} | {r['interval']} | {r['draws']} | {r['coverage01']:.3f} | {r['coverage10']:.3f} | {r['mean_width']:.3f} |")
    if results.get("proxy_study"):
        lines += ["", "### Proxy model", "", "| proxy | n | rho01_hat (err) | rho10_hat (err) | purity top / P(y=1) bottom | AUC (observed labels) | seconds |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in results["proxy_study"]:
            lines.append(f"| {r['proxy_model']} | {r['n_exposures']} | {r['rho01']:.3f} ({r['err01']:+.3f}) | {r['rho10']:.3f} ({r['err10']:+.3f}) | "
                         f"{r['purity_top']:.3f} / {r['p_true1_bottom']:.3f} | {r['proxy']['auc_observed']:.3f} | {r['seconds']:.1f} |")
    o = results.get("oasst")
    if o:
        lines += ["", "### OASST (real emoji votes, no propensities: --no-weights)", "",
                  f"{o['n_replies']} assistant replies, {o['n_votes']} votes (+1: {o['up']}, -1: {o['down']}).", "",
                  "| signal | rho01 [95% CI] | rho10 [95% CI] | n top/bottom | notes |", "| --- | --- | --- | --- | --- |"]
        for proxy, a in o["anchor"].items():
            lines.append(f"| anchor, {proxy} proxy | {a['rho01']:.3f} {_fmt_ci(a['rho01_ci'])} | {a['rho10']:.3f} {_fmt_ci(a['rho10_ci'])} | "
                         f"{a['n_anchor']['top']}/{a['n_anchor']['bottom']} | quantile {a['quantile_by_side']['top']:.3f}/{a['quantile_by_side']['bottom']:.3f}, held-out AUC {a['proxy']['auc_observed']:.3f} |")
        ra = o["rank_audit"]
        lines.append(f"| ranks as gold (best vs worst sibling) | {ra['rho01']:.3f} {_fmt_ci(ra['rho01_ci'])} | {ra['rho10']:.3f} {_fmt_ci(ra['rho10_ci'])} | "
                     f"{ra['n_best_votes']}/{ra['n_worst_votes']} votes | Clopper-Pearson |")
        lines += ["", "Share of +1 among votes by sibling rank: " + ", ".join(
            f"rank {r['rank']}: {r['up_share']:.2f} ({r['up'] + r['down']} votes)" for r in o["up_share_by_rank"] if (r["up"] + r["down"]) >= 10)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20k exposures, fewer seeds (about a minute)")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("propensity").setLevel(logging.ERROR)  # widening warnings are in the table
    t0 = time.time()
    n = 20_000 if args.quick else 100_000
    cfg = NoiseConfig(bootstrap=200, seed=0)
    paper = [(0.2, 0.1), (0.1, 0.2)]
    grid = [(0.01, 0.01), (0.05, 0.05), (0.3, 0.05), (0.05, 0.3), (0.3, 0.3)]
    rows, kept = scenarios(n, [0] if args.quick else [0, 1], paper, cfg)
    grid_rows, _ = scenarios(n, [0], grid if not args.quick else grid[:2], cfg)
    results: dict = {"n_exposures": n, "config": {"quantile": cfg.quantile, "min_anchors": cfg.min_anchors, "bootstrap": cfg.bootstrap},
                     "scenarios": rows + grid_rows}
    quantiles = [0.995, 0.99, 0.98, 0.97, 0.95, 0.94, 0.9, 0.85, 0.8]
    results["quantile_sweep"] = {f"{a}/{b}": quantile_sweep(frame, score, quantiles, cfg) for (a, b), (frame, score) in kept.items()}
    results["richardson"] = {k: richardson(v, 0.97) for k, v in results["quantile_sweep"].items()}
    results["audit_coverage"] = audit_coverage(paper + [(0.3, 0.05)], [100, 300, 1000], n, list(range(100, 102 if args.quick else 105)))
    results["proxy_study"] = proxy_study(20_000, 3, cfg)
    try:
        results["oasst"] = oasst(find_shared_data() / "oasst" / "en_100_tree.jsonl", seed=0)
    except Exception as exc:  # the real-data check is optional when the shared folder is absent
        log.warning("OASST check skipped: %s", exc)
    results["seconds"] = time.time() - t0

    def clean(value):
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, (np.floating, np.integer, np.bool_)):
            return value.item()
        return value

    args.out.write_text(json.dumps(clean(results), indent=1), encoding="utf-8")
    print(markdown(results))
    print(f"\n(total {results['seconds']:.0f}s; results in {args.out})")


if __name__ == "__main__":
    main()
