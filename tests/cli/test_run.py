"""`causalrm run`: a pipeline TOML maps onto the commands one to one; bad configs are one clear line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli import app, pipeline_steps
from schemas.errors import ConfigError

runner = CliRunner()


def test_example_pipeline_maps_onto_commands():
    import tomllib
    from pathlib import Path

    config = tomllib.loads((Path(__file__).parents[2] / "examples" / "pipeline.toml").read_text())
    steps = pipeline_steps(config)
    assert [s[0] for s in steps] == ["simulate", "ingest", "embed", "propensity", "noise", "weights", "audit",
                                     "train", "train", "predict", "predict"]
    assert steps[3][:3] == ["propensity", "fit", "pipeline_out/warehouse"]
    assert steps[1] == ["ingest", "pipeline_out/logs/events", "--warehouse", "pipeline_out/warehouse"]
    assert steps[8][-4:] == ["--loss", "causalrm-dr", "--out", "pipeline_out/models/causalrm-dr"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"warehouse": "wh", "propensity": {"modle": "lightgbm"}}, "unknown key 'modle' in [propensity]"),
        ({"warehouse": "wh", "trian": {}}, "unknown table [trian]"),
        ({"propensity": {}}, "missing top-level `warehouse"),
        ({"warehouse": "wh", "noise": "anchor"}, "[noise] must be a table"),
    ],
)
def test_bad_pipeline_configs(config, message):
    with pytest.raises(ConfigError) as info:
        pipeline_steps(config)
    assert message in str(info.value)


def test_run_executes_steps_and_stops_on_the_first_failure(tmp_path):
    config = tmp_path / "p.toml"
    config.write_text(
        f'warehouse = "{tmp_path / "wh"}"\n[simulate]\nout = "{tmp_path / "logs"}"\nn_exposures = 1500\nseed = 3\n'
        f'[ingest]\ninputs = ["{tmp_path / "logs" / "events"}"]\n'
        f'[propensity]\nfolds = 1\n'
    )
    result = runner.invoke(app, ["run", str(config)])
    assert (tmp_path / "wh" / "feedback").is_dir()  # simulate and ingest ran
    assert result.exit_code == 1  # --folds 1 is refused by propensity fit
    assert "folds" in result.output and "Traceback" not in result.output


def test_run_reports_invalid_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("warehouse = \n")
    result = runner.invoke(app, ["run", str(bad)])
    assert result.exit_code == 1 and "invalid TOML" in result.output
