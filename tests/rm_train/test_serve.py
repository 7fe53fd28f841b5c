"""Reward server (issue 21): OpenRLHF's /get_reward and /score give RewardModel's numbers, bad
requests get a 4xx with one line, concurrent requests are batched together."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from rm_train.reward_model import RewardModel  # noqa: E402
from rm_train.serve import Batcher, ServeConfig, build_app, split_queries  # noqa: E402
from schemas.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def model(text_head_model: tuple[Path, Path]) -> RewardModel:
    return RewardModel.load(text_head_model[0], device="cpu")


@pytest.fixture(scope="module")
def pairs(text_head_model: tuple[Path, Path]) -> tuple[list[str], list[str]]:
    frame = pl.read_parquet(text_head_model[1] / "data.parquet").head(100)
    return frame["prompt_text"].fill_null("").to_list(), frame["response_text"].fill_null("").to_list()


@pytest.fixture(scope="module")
def client(model: RewardModel):
    with TestClient(build_app(model, ServeConfig(batch_size=16, max_batch_delay_ms=1, max_request_items=200,
                                                 max_body_bytes=200_000))) as test_client:
        yield test_client


def test_score_and_get_reward_equal_the_python_api(client: TestClient, model: RewardModel, pairs) -> None:
    prompts, responses = pairs
    expected = np.array(model.score(prompts, responses))
    scored = client.post("/score", json={"prompts": prompts, "responses": responses})
    assert scored.status_code == 200, scored.text
    assert np.abs(np.array(scored.json()["rewards"]) - expected).max() < 1e-5
    # OpenRLHF sends the decoded prompt + response as `query` and the prompt as `prompts`.
    queries = [p + r for p, r in zip(prompts, responses)]
    rewarded = client.post("/get_reward", json={"query": queries, "prompts": prompts, "labels": [""] * len(queries)})
    body = rewarded.json()
    assert rewarded.status_code == 200 and set(body) == {"rewards", "scores", "extra_logs"}
    assert body["scores"] == body["rewards"]
    assert np.abs(np.array(body["rewards"]) - expected).max() < 1e-5
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["kind"] == "head" and health["unsplit_queries"] == 0


def test_get_reward_without_prompts_scores_the_raw_query(client: TestClient, model: RewardModel) -> None:
    before = client.get("/health").json()["unsplit_queries"]
    reply = client.post("/get_reward", json={"query": ["Say helloworld"]}).json()
    assert reply["rewards"] == pytest.approx(model.score_texts(["Say helloworld"]), abs=1e-6)
    assert client.get("/health").json()["unsplit_queries"] == before + 1


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/score", b"{not json", 400, "not valid JSON"),
    ("/score", b"[1, 2]", 400, "must be a JSON object"),
    ("/score", json.dumps({"prompts": ["a", "b"], "responses": ["x"]}).encode(), 422, "2 prompts but 1 responses"),
    ("/score", json.dumps({"prompts": ["a"]}).encode(), 422, "missing field 'responses'"),
    ("/score", json.dumps({"prompts": ["a"], "responses": [7]}).encode(), 422, r"responses\[0\] is int"),
    ("/get_reward", json.dumps({"query": "one string"}).encode(), 422, "must be a list of strings"),
    ("/get_reward", json.dumps({"query": ["a", "b"], "prompts": ["a"]}).encode(), 422, "2 queries but 1 prompts"),
    ("/get_reward", json.dumps({"query": ["q"] * 201}).encode(), 413, "over the limit of 200"),
    ("/score", json.dumps({"prompts": ["p" * 300_000], "responses": ["r"]}).encode(), 413, "over the limit of 200,000"),
])
def test_bad_requests_get_one_line_4xx(client: TestClient, path: str, body: bytes, status: int, message: str) -> None:
    import re

    reply = client.post(path, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == status
    reason = reply.json()["error"]
    assert re.search(message, reason) and "\n" not in reason
    assert client.get("/health").json()["status"] == "ok"  # the server is still up


def test_empty_request_scores_nothing(client: TestClient) -> None:
    assert client.post("/score", json={"prompts": [], "responses": []}).json() == {"rewards": []}


def test_concurrent_requests_share_batches() -> None:
    calls: list[int] = []

    def score(texts: list[str]) -> list[float]:
        calls.append(len(texts))
        return [float(len(t)) for t in texts]

    async def run() -> list[list[float]]:
        batcher = Batcher(score, batch_size=6, max_batch_delay_ms=0)
        # Five requests are queued before the worker starts: it must take them as batches of >= 6 texts.
        tasks = [asyncio.ensure_future(batcher.submit(["x" * (k + 1)] * 2)) for k in range(5)]
        await asyncio.sleep(0)
        batcher.start()
        results = await asyncio.gather(*tasks)
        await batcher.stop()
        return results

    results = asyncio.run(run())
    assert results == [[float(k + 1)] * 2 for k in range(5)]  # each request gets its own slice back
    assert calls == [6, 4]


def test_a_failing_batch_fails_its_requests_not_the_worker() -> None:
    def score(texts: list[str]) -> list[float]:
        if "boom" in texts:
            raise RuntimeError("model exploded")
        return [1.0] * len(texts)

    async def run() -> list:
        batcher = Batcher(score, batch_size=1, max_batch_delay_ms=0)
        batcher.start()
        failed = await asyncio.gather(batcher.submit(["boom"]), return_exceptions=True)
        ok = await batcher.submit(["fine"])
        await batcher.stop()
        return [failed[0], ok]

    failed, ok = asyncio.run(run())
    assert isinstance(failed, RuntimeError) and ok == [1.0]


def test_split_queries() -> None:
    texts, unsplit = split_queries(["Q: hi A: yo", "other"], ["Q: hi", "nope"], "{prompt}\n\n{response}")
    assert texts == ["Q: hi\n\n A: yo", "other"] and unsplit == 1


def test_serve_config_validation() -> None:
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        ServeConfig(batch_size=0)
    assert ServeConfig().host == "127.0.0.1"  # loopback unless asked otherwise
