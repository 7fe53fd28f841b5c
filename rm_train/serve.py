"""Reward server: ``causalrm serve MODEL`` on FastAPI + uvicorn, with dynamic batching.

Endpoints
---------
``POST /get_reward``
    OpenRLHF's remote reward-model protocol, as its own server speaks it
    (``openrlhf/cli/serve_rm.py`` in OpenRLHF/OpenRLHF, read at commit 3c3be62, Aug 2026) and its
    client sends it (``SingleTurnAgentExecutor._fetch_rewards_via_http`` in
    ``openrlhf/utils/agent.py``): the body is ``{"query": [...], "prompts": [...], "labels": [...]}``
    where each query is the decoded prompt + response tokens; the answer is
    ``{"rewards": [...], "scores": [...], "extra_logs": {...}}`` (scores = rewards, as there).
    Point OpenRLHF at it with ``--reward.remote_url http://127.0.0.1:5000/get_reward``.
    When ``prompts[i]`` is a prefix of ``query[i]`` the pair is split there and scored with the
    training template, exactly as ``/score`` would; otherwise (or without ``prompts``) the query
    is scored as one text, as OpenRLHF's own server does (counted as ``unsplit_queries`` in ``/health``).
``POST /score``
    ``{"prompts": [...], "responses": [...]}`` -> ``{"rewards": [...]}``.
``GET /health``
    ``{"status": "ok", ...}`` with the model, template and request / batch counters.

Rewards are :meth:`rm_train.reward_model.RewardModel.score` values, sigmoid(f(x)) (``--logit``: f(x)).

Dynamic batching: every request's texts go onto one asyncio queue; a single worker takes the
first waiting request, then keeps taking requests until it holds ``batch_size`` texts or
``max_batch_delay_ms`` has passed since it took the first, scores them in one call on a worker
thread (the event loop keeps accepting requests meanwhile) and hands each request its slice.

Bad requests never reach the model and never stop the server: malformed JSON (400), a body over
``max_body_bytes`` or more than ``max_request_items`` texts (413), wrong types or lengths that
differ (422), each answered with ``{"error": "<one line>"}``.
"""

# No `from __future__ import annotations` here: FastAPI reads the route functions' annotations
# (`request: Request`, imported inside build_app) at definition time.
import asyncio
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from rm_train.reward_model import RewardModel, pair_texts
from schemas.errors import CausalRMError, ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """Server settings; ``causalrm serve`` options map onto them one to one."""

    host: str = "127.0.0.1"
    port: int = 5000
    batch_size: int = 64
    max_batch_delay_ms: float = 5.0
    max_request_items: int = 4096
    max_body_bytes: int = 32 * 1024 * 1024
    logit: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}", fix="pass a positive --batch-size")
        if self.max_batch_delay_ms < 0:
            raise ConfigError(f"max_batch_delay_ms must be >= 0, got {self.max_batch_delay_ms}")
        if self.max_request_items < 1 or self.max_body_bytes < 1:
            raise ConfigError("max_request_items and max_body_bytes must be >= 1")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")


class RequestError(Exception):
    """A request the server refuses, with its HTTP status and one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class _Work:
    texts: list[str]
    future: asyncio.Future


@dataclass
class _Stats:
    requests: int = 0
    items: int = 0
    batches: int = 0
    rejected: int = 0
    unsplit_queries: int = 0
    largest_batch: int = 0
    errors: list[str] = field(default_factory=list)


class Batcher:
    """Collects texts from concurrent requests into batches for one scoring worker.

    Parameters
    ----------
    score : callable scoring a list of texts, returning one float per text (runs on a thread).
    batch_size : texts per batch at which collection stops early.
    max_batch_delay_ms : longest wait, from the first request of a batch, for more requests.
    """

    def __init__(self, score, *, batch_size: int, max_batch_delay_ms: float) -> None:
        self.score = score
        self.batch_size = batch_size
        self.delay = max_batch_delay_ms / 1000.0
        self.queue: asyncio.Queue[_Work] = asyncio.Queue()
        self.stats = _Stats()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def alive(self) -> bool:
        """True while the worker runs (requests would wait forever without it)."""
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def submit(self, texts: list[str]) -> list[float]:
        """Rewards of ``texts``, scored in whatever batch they land in."""
        if not texts:
            return []
        if self._task is not None and self._task.done():
            raise RuntimeError("the batching worker stopped: restart the server")
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Work(texts, future))
        return await future

    async def _collect(self) -> list[_Work]:
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        n = len(batch[0].texts)
        deadline = loop.time() + self.delay
        while n < self.batch_size:
            try:
                work = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    work = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            batch.append(work)
            n += len(work.texts)
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            texts = [t for work in batch for t in work.texts]
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(texts))
            try:
                rewards = await asyncio.to_thread(self.score, texts)
            except Exception as exc:  # one bad batch fails its requests, never the server
                log.exception("scoring a batch of %d texts failed", len(texts))
                for work in batch:
                    if not work.future.done():
                        work.future.set_exception(exc)
                continue
            start = 0
            for work in batch:
                if not work.future.done():  # a client that hung up leaves a cancelled future
                    work.future.set_result(rewards[start:start + len(work.texts)])
                start += len(work.texts)


def _string_list(body: dict[str, Any], key: str, *, required: bool, limit: int) -> list[str] | None:
    value = body.get(key)
    if value is None:
        if required:
            raise RequestError(422, f"missing field {key!r}: send a JSON list of strings")
        return None
    if not isinstance(value, list):
        raise RequestError(422, f"field {key!r} must be a list of strings, got {type(value).__name__}")
    if len(value) > limit:
        raise RequestError(413, f"{len(value)} items in {key!r}, over the limit of {limit}: split the request")
    bad = next((i for i, v in enumerate(value) if not isinstance(v, str)), None)
    if bad is not None:
        raise RequestError(422, f"{key}[{bad}] is {type(value[bad]).__name__}, not a string")
    return value


async def _read_json(request, max_bytes: int) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, f"body of {int(declared):,} bytes is over the limit of {max_bytes:,}: split the request")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, f"body is over the limit of {max_bytes:,} bytes: split the request")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestError(400, f"body must be a JSON object, got {type(body).__name__}")
    return body


def split_queries(queries: list[str], prompts: list[str] | None, template: str) -> tuple[list[str], int]:
    """Model inputs for OpenRLHF queries (prompt + response texts): the training template where
    ``prompts[i]`` prefixes ``queries[i]``, else the query itself; and how many were not split."""
    if prompts is None:
        return list(queries), len(queries)
    texts, unsplit = [], 0
    for query, prompt in zip(queries, prompts):
        if prompt and query.startswith(prompt):
            texts.extend(pair_texts([prompt], [query[len(prompt):]], template))
        else:
            texts.append(query)
            unsplit += 1
    return texts, unsplit


def build_app(model: RewardModel, cfg: ServeConfig | None = None):
    """The FastAPI application serving ``model``; its batching worker runs while the app's lifespan does."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    cfg = cfg or ServeConfig()
    batcher = Batcher(lambda texts: model.score_texts(texts, logit=cfg.logit), batch_size=cfg.batch_size,
                      max_batch_delay_ms=cfg.max_batch_delay_ms)

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="causalrm reward server", lifespan=lifespan)
    app.state.batcher = batcher

    async def _answer(request: Request, handler) -> JSONResponse:
        try:
            body = await _read_json(request, cfg.max_body_bytes)
            payload = await handler(body)
        except RequestError as exc:
            batcher.stats.rejected += 1
            return JSONResponse({"error": exc.reason}, status_code=exc.status)
        except CausalRMError as exc:
            batcher.stats.rejected += 1
            return JSONResponse({"error": exc.one_line()}, status_code=422)
        except Exception as exc:  # noqa: BLE001 - the reason goes back to the client, the server lives on
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            batcher.stats.errors = (batcher.stats.errors + [reason])[-5:]
            return JSONResponse({"error": f"scoring failed: {reason}"}, status_code=500)
        return JSONResponse(payload)

    async def get_reward(body: dict[str, Any]) -> dict[str, Any]:
        queries = _string_list(body, "query", required=True, limit=cfg.max_request_items)
        prompts = _string_list(body, "prompts", required=False, limit=cfg.max_request_items)
        if prompts is not None and len(prompts) != len(queries):
            raise RequestError(422, f"{len(queries)} queries but {len(prompts)} prompts: send one prompt per query")
        texts, unsplit = split_queries(queries, prompts, model.template)
        batcher.stats.unsplit_queries += unsplit
        rewards = await _score(texts)
        # Same keys as OpenRLHF's serve_rm.py; extra_logs holds per-sample values as there.
        return {"rewards": rewards, "scores": rewards, "extra_logs": {"causalrm_reward": rewards}}

    async def score(body: dict[str, Any]) -> dict[str, Any]:
        prompts = _string_list(body, "prompts", required=True, limit=cfg.max_request_items)
        responses = _string_list(body, "responses", required=True, limit=cfg.max_request_items)
        if len(prompts) != len(responses):
            raise RequestError(422, f"{len(prompts)} prompts but {len(responses)} responses: send one prompt per response")
        return {"rewards": await _score(pair_texts(prompts, responses, model.template))}

    async def _score(texts: list[str]) -> list[float]:
        batcher.stats.requests += 1
        batcher.stats.items += len(texts)
        return await batcher.submit(texts)

    @app.post("/get_reward")
    async def get_reward_route(request: Request) -> JSONResponse:
        return await _answer(request, get_reward)

    @app.post("/score")
    async def score_route(request: Request) -> JSONResponse:
        return await _answer(request, score)

    @app.get("/health")
    async def health() -> JSONResponse:
        stats = batcher.stats
        status = "ok" if batcher.alive else "error: the batching worker stopped"
        return JSONResponse(status_code=200 if batcher.alive else 503, content={"status": status, "model": str(model.path), "kind": model.kind, "template": model.template,
                "reward": "logit f(x)" if cfg.logit else "sigmoid(f(x))", "batch_size": cfg.batch_size,
                "max_batch_delay_ms": cfg.max_batch_delay_ms, "max_request_items": cfg.max_request_items,
                "requests": stats.requests, "items": stats.items, "batches": stats.batches,
                "largest_batch": stats.largest_batch, "rejected": stats.rejected,
                "unsplit_queries": stats.unsplit_queries, "recent_errors": stats.errors})

    return app


def serve(model_dir: str, cfg: ServeConfig, *, device: str = "auto", announce=None) -> None:
    """Load the model (errors surface before the port opens) and run uvicorn until interrupted.

    ``announce(message)`` is called once the model is loaded, just before the port opens.
    """
    import uvicorn

    model = RewardModel.load(model_dir, device=device, batch_size=cfg.batch_size)
    model.score(["warm-up"], ["loads the embedding model now; a head that cannot score text fails here"])
    message = (f"serving {model_dir} ({model.kind}) on http://{cfg.host}:{cfg.port} "
               f"(OpenRLHF: --reward.remote_url http://{cfg.host}:{cfg.port}/get_reward)")
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        # The server has no authentication: anyone who reaches the port can use the model.
        message += f"; warning: {cfg.host} is reachable from other machines and the server has no authentication"
    log.info(message)
    if announce is not None:
        announce(message)
    uvicorn.run(build_app(model, cfg), host=cfg.host, port=cfg.port, log_level="warning")


__all__ = ["Batcher", "RequestError", "ServeConfig", "build_app", "serve", "split_queries"]
