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

# ---------------------------------------------------------------- train, predict, evaluate (trainer)

# ---------------------------------------------------------------- run (pipeline from TOML)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
