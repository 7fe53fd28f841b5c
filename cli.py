"""`causalrm` command line: thin wrappers that build a config, call the library, and turn the
package's base exception into one red line and exit code 1.

Each command section is owned by one area (marked below); keep sections self-contained.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from schemas.errors import CausalRMError

app = typer.Typer(help="Observational reward modeling from user feedback logs (CausalRM).", no_args_is_help=True, add_completion=False)
propensity_app = typer.Typer(help="Estimate feedback propensities P(feedback | exposure).", no_args_is_help=True)
noise_app = typer.Typer(help="Estimate label flip rates rho01 / rho10.", no_args_is_help=True)
weights_app = typer.Typer(help="Export weighted datasets for trainers.", no_args_is_help=True)
app.add_typer(propensity_app, name="propensity")
app.add_typer(noise_app, name="noise")
app.add_typer(weights_app, name="weights")

err = Console(stderr=True)
out = Console()


def _fail(exc: CausalRMError) -> None:
    err.print(f"[bold red]error:[/] {exc.one_line()}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


# ---------------------------------------------------------------- simulate (foundation)
@app.command()
def simulate(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write events/, truth.parquet and simulation.json into.")],
    n_exposures: Annotated[int, typer.Option(help="Number of exposures (responses shown).")] = 20_000,
    alpha: Annotated[float, typer.Option(help="Selection strength: propensity proportional to alpha^(max r* - r*).")] = 0.5,
    obs_rate: Annotated[float, typer.Option(help="Mean explicit-feedback rate.")] = 0.2,
    rho01: Annotated[float, typer.Option(help="P(r=0 | r*=1), false-negative flip rate.")] = 0.2,
    rho10: Annotated[float, typer.Option(help="P(r=1 | r*=0), false-positive flip rate.")] = 0.1,
    texts: Annotated[str, typer.Option(help="Text source: synthetic, hh_rlhf, oasst or finegrained.")] = "synthetic",
    messiness: Annotated[float, typer.Option(help="0..1: duplicates, toggles, late, orphan and malformed rows.")] = 0.0,
    randomized_slice: Annotated[float, typer.Option(help="Fraction of exposures where feedback is solicited at random.")] = 0.0,
    label_effect: Annotated[float, typer.Option(help="MNAR selection: users who like an answer react this many times as often (1 = off).")] = 1.0,
    fmt: Annotated[str, typer.Option("--format", help="parquet or jsonl.")] = "parquet",
    seed: Annotated[int, typer.Option(help="Random seed (output is deterministic for a seed).")] = 0,
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder with the shared datasets (default: ../shared/data).")] = None,
) -> None:
    """Simulate production feedback logs with known truth (the CausalRM paper's protocol)."""
    from feedback_etl.simulator import SimulationConfig, simulate as run_simulation

    try:
        cfg = SimulationConfig(
            out=str(out_dir), n_exposures=n_exposures, alpha=alpha, obs_rate=obs_rate, rho01=rho01, rho10=rho10,
            texts=texts, messiness=messiness, randomized_slice=randomized_slice, label_effect=label_effect, format=fmt, seed=seed,
            data_dir=str(data_dir) if data_dir else None,
        )
        summary = run_simulation(cfg, progress=sys.stderr.isatty())
    except CausalRMError as exc:
        _fail(exc)
    real = summary["realised"]
    out.print(
        f"wrote {summary['counts']['rows_written']:,} events for {n_exposures:,} exposures to {out_dir}/events "
        f"(obs rate {real['obs_rate']:.3f}, rho01 {real['rho01']:.3f}, rho10 {real['rho10']:.3f}); truth: {out_dir}/truth.parquet",
        soft_wrap=True,
    )


# ---------------------------------------------------------------- ingest (ETL)

# ---------------------------------------------------------------- embed (trainer)

# ---------------------------------------------------------------- propensity fit (propensity)

# ---------------------------------------------------------------- noise estimate (noise)

# ---------------------------------------------------------------- weights export, audit (handoff)
@weights_app.command("export")
def weights_export(
    warehouse: Annotated[Path, typer.Argument(help="Warehouse folder (feedback, propensity scores, noise estimate).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Dataset folder to write (data, manifest.json, pairs); an earlier export there is replaced.")],
    scheme: Annotated[str, typer.Option(help="Weights of observed rows: ips (1/p), snips (1/p normalised per split) or clipped-ips (1/max(p, clip)).")] = "ips",
    clip: Annotated[Optional[float], typer.Option(help="Propensity floor for --scheme clipped-ips (default 0.05).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="parquet or jsonl.")] = "parquet",
    pairs: Annotated[bool, typer.Option("--pairs", help="Also write Bradley-Terry pairs (pairs.parquet) with pair weights and flip probabilities.")] = False,
    channel: Annotated[str, typer.Option(help="Feedback channel: vote, copy, regenerate or share.")] = "vote",
    no_noise: Annotated[bool, typer.Option("--no-noise", help="Export with rho01 = rho10 = 0 when no noise estimate exists (recorded in the manifest).")] = False,
    max_pairs_per_prompt: Annotated[int, typer.Option(help="Cap on pairs per prompt and split (larger prompts are subsampled, weights rescaled).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the pair subsampling.")] = 0,
) -> None:
    """Write the weighted dataset a reward-model trainer reads (one row per exposure, weight 0 when unobserved)."""
    from propensity.export import ExportConfig, export_weighted_dataset

    try:
        cfg = ExportConfig(
            warehouse=str(warehouse), out=str(out_dir), channel=channel, scheme=scheme, clip=clip, format=fmt, pairs=pairs,
            max_pairs_per_prompt=max_pairs_per_prompt, no_noise=no_noise, seed=seed,
        )
        manifest = export_weighted_dataset(cfg)
    except CausalRMError as exc:
        _fail(exc)
    w, rows = manifest["weights"], manifest["rows"]
    out.print(
        f"wrote {rows['total']:,} rows ({rows['observed']:,} observed) to {out_dir}/{manifest['files']['data']}: scheme {scheme}, "
        f"ESS {w['ess']:,.0f} ({w['ess_over_n']:.0%} of observed), max weight {w['max']:.1f}, "
        f"rho01 {manifest['noise']['rho01']:.3f}, rho10 {manifest['noise']['rho10']:.3f}"
        + (" (assumed 0: --no-noise)" if manifest["noise"]["assumed_zero"] else ""),
        highlight=False, soft_wrap=True,
    )
    if manifest["pairs"] is not None:
        p = manifest["pairs"]
        out.print(f"wrote {p['rows']:,} pairs to {out_dir}/{manifest['files']['pairs']} ({p['tied_pairs_dropped']:,} tied pairs dropped)", highlight=False)
    out.print(f"manifest: {out_dir}/manifest.json", highlight=False)


@app.command()
def audit(
    warehouse: Annotated[Path, typer.Argument(help="Warehouse folder (feedback table and propensity scores required).")],
    out_html: Annotated[Path, typer.Option("--out", help="Report HTML path; report.json is written beside it (same name, .json).")],
    strict: Annotated[bool, typer.Option("--strict", help="Exit with code 1 when a guardrail is breached (one line per breach).")] = False,
    thresholds: Annotated[Optional[Path], typer.Option(help="TOML file of guardrail thresholds (keys as in README 'Guardrails'; missing keys keep defaults).")] = None,
    channel: Annotated[str, typer.Option(help="Channel whose propensities and weights are audited (noise rates: every channel).")] = "vote",
    clip: Annotated[Optional[float], typer.Option(help="Propensity floor of the audited weights 1/max(p, clip); match the export's --clip.")] = None,
) -> None:
    """Selection-bias audit: a self-contained HTML report (+ report.json) and guardrails that can fail a pipeline."""
    from propensity.audit import AuditConfig, Thresholds, run_audit

    try:
        limits = Thresholds.from_toml(thresholds) if thresholds else Thresholds()
        result = run_audit(AuditConfig(warehouse=str(warehouse), out=str(out_html), channel=channel, clip=clip, thresholds=limits))
    except CausalRMError as exc:
        _fail(exc)
    counts = {s: sum(g.status == s for g in result.guardrails) for s in ("pass", "breach", "skipped")}
    out.print(f"report: {result.html_path} (numbers: {result.json_path})", highlight=False)
    colour = "red" if result.breaches else "green"
    out.print(
        f"guardrails: [bold {colour}]{result.verdict}[/] ({counts['pass']} pass, {counts['breach']} breach, {counts['skipped']} skipped)",
        highlight=False,
    )
    for g in result.breaches:
        err.print(f"[{'bold red' if strict else 'yellow'}]breach:[/] {g.message}", highlight=False, soft_wrap=True)
    if strict and result.breaches:
        raise typer.Exit(code=1)


# ---------------------------------------------------------------- train, predict, evaluate (trainer)

# ---------------------------------------------------------------- run (pipeline from TOML)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
