"""Render the audit report (``propensity.audit.report``) as one self-contained HTML page.

Plots are matplotlib PNGs embedded as base64 data URIs, CSS is inline, and there is no script and
no external reference, so the file opens offline and can be mailed or attached to a CI run.
Figures use the object-oriented ``matplotlib.figure.Figure`` API (no pyplot global state).
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

BLUE, ORANGE, GREY, RED, GREEN = "#0072B2", "#E69F00", "#8c8c8c", "#c0392b", "#1e8449"
SEGMENT_TITLES = {
    "model_id": "Model",
    "platform": "Platform",
    "locale": "Locale",
    "position": "Position in the answer list",
    "response_length": "Response length",
    "impression_hour": "Hour of day (UTC)",
}
MAX_LOVE_FEATURES = 40
# Which headline card a guardrail colours red when breached.
CARD_OF_GUARDRAIL = {
    "ess_fraction": "ess",
    "max_weight": "max_weight",
    "clipped_share": "clipped_share",
    "calibration_ece": "ece",
    "balance_smd": "smd",
}

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f5f6f8;color:#1d2327;}
main{max-width:1120px;margin:0 auto;padding:24px 28px 60px;background:#fff;}
h1{font-size:26px;margin:0 0 4px;} h2{font-size:20px;margin:36px 0 8px;border-bottom:2px solid #e3e6ea;padding-bottom:4px;}
.meta{color:#5f6b76;font-size:13px;margin-bottom:18px;word-break:break-all;}
.verdict{border-radius:6px;padding:14px 18px;margin:12px 0 18px;font-size:15px;}
.verdict.fail{background:#fdecea;border:2px solid #c0392b;color:#7b1d14;}
.verdict.pass{background:#e9f7ef;border:2px solid #1e8449;color:#145a32;}
.verdict strong{font-size:18px;display:block;margin-bottom:6px;}
.verdict ul{margin:6px 0 0 18px;padding:0;} .verdict li{margin:3px 0;} .verdict li.skipped{color:#6b6b6b;}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:10px;}
.card{border:1px solid #dfe3e8;border-radius:6px;padding:10px 12px;background:#fbfcfd;}
.card .label{font-size:12px;color:#5f6b76;text-transform:uppercase;letter-spacing:.03em;}
.card .value{font-size:22px;font-weight:600;margin-top:2px;}
.card .sub{font-size:12px;color:#5f6b76;margin-top:2px;}
.card.bad{border:2px solid #c0392b;background:#fdecea;} .card.bad .value{color:#c0392b;}
figure{margin:10px 0 4px;} figure img{max-width:100%;height:auto;border:1px solid #eceff2;}
figcaption{font-size:13px;color:#4a545e;margin-top:4px;}
table{border-collapse:collapse;font-size:13px;margin:8px 0;}
th,td{border-bottom:1px solid #e3e6ea;padding:4px 10px;text-align:right;} th{background:#f0f2f5;}
td:first-child,th:first-child{text-align:left;}
tr.breach td{color:#c0392b;font-weight:600;} tr.skipped td{color:#8c8c8c;}
details{margin:6px 0;} summary{cursor:pointer;color:#0b5cad;font-size:13px;}
.note{font-size:13px;color:#4a545e;}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:16px;align-items:start;}
"""


# --------------------------------------------------------------------------- formatting


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _ci(ci: list[float | None] | None, fmt: str = ".3f") -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f"[{format(ci[0], fmt)}, {format(ci[1], fmt)}]"


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float, height: float, *, left: float = 0.75, right: float = 0.2, top: float = 0.45, bottom: float = 0.65) -> Figure:
    """A one-axes figure with fixed margins in inches. Fixed margins rather than constrained layout:
    measuring every label for the layout doubles the drawing time, the costliest part of the audit."""
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height)
    return fig


def _label_margin(labels: list[str], fontsize: float) -> float:
    """Left margin (inches) that fits the longest y tick label at ``fontsize`` points."""
    return 0.35 + 0.52 * fontsize / 72 * max((len(label) for label in labels), default=4)


def _figure_html(fig: Figure, alt: str, caption: str) -> str:
    return f'<figure><img src="{_png(fig)}" alt="{html.escape(alt)}"><figcaption>{caption}</figcaption></figure>'


def _table(headers: list[str], rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# --------------------------------------------------------------------------- figures


def _fig_segments(segments: dict[str, list[dict[str, Any]]], key: str, overall: float | None) -> Figure:
    """Bar per segment level: feedback rate (or up-vote share) with 95% Wilson intervals."""
    # Fixed margins instead of constrained layout: this 6-panel figure is the slowest to lay out.
    fig = Figure(figsize=(12, 7.6))
    fig.subplots_adjust(left=0.06, right=0.99, top=0.9, bottom=0.17, hspace=0.62, wspace=0.24)
    axes = fig.subplots(2, 3).ravel()
    columns = [c for c in SEGMENT_TITLES if c in segments]
    for ax, column in zip(axes, columns):
        rows = segments[column]
        x = np.arange(len(rows))
        values = np.array([np.nan if r.get(key) is None else 100 * r[key] for r in rows], dtype=float)
        ci = np.array([[np.nan, np.nan] if not r.get(f"{key}_ci") or r[f"{key}_ci"][0] is None else r[f"{key}_ci"] for r in rows], dtype=float) * 100
        err = np.vstack([np.clip(values - ci[:, 0], 0, None), np.clip(ci[:, 1] - values, 0, None)])
        ax.bar(x, values, color=BLUE if key == "rate" else ORANGE, alpha=0.85, yerr=np.nan_to_num(err), capsize=2,
               error_kw={"elinewidth": 0.8, "ecolor": "#333"}, label="observed (95% CI)")
        if key == "rate":
            ax.plot(x, [100 * r["mean_propensity"] for r in rows], "D", color="black", markersize=4, label="mean predicted propensity")
        if overall is not None:
            ax.axhline(100 * overall, color=GREY, linestyle="--", linewidth=1, label="overall")
        labels = [str(r["level"]) for r in rows]
        ax.set_xticks(x)
        many = len(labels) > 8
        ax.set_xticklabels(labels, rotation=90 if many else (30 if max(map(len, labels), default=0) > 6 else 0),
                           ha="center" if many else "right" if max(map(len, labels), default=0) > 6 else "center",
                           fontsize=7 if many else 9)
        ax.set_title(SEGMENT_TITLES[column], fontsize=11)
        ax.set_ylabel("feedback rate (%)" if key == "rate" else "up-votes among votes (%)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(columns):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle("Feedback rate by segment" if key == "rate" else "Vote balance by segment", fontsize=14, fontweight="bold")
    return fig


def _fig_propensity(hist: dict[str, Any], floor: float | None) -> Figure:
    edges = np.asarray(hist["edges"])
    widths = np.diff(edges)
    fig = _figure(6.4, 4.2)
    ax = fig.subplots()
    for name, color in (("unobserved", ORANGE), ("observed", BLUE)):
        counts = np.asarray(hist[name], dtype=float)
        density = counts / max(counts.sum(), 1) / widths
        ax.stairs(density, edges, fill=True, alpha=0.35, color=color)
        ax.stairs(density, edges, color=color, linewidth=1.5, label=f"{name} (n = {int(counts.sum()):,})")
    if floor:
        ax.axvline(floor, color=RED, linestyle=":", linewidth=1.2, label=f"clipping floor {floor:g}")
    ax.set_xlabel("propensity p = P(feedback | exposure)")
    ax.set_ylabel("density (1 / unit of p)")
    ax.set_title("Propensities of observed vs unobserved exposures", fontsize=12)
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def _fig_reliability(reliability: dict[str, Any]) -> Figure:
    bins = reliability["bins"]
    pred = np.array([b["mean_propensity"] for b in bins])
    rate = np.array([b["observed_rate"] for b in bins])
    lo = np.array([b["ci_lo"] for b in bins])
    hi = np.array([b["ci_hi"] for b in bins])
    top = float(max(pred.max(), hi.max(), 0.05)) * 1.08
    fig = _figure(5.2, 4.6)
    ax = fig.subplots()
    ax.plot([0, top], [0, top], "--", color=GREY, linewidth=1, label="perfect calibration")
    ax.errorbar(pred, rate, yerr=[np.clip(rate - lo, 0, None), np.clip(hi - rate, 0, None)], fmt="o-", color=BLUE,
                capsize=3, label="observed rate per bin (95% CI)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("mean predicted propensity in bin")
    ax.set_ylabel("observed feedback rate in bin")
    ax.set_title(f"Reliability diagram (ECE = {reliability['ece']:.3f})", fontsize=12)
    ax.legend(fontsize=9, loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def _fig_weights(weights: dict[str, Any], max_weight: float) -> Figure:
    edges = np.asarray(weights["histogram"]["edges"])
    counts = np.asarray(weights["histogram"]["counts"], dtype=float)
    fig = _figure(6.4, 4.2, top=0.7)
    ax = fig.subplots()
    ax.stairs(counts, edges, fill=True, color=BLUE, alpha=0.6)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axvline(weights["max"], color="black", linewidth=1.2, linestyle=":", label=f"largest weight {weights['max']:.1f}")
    if max_weight <= edges[-1] * 3:
        ax.axvline(max_weight, color=RED, linestyle="--", linewidth=1.2, label=f"guardrail max_weight {max_weight:g}")
    else:
        ax.plot([], [], color=RED, linestyle="--", label=f"guardrail max_weight {max_weight:g} (off scale)")
    ax.set_xlim(edges[0] / 1.1, max(edges[-1], max_weight if max_weight <= edges[-1] * 3 else 0) * 1.15)
    ax.set_xlabel(f"weight {weights['formula']} (log scale)")
    ax.set_ylabel("observed rows")
    ess_line = f"ESS = {weights['ess']:,.0f} = {weights['ess_over_n']:.0%} of {weights['n_observed']:,} observed"
    clipped = "" if weights.get("clipped_share") is None else f"; clipped {weights['clipped_share']:.2%}"
    ax.set_title(f"Weight distribution\n{ess_line}{clipped}", fontsize=11)
    ax.legend(fontsize=9, loc="best")
    ax.grid(alpha=0.3)
    return fig


def _fig_love(balance: list[dict[str, Any]], threshold: float) -> Figure:
    # The MAX_LOVE_FEATURES worst features (by |SMD| before or after); the table lists them all.
    rows = sorted(balance, key=lambda b: max(abs(b["before"]), abs(b["after"])))[-MAX_LOVE_FEATURES:]
    rows = sorted(rows, key=lambda b: abs(b["before"]))
    y = np.arange(len(rows))
    fig = _figure(7.5, 0.26 * len(rows) + 1.6, left=_label_margin([b["feature"] for b in rows], 8))
    ax = fig.subplots()
    ax.scatter([abs(b["before"]) for b in rows], y, facecolors="none", edgecolors=GREY, s=36, label="before weighting")
    ax.scatter([abs(b["after"]) for b in rows], y, color=BLUE, s=30, label="after weighting by 1/p")
    for yi, b in zip(y, rows):
        ax.plot([abs(b["before"]), abs(b["after"])], [yi, yi], color="#c8ccd1", linewidth=0.8, zorder=0)
    ax.axvline(threshold, color=RED, linestyle="--", linewidth=1.2, label=f"guardrail {threshold:g}")
    ax.set_yticks(y)
    ax.set_yticklabels([b["feature"] for b in rows], fontsize=8)
    ax.set_xlabel("|standardized mean difference|, observed rows vs all exposures (SD units)")
    ax.set_title("Covariate balance (love plot)", fontsize=12)
    ax.legend(fontsize=9, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _anchors(value: Any) -> str:
    """Anchor / audit counts as text: ``{"top": 300, "bottom": 281}`` -> ``top 300, bottom 281``."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in value.items())
    return "" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def _noise_rows(noise: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten channel estimates and their segments into labelled rows."""
    rows = []
    for estimate in noise:
        rows.append({"label": f"{estimate['channel']} (all)", **estimate})
        for seg in estimate.get("segments") or []:
            if not isinstance(seg, dict) or "rho01" not in seg:
                continue
            if not isinstance(seg.get("rho01"), (int, float)) or not isinstance(seg.get("rho10"), (int, float)):
                continue  # a segment the estimator could not identify (its error is in the warnings)
            name = f"{seg['segment_by']}={seg.get('segment')}" if seg.get("segment_by") else str(seg.get("segment", "segment"))
            rows.append({"label": f"{estimate['channel']}: {name}", **seg})
    return rows


def _fig_noise(rows: list[dict[str, Any]]) -> Figure:
    fig = _figure(7.5, 0.55 * len(rows) + 2.2, left=_label_margin([r["label"] for r in rows], 9), bottom=1.05)
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    for offset, key, color in ((0.12, "rho01", BLUE), (-0.12, "rho10", ORANGE)):
        values = np.array([r[key] for r in rows], dtype=float)
        ci = [r.get(f"{key}_ci") or [None, None] for r in rows]
        lo = np.array([v if c[0] is None else c[0] for v, c in zip(values, ci)], dtype=float)
        hi = np.array([v if c[1] is None else c[1] for v, c in zip(values, ci)], dtype=float)
        name = "rho01 = P(r=0 | r*=1)" if key == "rho01" else "rho10 = P(r=1 | r*=0)"
        ax.errorbar(values, y + offset, xerr=[values - lo, hi - values], fmt="o", color=color, capsize=3, label=f"{name} (95% CI)")
    ax.set_yticks(y)
    ax.set_yticklabels([r["label"] for r in rows], fontsize=9)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlim(left=0)
    ax.set_xlabel("flip rate (probability)")
    ax.set_title("Label-noise rates per channel and segment", fontsize=12)
    # Below the axes: inside, it would hide the intervals of the bottom row.
    axes_height = 0.55 * len(rows) + 2.2 - 0.45 - 1.05  # inches, from _figure's margins above
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.55 / axes_height), ncol=2, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return fig


def _fig_estimates(estimates: dict[str, Any]) -> Figure:
    names = [("naive", "naive (mean of observed labels)"), ("ips", "IPS"), ("snips", "SNIPS (self-normalised)")]
    fig = _figure(7.2, 3.0, left=_label_margin([label for _, label in names], 9))
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]
    for yi, (key, _) in zip(y, names):
        est = estimates[key]
        lo, hi = est["ci"]
        lo = est["estimate"] if lo is None else lo
        hi = est["estimate"] if hi is None else hi
        ax.errorbar([est["estimate"]], [yi], xerr=[[est["estimate"] - lo], [hi - est["estimate"]]], fmt="o", color=BLUE, capsize=4)
    slice_ = estimates.get("randomized_slice")
    if slice_:
        ax.axvspan(slice_["ci"][0], slice_["ci"][1], color=GREEN, alpha=0.15)
        ax.axvline(slice_["estimate"], color=GREEN, linewidth=1.5, label=f"randomized slice {slice_['estimate']:.3f} (n = {slice_['n']:,}, 95% CI shaded)")
        ax.legend(fontsize=9, loc="lower right")
    ax.set_yticks(y)
    ax.set_yticklabels([label for _, label in names], fontsize=9)
    ax.set_xlabel("estimated mean label (share of up-votes among all exposures)")
    ax.set_title("Mean-label estimates, 95% intervals", fontsize=12)
    ax.grid(axis="x", alpha=0.3)
    return fig


def _fig_slice_comparison(comparison: dict[str, Any]) -> Figure:
    """Naive and SNIPS mean label under each propensity kind, against the randomized slice (issue 11)."""
    kinds = comparison["kinds"]
    rows = [("naive (mean of organic votes)", next(iter(kinds.values()))["naive"], GREY)]
    names = {"context": "SNIPS, context p(x)", "label-aware": "SNIPS, label-aware p(x, r)"}
    rows += [(names[k], kinds[k]["snips"], BLUE if k == "context" else ORANGE) for k in ("context", "label-aware") if k in kinds]
    fig = _figure(7.6, 0.7 * len(rows) + 1.9, left=_label_margin([r[0] for r in rows], 9), top=0.7)
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    for yi, (_, est, color) in zip(y, rows):
        lo, hi = (est["ci"] if est.get("ci") and None not in est["ci"] else [est["estimate"], est["estimate"]])
        ax.errorbar([est["estimate"]], [yi], xerr=[[est["estimate"] - lo], [hi - est["estimate"]]], fmt="o", color=color, capsize=4)
    slice_ = comparison.get("randomized_slice")
    if slice_:
        ax.axvspan(slice_["ci"][0], slice_["ci"][1], color=GREEN, alpha=0.15)
        ax.axvline(slice_["estimate"], color=GREEN, linewidth=1.5, label=f"randomized slice {slice_['estimate']:.3f} (n = {slice_['n']:,}, 95% CI shaded)")
        ax.legend(fontsize=9, loc="best")
    ax.set_yticks(y)
    ax.set_yticklabels([r[0] for r in rows], fontsize=9)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("estimated mean label (share of up-votes among all exposures)")
    ax.set_title("Mean label: context vs label-aware weights\nagainst the randomized slice (95% intervals)", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    return fig


def _slice_section(comparison: dict[str, Any]) -> str:
    """The issue-11 section: both propensity kinds side by side, the label factors, the slice's noise audit."""
    esc = html.escape
    parts = ["<h2>Randomized slice: context vs label-aware propensities</h2>"]
    parts.append(_figure_html(
        _fig_slice_comparison(comparison), "context vs label-aware estimates",
        "Mean label of the organic exposures estimated with weights 1/p(x) (context) and 1/p(x, r) (label-aware), against the "
        "randomized slice, where feedback was solicited at random. A context-only estimate far from the slice means people react "
        "because of how they felt about the answer: selection on the label, which only the label-aware propensities correct."))
    headers = ["propensities", "IPS", "SNIPS", "95% CI", "interval", "error vs slice", "z", "ESS / n", "max weight", "clipped share"]
    rows, classes = [], []
    for kind, entry in comparison["kinds"].items():
        rows.append([
            esc(kind) + (" (audited)" if kind == comparison.get("audited") else ""), _num(entry["ips"]["estimate"]),
            _num(entry["snips"]["estimate"]), _ci(entry["snips"]["ci"]), esc(entry.get("snips_interval", "")),
            _num(entry.get("error_vs_slice"), "+.3f"), _num(entry.get("z_vs_slice"), "+.1f"), _pct(entry["ess_over_n"], 0),
            _num(entry["max_weight"], ".1f"), _pct(entry.get("clipped_share")),
        ])
        classes.append("")
    parts.append(_table(headers, rows, classes))
    factors = comparison.get("label_factors")
    if factors:
        frows = [[esc(str(f["stratum"])), f"{f['n_slice']:,}", _num(f["slice_up_share"]), _num(f["relative_propensity_up_vs_down"], ".2f"),
                  _ci(f["ci"], ".2f")] for f in factors]
        parts.append('<p class="note">Label factor: how much more often an up-vote is given than a down-vote in the same context, '
                     "P(o=1 | x, r=1) / P(o=1 | x, r=0), identified by the slice.</p>")
        parts.append(_table(["stratum", "slice rows", "slice up-share", "relative propensity up / down", "95% CI"], frows))
    fit = comparison.get("label_aware_fit")
    if fit:
        noise = fit.get("noise_from_slice")
        if noise and noise.get("rho01") is not None:
            parts.append(f'<p class="note">Flip rates from the slice\'s gold labels against the users\' votes ({noise["n"]:,} exposures): '
                         f"rho01 = {_num(noise['rho01'])} {_ci(noise.get('rho01_ci'))}, rho10 = {_num(noise['rho10'])} {_ci(noise.get('rho10_ci'))}.</p>")
        if fit.get("assumptions"):
            parts.append("<details><summary>Label-aware estimator and its assumptions</summary><p class=\"note\">" + esc(str(fit.get("estimator")))
                         + "</p><ul>" + "".join(f"<li>{esc(a)}</li>" for a in fit["assumptions"]) + "</ul></details>")
        if fit.get("warnings"):
            parts.append('<p class="note">Label-aware fit warnings: ' + "; ".join(esc(str(w)) for w in fit["warnings"]) + "</p>")
    elif "label-aware" not in comparison["kinds"]:
        parts.append('<p class="note">No label-aware propensities yet: <code>causalrm propensity fit-label-aware WH</code> estimates '
                     "P(o=1 | x, r) from this slice.</p>")
    return "".join(parts)


# --------------------------------------------------------------------------- page


def _verdict_html(report: dict[str, Any]) -> str:
    guardrails = report["guardrails"]
    breaches = [g for g in guardrails if g["status"] == "breach"]
    skipped = [g for g in guardrails if g["status"] == "skipped"]
    passed = [g for g in guardrails if g["status"] == "pass"]
    skipped_html = "".join(f'<li class="skipped">skipped: {html.escape(g["message"])}</li>' for g in skipped)
    if breaches:
        items = "".join(f"<li>{html.escape(g['message'])}</li>" for g in breaches)
        return (f'<div class="verdict fail" id="verdict" data-verdict="FAIL"><strong>Guardrails: FAIL, {len(breaches)} breach'
                f'{"es" if len(breaches) != 1 else ""}</strong>Do not hand this dataset to a trainer before fixing:'
                f"<ul>{items}{skipped_html}</ul></div>")
    return (f'<div class="verdict pass" id="verdict" data-verdict="PASS"><strong>Guardrails: PASS, all {len(passed)} checks within '
            f"thresholds</strong>{'<ul>' + skipped_html + '</ul>' if skipped else ''}</div>")


def _cards_html(report: dict[str, Any]) -> str:
    h = report["headline"]
    bad = {CARD_OF_GUARDRAIL.get(g["name"]) for g in report["guardrails"] if g["status"] == "breach"}
    if any(g["status"] == "breach" and g["name"].startswith("noise") for g in report["guardrails"]):
        bad.add("noise")
    cards = [
        ("exposures", "Exposures", f"{h['exposures']:,}", f"channel {report['channel']}"),
        ("rate", "Feedback rate", _pct(h["feedback_rate"]), f"{h['observed']:,} observed"),
        ("up", "Up-vote share", _pct(h["up_share"]), "among observed votes"),
        ("ess", "ESS / N", _pct(h["ess_over_n"], 0), f"ESS {h['ess']:,.0f} of {h['observed']:,}"),
        ("max_weight", "Max weight", _num(h["max_weight"], ".1f"), "largest 1/p"),
        ("clipped_share", "Clipped share", _pct(h["clipped_share"]), "observed rows at the floor"),
        ("ece", "Calibration ECE", _num(h["ece"]), "propensity vs observed rate"),
        ("smd", "Max |SMD|", f"{_num(h['max_abs_smd_before'], '.2f')} &rarr; {_num(h['max_abs_smd_after'], '.2f')}",
         f"before &rarr; after weighting ({html.escape(str(h.get('worst_smd_feature') or ''))})"),
        ("noise", "rho01 / rho10", f"{_num(h['rho01'], '.2f')} / {_num(h['rho10'], '.2f')}", "flip rates of the channel"),
    ]
    if h.get("naive") is not None:
        sub = "naive &rarr; SNIPS" + (f"; randomized slice {h['randomized_slice']:.3f}" if h.get("randomized_slice") is not None else "")
        cards.append(("estimates", "Mean label", f"{h['naive']:.3f} &rarr; {h['snips']:.3f}", sub))
    out = []
    for key, label, value, sub in cards:
        cls = "card bad" if key in bad else "card"
        out.append(f'<div class="{cls}" id="card-{key}"><div class="label">{label}</div><div class="value">{value}</div><div class="sub">{sub}</div></div>')
    return '<div class="cards" id="headline">' + "".join(out) + "</div>"


def _guardrail_table(report: dict[str, Any]) -> str:
    rows, classes = [], []
    for g in report["guardrails"]:
        rows.append([html.escape(g["name"]), g["status"].upper(), _num(g["value"]), _num(g["threshold"], "g"), html.escape(g["message"] if g["status"] != "pass" else "")])
        classes.append("breach" if g["status"] == "breach" else "skipped" if g["status"] == "skipped" else "")
    return _table(["guardrail", "status", "value", "threshold", "detail"], rows, classes)


def _segment_tables_html(segments: dict[str, list[dict[str, Any]]]) -> str:
    parts = []
    for column, rows in segments.items():
        with_labels = bool(rows) and "up_share" in rows[0]
        headers = ["level", "exposures", "observed", "feedback rate", "95% CI", "mean propensity"] + (["up-vote share", "95% CI"] if with_labels else [])
        body = []
        for r in rows:
            cells = [html.escape(str(r["level"])), f"{r['n']:,}", f"{r['observed']:,}", _pct(r["rate"]), _ci(r["rate_ci"]), _num(r["mean_propensity"])]
            if with_labels:
                cells += [_pct(r["up_share"]), _ci(r["up_share_ci"])]
            body.append(cells)
        parts.append(f"<details><summary>{html.escape(SEGMENT_TITLES.get(column, column))}: table</summary>{_table(headers, body)}</details>")
    return "".join(parts)


def render_html(report: dict[str, Any]) -> str:
    """The full report page (str) for a report dict from :func:`propensity.audit.report.build_report`."""
    t = report["thresholds"]
    h = report["headline"]
    esc = html.escape
    sections: list[str] = []

    sections.append("<h2>Feedback rate and vote balance by segment</h2>")
    sections.append(_figure_html(
        _fig_segments(report["segments"], "rate", h["feedback_rate"]), "feedback rate by segment",
        "Share of exposures that received feedback, per segment, with 95% Wilson intervals; diamonds are the mean predicted "
        "propensity of the segment (they should sit on the bars if the propensity model captured the segment)."))
    if h.get("up_share") is not None:
        sections.append(_figure_html(
            _fig_segments(report["segments"], "up_share", h["up_share"]), "vote balance by segment",
            "Share of up-votes among the votes of each segment (95% Wilson intervals); the dashed line is the overall share."))
    sections.append(_segment_tables_html(report["segments"]))
    sample_note = '<p class="note">' + esc((report.get("sample") or {}).get("note") or "") + "</p>" if report.get("sample") else ""
    sections.append(sample_note)

    prop = report["propensity"]
    sections.append("<h2>Propensities</h2>")
    sections.append('<div class="grid2">' + _figure_html(
        _fig_propensity(prop["histogram"], prop.get("floor")), "propensity histogram",
        "Distribution of the calibrated propensities by outcome. Little overlap near 0 means some exposure types are almost "
        "never rated: their few ratings get huge weights.") + _figure_html(
        _fig_reliability(report["reliability"]), "reliability diagram",
        f"Mean predicted propensity vs observed feedback rate in {esc(report['reliability']['binning'])}; points on the diagonal "
        "mean calibrated propensities.") + "</div>")
    rel_rows = [[f"{b['lo']:.3f}-{b['hi']:.3f}", f"{b['n']:,}", _num(b["mean_propensity"]), _num(b["observed_rate"]), _ci([b["ci_lo"], b["ci_hi"]])]
                for b in report["reliability"]["bins"]]
    sections.append(f"<details><summary>Reliability table</summary>{_table(['propensity range', 'exposures', 'mean p', 'observed rate', '95% CI'], rel_rows)}</details>")
    if prop.get("fit_metrics"):
        fit_rows = [[esc(k), esc(_num(v, ".4g") if isinstance(v, float) else str(v))] for k, v in prop["fit_metrics"].items()]
        sections.append(f"<details><summary>Propensity fit (metrics.json)</summary>{_table(['metric', 'value'], fit_rows)}</details>")

    w = report["weights"]
    sections.append("<h2>Weights</h2>")
    weight_rows = [
        ["observed rows", f"{w['n_observed']:,}"], ["Kish ESS = (sum w)^2 / sum w^2", f"{w['ess']:,.0f}"],
        ["ESS / observed rows", _pct(w["ess_over_n"])], ["mean weight", _num(w["mean"], ".2f")],
        ["median", _num(w["quantiles"]["0.5"], ".2f")], ["90th percentile", _num(w["quantiles"]["0.9"], ".2f")],
        ["99th percentile", _num(w["quantiles"]["0.99"], ".2f")], ["max", _num(w["max"], ".2f")],
        ["clipping floor", _num(prop.get("floor"), "g")], ["share of observed rows at the floor", _pct(w.get("clipped_share"))],
    ]
    sections.append('<div class="grid2">' + _figure_html(
        _fig_weights(w, t["max_weight"]), "weight distribution",
        f"Weights {esc(w['formula'])} of the observed rows (unobserved rows weigh 0).")
        + "<div>" + _table(["weights", "value"], weight_rows) + "</div></div>")

    if report["balance"]:
        sections.append("<h2>Covariate balance</h2>")
        sections.append(_figure_html(
            _fig_love(report["balance"], t["max_balance_smd"]), "love plot",
            "Standardized mean difference of each feature between the observed rows and all exposures: before (open circles) "
            "and after (filled) weighting by 1/p. Weighting should pull every feature inside the dashed guardrail."))
        smd_rows = [[esc(b["feature"]), f"{b['before']:+.3f}", f"{b['after']:+.3f}"] for b in report["balance"]]
        sections.append(f"<details><summary>SMD table</summary>{_table(['feature', 'SMD before', 'SMD after'], smd_rows)}</details>")
        sections.append(sample_note)
    else:
        sections.append("<h2>Covariate balance</h2>")
        sections.append('<p class="note">No context feature varies across exposures in this warehouse: balance cannot be checked.</p>')

    sections.append("<h2>Label noise</h2>")
    noise_rows = _noise_rows(report["noise"])
    if noise_rows:
        sections.append(_figure_html(
            _fig_noise(noise_rows), "noise rates",
            "Estimated flip rates with their intervals: rho01 = P(r=0 | r*=1) (false negatives), rho10 = P(r=1 | r*=0) (false positives)."))
        table_rows = [[esc(r["label"]), esc(str(r.get("method", ""))), _num(r["rho01"]), _ci(r.get("rho01_ci")), _num(r["rho10"]),
                       _ci(r.get("rho10_ci")), esc(_anchors(r.get("n_anchor", r.get("n_audit"))))] for r in noise_rows]
        sections.append(_table(["channel / segment", "method", "rho01", "95% CI", "rho10", "95% CI", "anchors"], table_rows))
        warnings = [f"{n['channel']}: {w_}" for n in report["noise"] for w_ in (n.get("warnings") or [])]
        if warnings:
            sections.append('<p class="note">Estimator warnings: ' + "; ".join(esc(str(x)) for x in warnings) + "</p>")
    else:
        sections.append('<p class="note">No noise estimate in this warehouse: run <code>causalrm noise estimate</code>.</p>')

    est = report.get("estimates")
    if est:
        sections.append("<h2>Does weighting move the estimate? (naive vs IPS vs SNIPS)</h2>")
        sections.append(_figure_html(
            _fig_estimates(est), "mean label estimates",
            f"Mean label estimated from {esc(est['rows'])}: the naive mean of observed labels, IPS = (1/N) sum o r / p and "
            "SNIPS = sum o r / p / sum o / p. " + (
                "The green band is the mean label of the randomized slice, where feedback was solicited at random: an unbiased "
                "benchmark." if est.get("randomized_slice") else "No randomized slice (column <code>solicited</code>) in this warehouse.")))
        has_slice = bool(est.get("randomized_slice"))
        has_nc = "noise_corrected" in est["naive"]
        headers = ["estimator", "mean label r", "95% CI"] + (["error vs slice"] if has_slice else []) + (
            ["mean r* (noise-corrected)", "95% CI"] if has_nc else [])
        rows = []
        entries = [("naive", "naive"), ("ips", "IPS"), ("snips", "SNIPS")] + ([("randomized_slice", "randomized slice")] if has_slice else [])
        for key, name in entries:
            e = est[key]
            label = f"{name} (n = {e['n']:,})" if key == "randomized_slice" else name
            row = [label, _num(e["estimate"]), _ci(e["ci"])]
            if has_slice:
                row.append(_num(e.get("error_vs_slice"), "+.3f") if key != "randomized_slice" else "")
            if has_nc:
                row += [_num(e.get("noise_corrected")), _ci(e.get("noise_corrected_ci"))]
            rows.append(row)
        sections.append(_table(headers, rows))

    if report.get("slice_comparison"):
        sections.append(_slice_section(report["slice_comparison"]))

    sections.append("<h2>Guardrails</h2>")
    sections.append(_guardrail_table(report))
    sections.append('<p class="note">Thresholds: ' + ", ".join(f"{esc(k)} = {v:g}" for k, v in t.items())
                    + ". Override them with <code>causalrm audit --thresholds FILE.toml</code>.</p>")

    title = f"Selection-bias audit: {report['channel']} channel"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{CSS}</style></head><body><main>"
        f"<h1>{esc(title)}</h1><div class=\"meta\">warehouse {esc(report['warehouse'])} &middot; generated {esc(report['generated_at'])}"
        " &middot; causalrm audit</div>"
        + _verdict_html(report) + _cards_html(report) + "".join(sections) + "</main></body></html>\n"
    )
