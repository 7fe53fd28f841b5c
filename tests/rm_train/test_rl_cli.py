"""Issue 21's acceptance check: the same 100 (prompt, response) pairs score identically (max abs
diff < 1e-5, fp32) through `causalrm predict`, the Python API, a real reward server on loopback
and the TRL reward function; `causalrm export` and `causalrm serve` end bad input in one red line."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app
from rm_train.reward_model import RewardModel
from rm_train.rl import trl_reward_function

runner = CliRunner()


def _run(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def _serve_rewards(model: RewardModel, prompts: list[str], responses: list[str]) -> tuple[list[float], list[float]]:
    """/score and /get_reward from a real uvicorn on 127.0.0.1 (a free port), stopped afterwards."""
    pytest.importorskip("uvicorn")
    import uvicorn

    from rm_train.serve import ServeConfig, build_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(model, ServeConfig(port=port, batch_size=32)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):  # bounded wait for the socket (at most ~10 s)
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        base = f"http://127.0.0.1:{port}"
        scored = _post(f"{base}/score", {"prompts": prompts, "responses": responses})["rewards"]
        queries = [p + r for p, r in zip(prompts, responses)]
        rewarded = _post(f"{base}/get_reward", {"query": queries, "prompts": prompts, "labels": [None] * len(queries)})["rewards"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return scored, rewarded


def test_predict_api_server_and_trl_give_identical_rewards(text_head_model: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, dataset = text_head_model
    result = _run("predict", model_dir, dataset, "--out", tmp_path / "preds.parquet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(dataset / "data.parquet").head(100).join(
        pl.read_parquet(tmp_path / "preds.parquet"), on="exposure_id", how="left")
    prompts, responses = frame["prompt_text"].fill_null("").to_list(), frame["response_text"].fill_null("").to_list()
    cli_rewards = frame["reward"].to_numpy()

    model = RewardModel.load(model_dir, device="cpu")
    paths = {
        "python api": model.score(prompts, responses),
        "trl reward function": trl_reward_function(model)(prompts=prompts, completions=responses),
    }
    paths["server /score"], paths["server /get_reward"] = _serve_rewards(model, prompts, responses)
    assert np.std(cli_rewards) > 1e-4
    for name, rewards in paths.items():
        assert len(rewards) == 100, name
        assert np.abs(np.array(rewards) - cli_rewards).max() < 1e-5, name


def test_export_cli(text_head_model: tuple[Path, Path], tmp_path: Path) -> None:
    result = _run("export", text_head_model[0], "--out", tmp_path / "hf")
    assert result.exit_code == 0, result.output
    assert "trust_remote_code=True" in result.output and (tmp_path / "hf" / "modeling_causalrm.py").is_file()
    result = _run("export", tmp_path / "missing", "--out", tmp_path / "hf2")
    assert result.exit_code == 1 and "error:" in result.output and "Traceback" not in result.output


def test_serve_cli_refuses_a_bad_model_before_listening(tmp_path: Path) -> None:
    result = _run("serve", tmp_path, "--port", _free_port())
    assert result.exit_code == 1 and "not a reward model folder" in result.output
    result = _run("serve", tmp_path, "--batch-size", 0)
    assert result.exit_code == 1 and "batch_size must be >= 1" in result.output
