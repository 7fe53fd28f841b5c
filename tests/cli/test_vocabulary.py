"""One CLI vocabulary (issue 20): one spelling per concept, choices listed in --help and equal to what
the library accepts, -h / --version, old spellings kept as hidden aliases, and option mistakes caught
by the parser before any heavy import."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

import cli
from cli import app, pipeline_steps

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _commands(command, path: tuple[str, ...] = ()):
    found = [(path, command)] if path else []
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


def _visible_options(command):
    return [p for p in command.params if p.param_type_name == "option" and not p.hidden]


def _library_choices() -> dict[type, set[str]]:
    from feedback_etl import embed, ingest, privacy, sources, texts, warehouse
    from propensity import diagnostics, io
    from propensity.models import calibration, estimators, score
    from propensity.noise import _proxy, estimate
    from propensity.slice import label_aware
    from propensity.weights import export
    from rm_train import config, losses
    from schemas import feedback

    return {
        cli.Channel: set(feedback.CHANNELS), cli.Device: set(config.DEVICES) | set(embed.DEVICES),
        cli.FileFormat: set(export.FORMATS), cli.TextSource: set(texts.TEXT_SOURCES), cli.Teacher: set(texts.TEACHERS),
        cli.Source: set(sources.SOURCES), cli.IngestEngine: set(ingest.ENGINES), cli.ScoreEngine: set(score.ENGINES),
        cli.TextRetention: set(privacy.TEXT_MODES), cli.Pooling: set(embed.POOLINGS),
        cli.PropensityModel: set(estimators.ESTIMATORS), cli.Calibration: set(calibration.CALIBRATIONS),
        cli.ScoresLayout: set(io.SCORES_LAYOUTS), cli.LabelModel: set(label_aware.LABEL_MODELS),
        cli.PropensityKind: set(label_aware.PROPENSITY_KINDS), cli.NoiseMethod: set(estimate.METHODS),
        cli.SegmentColumn: set(estimate.SEGMENT_COLUMNS), cli.Interval: set(diagnostics.INTERVALS),
        cli.ProxyModel: set(_proxy.PROXY_MODELS), cli.Scheme: set(export.SCHEMES), cli.Loss: set(losses.POINTWISE_LOSSES),
        cli.BaseLoss: set(losses.BASE_LOSSES), cli.Split: set(feedback.SPLITS), cli.WarehouseTable: set(warehouse.DELTA_TABLES),
    }


def test_choices_are_what_the_library_accepts():
    choices = _library_choices()
    defined = {v for v in vars(cli).values() if isinstance(v, type) and issubclass(v, cli.Enum) and v is not cli.Enum}
    assert defined == set(choices), f"give every cli Enum its library twin here: {sorted(e.__name__ for e in defined - set(choices))}"
    for enum, accepted in choices.items():
        assert {m.value for m in enum} == accepted, f"cli.{enum.__name__} drifted from the library: {sorted(accepted)}"


def test_one_spelling_per_concept():
    spellings: dict[str, set[str]] = defaultdict(set)
    for path, command in _commands(get_command(app)):
        for param in _visible_options(command):
            spellings[param.name].add(" / ".join((*param.opts, *param.secondary_opts)))
    mixed = {name: sorted(s) for name, s in spellings.items() if len(s) > 1}
    assert not mixed, f"one concept, several spellings: {mixed}"
    assert spellings["threads"] == {"--threads"} and "n_jobs" not in spellings
    assert spellings["embeddings"] == {"--embeddings / --no-embeddings"}
    assert not {"no_embedding", "no_embeddings"} & set(spellings)


def test_every_fixed_set_of_choices_is_an_enum_listed_in_help():
    command = get_command(app).commands["propensity"].commands["fit"]
    result = runner.invoke(app, ["propensity", "fit", "-h"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    for value in ("lightgbm|mlp|logistic", "isotonic|platt|none", "vote|copy|regenerate|share", "auto|cpu|cuda"):
        assert value in result.output
    parsed = command.make_context("fit", [".", "--channel", "vote", "--channel", "copy"]).params["channel"]
    assert [c.value for c in parsed] == ["vote", "copy"]  # repeatable, like propensity score's


@pytest.mark.parametrize("args", [["-h"], ["ingest", "-h"], ["noise", "estimate", "-h"]])
def test_short_help(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "Usage:" in result.output


def test_version():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"causalrm {version('causalrm')}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "missing.jsonl", "--warehouse", "wh"], "'missing.jsonl' does not exist"),
        (["propensity", "fit", "missing_wh"], "'missing_wh' does not exist"),
        (["propensity", "fit", ".", "--model", "xgboost"], "'xgboost' is not one of"),
        (["train", ".", "--out", "m", "--loss", "dr"], "'dr' is not one of"),
        (["ingest", ".", "--warehouse", "wh", "--threads", "0"], "--threads"),
    ],
)
def test_option_mistakes_are_caught_before_any_heavy_import(args, message, tmp_path):
    """The parser rejects them (exit 2) while only the CLI's own light modules are loaded."""
    script = (
        "import sys, cli\n"
        f"sys.argv = ['causalrm', *{args!r}]\n"
        "try:\n    cli.main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "heavy = sorted(m for m in ('duckdb', 'polars', 'pandera', 'torch', 'lightgbm', 'sklearn', 'pyspark') if m in sys.modules)\n"
        "print('RESULT', code, heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(ROOT), "COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert "RESULT 2 []" in result.stderr, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_old_spellings_are_hidden_aliases():
    group = get_command(app)
    fit = group.commands["propensity"].commands["fit"]
    assert fit.make_context("fit", [".", "--n-jobs", "2"]).params["n_jobs"] == 2
    train = group.commands["train"]
    assert train.make_context("train", [".", "--out", "m", "--no-embedding"]).params["no_embedding"] is True
    assert train.make_context("train", [".", "--out", "m", "--no-embeddings"]).params["embeddings"] is False
    noise = group.commands["noise"].commands["estimate"]
    assert noise.make_context("estimate", [".", "--no-embeddings"]).params["embeddings"] is False


def test_pipeline_toml_spells_negative_flags_either_way():
    steps = pipeline_steps({"warehouse": "wh", "propensity": {"embeddings": False, "channel": ["vote", "copy"]},
                            "noise": {"no_embeddings": True}})
    assert steps == [["propensity", "fit", "wh", "--no-embeddings", "--channel", "vote", "--channel", "copy"],
                     ["noise", "estimate", "wh", "--no-embeddings"]]
