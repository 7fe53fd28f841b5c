"""Real exports in (issue 18): Langfuse as its public API returns it, LangSmith runs + feedback,
OpenAI-style stored chat completions + feedback, with exact counts.

Where each fixture's shape comes from, field by field:

* Langfuse: langfuse-python (commit c3c6a09e), the SDK's Fern-generated types of the public API,
  ``langfuse/api/``: ``trace/types/traces.py`` (``Traces``: ``data``, ``meta``) of
  ``commons/types/trace_with_details.py`` (``TraceWithDetails`` = ``Trace``: id, timestamp, name,
  input, output, sessionId, release, version, userId, metadata, tags, public, environment; plus
  htmlPath, latency, totalCost, observations and scores as lists of *ids*);
  ``commons/types/trace_with_full_details.py`` (GET /traces/{id}: the same with observations as
  ``ObservationsView`` objects and scores as ``ScoreV1`` objects); ``scores/types/
  get_scores_response.py`` (``data`` of ``GetScoresResponseData``: id, traceId, sessionId,
  observationId, datasetRunId, name, source, timestamp, createdAt, updatedAt, authorUserId,
  comment, metadata, configId, queueId, environment, dataType, value, stringValue);
  ``commons/types/score_source.py`` (API, ANNOTATION, EVAL); ``score_data_type.py`` (NUMERIC,
  BOOLEAN, CATEGORICAL, ...); ``commons/types/observation.py`` + ``observations_view.py``
  (id, traceId, type, name, startTime, endTime, model, modelParameters, input, output, usage,
  level, parentObservationId, ...); ``utils/pagination/types/meta_response.py`` (page, limit,
  totalItems, totalPages).
* LangSmith: langsmith-sdk (commit bc8dd672) ``python/langsmith/schemas.py``: ``Run`` (RunBase: id,
  name, start_time, run_type, end_time, extra, error, serialized, events, inputs, outputs,
  reference_example_id, parent_run_id, tags; Run: session_id, child_run_ids, feedback_stats,
  app_path, status, prompt_tokens, completion_tokens, total_tokens, trace_id, dotted_order) and
  ``Feedback`` (id, created_at, modified_at, run_id, trace_id, key, score, value, comment,
  correction, feedback_source {type, metadata, user_id}, session_id).
* OpenAI: openai-python (commit e43b4224) ``src/openai/types/chat/chat_completion.py``
  (``ChatCompletion``: id, choices [``Choice``: finish_reason, index, logprobs, message], created,
  model, object, metadata, service_tier, system_fingerprint, usage), ``chat_completion_message.py``
  (role, content, refusal, annotations), ``completion_create_params.py`` (the request's messages,
  metadata, user). The feedback rows are causalrm's own format (OpenAI stores none): completion_id,
  choice_index / turn, rating, created, comment.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from feedback_etl.annotations import audit_labels, read_annotations
from feedback_etl.ingest import IngestConfig, ingest
from feedback_etl.io import read_events, read_feedback, read_rejects
from schemas.errors import EmptyIngestError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _write(path: Path, doc: object, *, lines: bool = False) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in doc) if lines else json.dumps(doc), encoding="utf-8")
    return path


def _summary(wh: Path) -> dict:
    fb = read_feedback(wh)
    observed = fb.filter(pl.col("observed"))
    return {"exposures": fb.height, "observed": observed.height, "up": int((observed["label"] == 1).sum()),
            "down": int((observed["label"] == 0).sum())}


def _rejects_by_reason(wh: Path) -> dict[str, int]:
    rejects = read_rejects(wh)
    return dict(rejects.group_by("reason").len().iter_rows()) if rejects.height else {}


# ---------------------------------------------------------------- Langfuse

def _trace(trace_id: str, minute: int, **fields) -> dict:
    """A ``Trace`` with every field of the schema (``TraceWithDetails`` adds htmlPath ...)."""
    return {
        "id": trace_id, "timestamp": f"2026-02-01T09:{minute:02d}:00.000Z", "name": "chat",
        "input": [{"role": "user", "content": f"question {trace_id}"}], "output": {"role": "assistant", "content": f"answer {trace_id}"},
        "sessionId": None, "release": None, "version": None, "userId": None, "metadata": {}, "tags": [], "public": False,
        "environment": "production", "htmlPath": f"/project/p1/traces/{trace_id}", "latency": 1.25, "totalCost": 0.0004,
        **fields,
    }


def _score(score_id: str, trace_id: str, name: str, data_type: str, value: float, *, source: str = "API",
           string_value: str | None = None, comment: str | None = None, minute: int = 30) -> dict:
    """A ``GetScoresResponseData`` item (GET /api/public/scores); ScoreV1 has the same fields less
    sessionId and datasetRunId."""
    score = {
        "id": score_id, "traceId": trace_id, "sessionId": None, "observationId": None, "datasetRunId": None,
        "name": name, "source": source, "timestamp": f"2026-02-01T10:{minute:02d}:00.000Z",
        "createdAt": f"2026-02-01T10:{minute:02d}:00.000Z", "updatedAt": f"2026-02-01T10:{minute:02d}:00.000Z",
        "authorUserId": "reviewer-1" if source == "ANNOTATION" else None, "comment": comment, "metadata": {},
        "configId": None, "queueId": None, "environment": "production", "dataType": data_type, "value": value,
    }
    if string_value is not None:  # CATEGORICAL and BOOLEAN scores carry stringValue
        score["stringValue"] = string_value
    return score


def _observation(obs_id: str, trace_id: str, obs_type: str, model: str | None, second: int) -> dict:
    """An ``ObservationsView`` (GET /api/public/observations)."""
    return {
        "id": obs_id, "traceId": trace_id, "type": obs_type, "name": obs_type.lower(),
        "startTime": f"2026-02-01T09:00:{second:02d}.000Z", "endTime": f"2026-02-01T09:00:{second + 1:02d}.000Z",
        "completionStartTime": None, "model": model, "modelParameters": {"temperature": 0.2} if model else None,
        "input": None, "version": None, "metadata": {}, "output": None,
        "usage": {"input": 12, "output": 30, "total": 42, "unit": "TOKENS"}, "level": "DEFAULT", "statusMessage": None,
        "parentObservationId": None, "promptId": None, "usageDetails": {"input": 12, "output": 30}, "costDetails": {},
        "environment": "production", "promptName": None, "promptVersion": None, "modelId": None, "latency": 1.0,
        "timeToFirstToken": None,
    }


LF_TRACES = [
    _trace("t1", 0, userId="alice", sessionId="sA", release="v1"),
    _trace("t2", 5, userId="bob", metadata={"model": "claude-x"}),
    _trace("t3", 7, userId="bob", release="v3"),
    _trace("t4", 8, userId="carol"),
    _trace("t5", 9),  # no userId: an impression without user_id is rejected
]
LF_SCORES = [
    _score("s1", "t1", "user-feedback", "NUMERIC", 1, comment="spot on", minute=1),
    _score("s2", "t1", "user-feedback", "BOOLEAN", 0, source="ANNOTATION", string_value="False", comment="wrong capital"),
    _score("s3", "t1", "hallucination", "NUMERIC", 0.1, source="EVAL"),
    _score("s4", "t2", "user-feedback", "CATEGORICAL", 0, string_value="not helpful", minute=6),
    _score("s5", "t2", "copied", "BOOLEAN", 1, string_value="True", minute=6),
    _score("s6", "t3", "user-feedback", "CATEGORICAL", 2, string_value="meh", minute=8),
]
LF_OBSERVATIONS = [_observation("o1", "t1", "GENERATION", "gpt-4o-2024-08-06", 1), _observation("o2", "t1", "SPAN", None, 0)]
LF_MAPPING = '[langfuse.scores]\n"user-feedback" = "vote"\n"copied" = "copy"\n[langfuse.categories]\n"not helpful" = "down"\n'


def _page(items: list[dict], page: int, total_items: int, limit: int = 3) -> dict:
    return {"data": items, "meta": {"page": page, "limit": limit, "totalItems": total_items, "totalPages": -(-total_items // limit)}}


def _with_ids(trace: dict) -> dict:
    """As on a GET /api/public/traces page: observations and scores as lists of ids."""
    return {**trace, "observations": [o["id"] for o in LF_OBSERVATIONS if o["traceId"] == trace["id"]],
            "scores": [s["id"] for s in LF_SCORES if s["traceId"] == trace["id"]]}


def _full(trace: dict) -> dict:
    """As GET /api/public/traces/{id} returns it (TraceWithFullDetails): ScoreV1 and ObservationsView objects."""
    scores = [{k: v for k, v in s.items() if k not in ("sessionId", "datasetRunId")} for s in LF_SCORES if s["traceId"] == trace["id"]]
    return {**trace, "observations": [o for o in LF_OBSERVATIONS if o["traceId"] == trace["id"]], "scores": scores}


@pytest.fixture
def langfuse_split(tmp_path: Path) -> tuple[list[Path], Path]:
    """Two traces pages, a scores page and an observations page, passed scores first."""
    pages = [_page([_with_ids(t) for t in LF_TRACES[:3]], 1, 5), _page([_with_ids(t) for t in LF_TRACES[3:]], 2, 5)]
    files = [
        _write(tmp_path / "scores.json", _page(LF_SCORES, 1, len(LF_SCORES), limit=50)),
        _write(tmp_path / "traces-1.json", pages[0]),
        _write(tmp_path / "traces-2.json", pages[1]),
        _write(tmp_path / "observations.json", _page(LF_OBSERVATIONS, 1, 2, limit=50)),
    ]
    mapping = tmp_path / "map.toml"
    mapping.write_text(LF_MAPPING)
    return files, mapping


def test_langfuse_pages_join_scores_and_observations_with_exact_counts(tmp_path, langfuse_split):
    files, mapping = langfuse_split
    run = ingest(IngestConfig(inputs=tuple(map(str, files)), warehouse=str(tmp_path / "wh"), source="langfuse", mapping=str(mapping)))
    wh = tmp_path / "wh"
    # t1 up (API score s1; the ANNOTATION s2 and EVAL s3 are not organic), t2 down (CATEGORICAL
    # "not helpful" mapped down) and copied, t3's "meh" is no vote (rejected), t4 unobserved.
    assert _summary(wh) == {"exposures": 4, "observed": 2, "up": 1, "down": 1}
    assert _rejects_by_reason(wh) == {"missing_field": 1, "unknown_event_type": 1}
    assert run["accepted_by_type"] == {"impression": 4, "thumbs_up": 1, "thumbs_down": 1, "copy": 1}
    assert run["reconciliation"] == {"rows_read": 9, "accepted": 7, "rejected": 2, "duplicates": 0, "balanced": True}
    assert [f["source_records"] for f in run["files"]] == [6, 3, 2, 2]
    feedback = read_feedback(wh).sort("exposure_id")
    assert feedback["model_id"].to_list() == ["gpt-4o-2024-08-06", "claude-x", "v3", "unknown"]  # GENERATION, metadata, release
    assert feedback["session_id"].to_list() == ["sA", "t2", "t3", "t4"] and feedback["copied"].to_list() == [False, True, False, False]
    assert json.loads(read_rejects(wh).filter(pl.col("reason") == "unknown_event_type")["payload"][0])["stringValue"] == "meh"
    assert run["warnings"] == []


def test_langfuse_pages_plus_scores_equal_traces_with_embedded_scores(tmp_path, langfuse_split):
    files, mapping = langfuse_split
    split_wh, embedded_wh = tmp_path / "split", tmp_path / "embedded"
    ingest(IngestConfig(inputs=tuple(map(str, files)), warehouse=str(split_wh), source="langfuse", mapping=str(mapping)))
    full = _write(tmp_path / "traces-full.jsonl", [_full(t) for t in LF_TRACES], lines=True)  # one GET /traces/{id} per line
    ingest(IngestConfig(inputs=(str(full),), warehouse=str(embedded_wh), source="langfuse", mapping=str(mapping)))
    assert read_feedback(split_wh).equals(read_feedback(embedded_wh))
    # Events agree but for lineage (which file and row each came from) and the run that wrote them.
    lineage = ["source_file", "row_number", "run_id"]
    events = [read_events(w).drop(lineage, strict=False).sort("event_id") for w in (split_wh, embedded_wh)]
    assert events[0].equals(events[1])
    assert _rejects_by_reason(split_wh) == _rejects_by_reason(embedded_wh)


def test_langfuse_single_trace_and_annotation_scores_as_gold_labels(tmp_path):
    one = _write(tmp_path / "t1.json", _full(LF_TRACES[0]))  # GET /api/public/traces/{id}: one object
    mapping = tmp_path / "map.toml"
    mapping.write_text(LF_MAPPING)
    ingest(IngestConfig(inputs=(str(one),), warehouse=str(tmp_path / "wh"), source="langfuse", mapping=str(mapping)))
    assert _summary(tmp_path / "wh") == {"exposures": 1, "observed": 1, "up": 1, "down": 0}
    notes = read_annotations((str(one),), "langfuse", mapping)
    assert notes.sort("feedback_id").select("feedback_id", "origin", "role", "polarity", "comment").rows() == [
        ("s1", "API", "organic", "up", "spot on"), ("s2", "ANNOTATION", "audit", "down", "wrong capital"), ("s3", "EVAL", None, "up", None)]
    # The reviewer's ANNOTATION says the answer the user liked is wrong: a gold label 0 (a flip).
    assert audit_labels(notes).rows() == [("t1", 0)]


def test_langfuse_traces_page_without_scores_warns_and_names_the_scores_export(tmp_path):
    page = _write(tmp_path / "traces.json", _page([_with_ids(t) for t in LF_TRACES[:4]], 1, 4, limit=50))
    run = ingest(IngestConfig(inputs=(str(page),), warehouse=str(tmp_path / "wh"), source="langfuse"))
    assert _summary(tmp_path / "wh") == {"exposures": 4, "observed": 0, "up": 0, "down": 0}
    assert len(run["warnings"]) == 2 and "none observed" in run["warnings"][0] and "GET /api/public/scores" in run["warnings"][0]
    assert run["warnings"][1].startswith("6 score id(s) listed by the traces are in no score read")
    # A scores export missing a page: the votes it holds are named, not silently lost.
    partial = _write(tmp_path / "scores.json", _page(LF_SCORES[:5], 1, 6, limit=5))
    run = ingest(IngestConfig(inputs=(str(page), str(partial)), warehouse=str(tmp_path / "wh2"), source="langfuse"))
    assert run["warnings"] == ["1 score id(s) listed by the traces are in no score read: pass the scores export "
                               "(every page of GET /api/public/scores) in the same run"]


def test_langfuse_scores_alone_are_refused_with_their_cause(tmp_path):
    scores = _write(tmp_path / "scores.json", _page(LF_SCORES, 1, 6, limit=50))
    mapping = tmp_path / "map.toml"
    mapping.write_text(LF_MAPPING)
    config = {"inputs": (str(scores),), "warehouse": str(tmp_path / "wh"), "source": "langfuse", "mapping": str(mapping)}
    with pytest.raises(EmptyIngestError, match="3 rejected as orphan_feedback.*ingest the impressions / traces"):
        ingest(IngestConfig(**config))
    assert not (tmp_path / "wh" / "manifest.json").exists()  # nothing committed
    run = ingest(IngestConfig(**config, allow_empty=True))
    assert run["rejected"] == {**run["rejected"], "orphan_feedback": 3, "unknown_event_type": 1}
    assert "allow-empty" in run["warnings"][0]
    # Without the categories table, "not helpful" is no vote: the cause names the table to fill in.
    with pytest.raises(EmptyIngestError, match=r"unknown_event_type.*\[langfuse.categories\]"):
        ingest(IngestConfig(**{**config, "mapping": None, "warehouse": str(tmp_path / "wh2")}))


# ---------------------------------------------------------------- LangSmith

def _run(run_id: str, minute: int, *, run_type: str = "chain", parent: str | None = None, trace: str | None = None,
         metadata: dict | None = None, invocation: dict | None = None, name: str = "ChatPipeline") -> dict:
    """A ``Run`` as langsmith-sdk's ``Client.list_runs`` returns it, serialised."""
    trace_id = trace or run_id
    return {
        "id": run_id, "name": name, "start_time": f"2026-03-02T08:{minute:02d}:00.000000", "run_type": run_type,
        "end_time": f"2026-03-02T08:{minute:02d}:02.000000", "extra": {"metadata": metadata or {}, "invocation_params": invocation or {}},
        "error": None, "serialized": None, "events": [{"name": "start", "time": f"2026-03-02T08:{minute:02d}:00.000000"}],
        "inputs": {"question": f"q-{run_id}"}, "outputs": {"answer": f"a-{run_id}"}, "reference_example_id": None,
        "parent_run_id": parent, "tags": [], "session_id": "project-1", "child_run_ids": None, "feedback_stats": None,
        "app_path": f"/o/x/projects/p/project-1/r/{run_id}", "status": "success", "prompt_tokens": 10,
        "completion_tokens": 20, "total_tokens": 30, "trace_id": trace_id, "dotted_order": f"20260302T08{minute:02d}00000000Z{run_id}",
    }


def _feedback(fb_id: str, run_id: str, trace_id: str, key: str, score: object, minute: int, *, source_type: str = "api",
              comment: str | None = None, correction: object = None, value: object = None) -> dict:
    """A ``Feedback`` as ``Client.list_feedback`` returns it, serialised."""
    return {
        "id": fb_id, "created_at": f"2026-03-02T09:{minute:02d}:00.000000+00:00", "modified_at": f"2026-03-02T09:{minute:02d}:00.000000+00:00",
        "run_id": run_id, "trace_id": trace_id, "key": key, "score": score, "value": value, "comment": comment,
        "correction": correction, "feedback_source": {"type": source_type, "metadata": {}, "user_id": None},
        "session_id": "project-1", "comparative_experiment_id": None, "feedback_group_id": None, "extra": None,
    }


LS_RUNS = [
    _run("r1", 0, metadata={"user_id": "u1", "thread_id": "th1"}),
    _run("c1", 0, run_type="llm", parent="r1", trace="r1", name="ChatOpenAI",
         metadata={"ls_model_name": "gpt-4o-mini", "user_id": "u1"}, invocation={"model": "gpt-4o-mini"}),
    _run("r2", 5, metadata={"user_id": "u2", "ls_model_name": "claude-3-5-sonnet"}),
    _run("r3", 9, metadata={"user_id": "u1", "thread_id": "th1"}),
]
LS_FEEDBACK = [
    _feedback("f1", "r1", "r1", "user_score", 1, 1, comment="nice"),
    _feedback("f2", "r2", "r2", "user_score", 0, 6, correction={"answer": "the right answer"}),
    _feedback("f3", "r1", "r1", "correctness", 0.2, 2, source_type="model"),  # LLM-as-judge: not a user's vote
    _feedback("f4", "r3", "r3", "expert_label", 1, 12, source_type="app"),  # an audit key: a gold label
    _feedback("f5", "c1", "r1", "user_score", True, 3),  # logged on the child llm run: belongs to trace r1
]


def test_langsmith_runs_and_feedback_joined_by_run_id_with_exact_counts(tmp_path):
    runs = _write(tmp_path / "runs.jsonl", LS_RUNS, lines=True)
    feedback = _write(tmp_path / "feedback.json", LS_FEEDBACK)
    mapping = tmp_path / "map.toml"
    mapping.write_text('[langsmith]\naudit_keys = ["expert_label"]\n[langsmith.feedback]\nuser_score = "vote"\n')
    run = ingest(IngestConfig(inputs=(str(feedback), str(runs)), warehouse=str(tmp_path / "wh"), source="langsmith", mapping=str(mapping)))
    wh = tmp_path / "wh"
    assert _summary(wh) == {"exposures": 3, "observed": 2, "up": 1, "down": 1}  # r1 up (f1, f5), r2 down, r3 unobserved
    assert run["accepted_by_type"] == {"impression": 3, "thumbs_up": 2, "thumbs_down": 1} and _rejects_by_reason(wh) == {}
    fb = read_feedback(wh).sort("exposure_id")
    assert fb["model_id"].to_list() == ["gpt-4o-mini", "claude-3-5-sonnet", "ChatPipeline"]  # child llm run, own metadata, name
    assert fb["user_id"].to_list() == ["u1", "u2", "u1"] and fb["session_id"].to_list() == ["th1", "r2", "th1"]
    notes = read_annotations((str(runs), str(feedback)), "langsmith", mapping).sort("feedback_id")
    assert json.loads(notes.filter(pl.col("feedback_id") == "f2")["correction"][0]) == {"answer": "the right answer"}
    assert notes.filter(pl.col("feedback_id") == "f5")["exposure_id"][0] == "r1"
    assert notes.filter(pl.col("feedback_id") == "f3")["role"][0] is None
    assert audit_labels(notes).rows() == [("r3", 1)]


def test_langsmith_user_id_from_a_dotted_mapping_path(tmp_path):
    runs = [{**r, "extra": {"metadata": {"account": {"email_hash": f"h-{r['id']}"}}}} for r in LS_RUNS if r["parent_run_id"] is None]
    path = _write(tmp_path / "runs.jsonl", runs, lines=True)
    mapping = tmp_path / "map.toml"
    mapping.write_text('[fields]\nuser_id = "extra.metadata.account.email_hash"\n')
    ingest(IngestConfig(inputs=(str(path),), warehouse=str(tmp_path / "wh"), source="langsmith", mapping=str(mapping)))
    assert read_feedback(tmp_path / "wh").sort("exposure_id")["user_id"].to_list() == ["h-r1", "h-r2", "h-r3"]


# ---------------------------------------------------------------- OpenAI-style chat logs

def _completion(cid: str, created: int, messages: list[dict], answers: list[str], *, user: str | None, conversation: str) -> dict:
    """A stored ``ChatCompletion`` with the request's messages, metadata and user."""
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": k, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": a, "refusal": None, "annotations": []}} for k, a in enumerate(answers)],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}, "service_tier": "default",
        "system_fingerprint": "fp_0001", "metadata": {"conversation_id": conversation}, "user": user, "messages": messages,
    }


SYSTEM = {"role": "system", "content": "Be brief."}
Q1, A1 = {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}
Q2 = {"role": "user", "content": "And of Italy?"}
OA_COMPLETIONS = [
    _completion("chatcmpl-1", 1767607200, [SYSTEM, Q1], ["Paris."], user="user-1", conversation="conv-1"),
    _completion("chatcmpl-2", 1767607260, [SYSTEM, Q1, A1, Q2], ["Milan."], user="user-1", conversation="conv-1"),
    _completion("chatcmpl-3", 1767607320, [Q2], ["Rome.", "Rome, since 1871."], user="user-2", conversation="conv-2"),
    {"id": "conv-9", "created": 1767610800, "model": "gpt-4o-mini", "user": "user-3", "metadata": {},
     "messages": [Q1, A1, Q2, {"role": "assistant", "content": "Milan."}]},  # a transcript: two assistant turns
    _completion("chatcmpl-4", 1767607400, [Q1], ["Paris."], user=None, conversation="conv-4"),  # no user: rejected
]
OA_FEEDBACK = [
    {"completion_id": "chatcmpl-1", "rating": "up", "created": 1767607230},
    {"completion_id": "chatcmpl-2", "rating": 0, "created": 1767607290000, "comment": "Rome"},  # epoch milliseconds
    {"completion_id": "chatcmpl-3", "choice_index": 1, "rating": True, "created": "2026-01-05T10:03:30Z"},
    {"completion_id": "conv-9", "turn": 2, "rating": "down", "created": 1767610860},
    {"completion_id": "chatcmpl-404", "rating": "up", "created": 1767607500},  # no such completion: orphan
    {"completion_id": "chatcmpl-1", "rating": "sideways", "created": 1767607240},  # no vote: unknown event type
]


def test_openai_chat_one_exposure_per_assistant_turn_with_exact_counts(tmp_path):
    completions = _write(tmp_path / "completions.jsonl", OA_COMPLETIONS, lines=True)
    feedback = _write(tmp_path / "feedback.jsonl", OA_FEEDBACK, lines=True)
    run = ingest(IngestConfig(inputs=(str(completions), str(feedback)), warehouse=str(tmp_path / "wh"), source="openai-chat"))
    wh = tmp_path / "wh"
    assert _summary(wh) == {"exposures": 6, "observed": 4, "up": 2, "down": 2}
    assert _rejects_by_reason(wh) == {"missing_field": 1, "orphan_feedback": 1, "unknown_event_type": 1}
    assert run["accepted_by_type"] == {"impression": 6, "thumbs_up": 2, "thumbs_down": 2}
    fb = read_feedback(wh).sort("exposure_id")
    assert fb["exposure_id"].to_list() == ["chatcmpl-1", "chatcmpl-2", "chatcmpl-3", "chatcmpl-3:1", "conv-9:turn1", "conv-9:turn2"]
    assert fb.filter(pl.col("observed")).select("exposure_id", "label").rows() == [
        ("chatcmpl-1", 1), ("chatcmpl-2", 0), ("chatcmpl-3:1", 1), ("conv-9:turn2", 0)]
    # The prompt is the conversation so far; epoch `created` is the impression time.
    turn2 = fb.filter(pl.col("exposure_id") == "conv-9:turn2").to_dicts()[0]
    assert json.loads(turn2["prompt_text"]) == [Q1, A1, Q2] and turn2["response_text"] == "Milan."
    assert json.loads(fb.filter(pl.col("exposure_id") == "chatcmpl-2")["prompt_text"][0]) == [SYSTEM, Q1, A1, Q2]
    assert fb["session_id"].to_list()[:3] == ["conv-1", "conv-1", "conv-2"]
    events = read_events(wh).filter(pl.col("event_id") == "openai:chatcmpl-1:impression")
    assert events["event_time"].dt.epoch("s").to_list() == [1767607200]


# ---------------------------------------------------------------- examples/ and the CLI

@pytest.mark.parametrize(
    ("source", "folder", "expected"),
    [
        ("langfuse", "langfuse", {"exposures": 2, "observed": 2, "up": 1, "down": 1}),
        ("langsmith", "langsmith", {"exposures": 2, "observed": 2, "up": 1, "down": 1}),
        ("openai-chat", "openai", {"exposures": 3, "observed": 2, "up": 1, "down": 1}),
    ],
)
def test_examples_ingest_with_one_command(tmp_path, source, folder, expected):
    from cli import app

    inputs = sorted(str(p) for p in (EXAMPLES / folder).iterdir() if p.suffix in (".json", ".jsonl"))
    mapping = EXAMPLES / folder / "mapping.toml"
    args = ["ingest", *inputs, "--warehouse", str(tmp_path / "wh"), "--source", source]
    result = CliRunner().invoke(app, args + (["--mapping", str(mapping)] if mapping.exists() else []))
    assert result.exit_code == 0, result.output
    assert _summary(tmp_path / "wh") == expected


def test_cli_exits_non_zero_with_the_cause_when_nothing_is_accepted(tmp_path):
    from cli import app

    path = _write(tmp_path / "logs.jsonl", [{"event_id": f"e{k}", "event_time": "last tuesday", "event_type": "impression",
                                             "exposure_id": f"x{k}"} for k in range(10)], lines=True)
    result = CliRunner().invoke(app, ["ingest", str(path), "--warehouse", str(tmp_path / "wh")])
    assert result.exit_code == 1 and "no event accepted from 10 rows read: 10 rejected as bad_timestamp" in result.output
    assert not (tmp_path / "wh" / "manifest.json").exists()  # nothing committed
    result = CliRunner().invoke(app, ["ingest", str(path), "--warehouse", str(tmp_path / "wh"), "--allow-empty"])
    assert result.exit_code == 0 and "warning:" in result.output


def test_warning_when_more_than_half_of_a_file_is_rejected_for_one_reason(tmp_path):
    good = {"event_id": "i1", "event_time": 1767607200, "event_type": "impression", "exposure_id": "x1", "user_id": "u",
            "session_id": "s", "prompt_id": "p", "response_id": "r", "model_id": "m"}
    rows = [good] + [{**good, "event_id": f"b{k}", "exposure_id": f"y{k}", "event_time": "soon"} for k in range(2)]
    path = _write(tmp_path / "logs.jsonl", rows, lines=True)
    run = ingest(IngestConfig(inputs=(str(path),), warehouse=str(tmp_path / "wh")))
    assert run["accepted"] == 1 and run["rejected"]["bad_timestamp"] == 2
    assert any("2 of 3 rows rejected as bad_timestamp" in w for w in run["warnings"])


def test_langfuse_example_writes_annotations_and_an_audit_file_the_noise_estimator_reads(tmp_path):
    from cli import app
    from propensity.noise import read_audit

    inputs = [str(EXAMPLES / "langfuse" / name) for name in ("traces.json", "scores.json", "observations.json")]
    audit, notes = tmp_path / "audit.csv", tmp_path / "notes.parquet"
    result = CliRunner().invoke(app, ["ingest", *inputs, "--warehouse", str(tmp_path / "wh"), "--source", "langfuse",
                                      "--annotations-out", str(notes), "--audit-out", str(audit)])
    assert result.exit_code == 0, result.output
    assert read_audit(audit).rows() == [("t-101", 1)]  # the reviewer's ANNOTATION score
    assert pl.read_parquet(notes).sort("feedback_id")["comment"].to_list() == ["short and right", "it is Ottawa", "checked by a reviewer"]
    single = tmp_path / "single"
    result = CliRunner().invoke(app, ["ingest", str(EXAMPLES / "langfuse" / "single" / "trace.json"), "--warehouse", str(single),
                                      "--source", "langfuse"])
    assert result.exit_code == 0, result.output
    assert _summary(single) == {"exposures": 1, "observed": 1, "up": 1, "down": 0}
    assert read_feedback(single)["model_id"].to_list() == ["gpt-4o-2024-08-06"]


# ---------------------------------------------------------------- canonical: dotted mapping paths, epoch times

NESTED_MAPPING = '[fields]\nevent_id = "id"\nevent_time = "ts"\nevent_type = "kind"\nexposure_id = "ctx.exposure"\nuser_id = "extra.metadata.user_id"\n'


def _nested_rows() -> list[dict]:
    base = {"session_id": "s", "prompt_id": "p", "response_id": "r", "model_id": "m"}
    return [
        {"id": "i1", "ts": 1767607200, "kind": "impression", "ctx": {"exposure": "x1"}, "extra": {"metadata": {"user_id": "u-7"}}, **base},
        {"id": "v1", "ts": 1767607260000, "kind": "thumbs_up", "ctx": {"exposure": "x1"}, "extra": {"metadata": {}}, **base},
        {"id": "i2", "ts": 1767607300, "kind": "impression", "ctx": {"exposure": "x2"}, "extra": {"metadata": {}}, **base},
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_mapping_dotted_paths_reach_nested_fields(tmp_path, fmt):
    mapping = tmp_path / "map.toml"
    mapping.write_text(NESTED_MAPPING)
    path = tmp_path / f"logs.{fmt}"
    if fmt == "jsonl":
        _write(path, _nested_rows(), lines=True)
    else:
        pl.DataFrame(_nested_rows()).write_parquet(path)
    run = ingest(IngestConfig(inputs=(str(path),), warehouse=str(tmp_path / "wh"), mapping=str(mapping)))
    # i2 has no extra.metadata.user_id: an impression without user_id; epoch seconds and milliseconds both read.
    assert run["accepted_by_type"] == {"impression": 1, "thumbs_up": 1} and run["rejected"]["missing_field"] == 1
    fb = read_feedback(tmp_path / "wh")
    assert fb.select("exposure_id", "user_id", "observed", "label").rows() == [("x1", "u-7", True, 1)]
    assert read_events(tmp_path / "wh").sort("event_id")["event_time"].dt.epoch("ms").to_list() == [1767607200000, 1767607260000]


@pytest.mark.parametrize("name", ["extra..user_id", "extra.", ".extra", 'extra."x"', "extra.9lives", "a.b'); DROP TABLE t; --"])
def test_hostile_dotted_paths_are_config_errors(tmp_path, name):
    from schemas.errors import ConfigError

    mapping = tmp_path / "map.toml"
    mapping.write_text(f"[fields]\nuser_id = {json.dumps(name)}\n")
    path = _write(tmp_path / "logs.jsonl", _nested_rows(), lines=True)
    with pytest.raises(ConfigError, match="source column name"):
        ingest(IngestConfig(inputs=(str(path),), warehouse=str(tmp_path / "wh"), mapping=str(mapping)))


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[langfuse.categories]\nhelpful = "sideways"\n', "maps to 'sideways'"),
        ('[langfuse]\norganic_sources = ["USER"]\n', "are not Langfuse score sources"),
        ('[langfuse]\norganic_sources = ["api"]\naudit_sources = ["API"]\n', "both organic feedback and a gold label"),
        ('[langsmith]\nvotes = ["x"]\n', "the langsmith table may only hold"),
        ('[langsmith.feedback]\nuser_score = "like"\n', "langsmith.feedback table: 'user_score' maps to 'like'"),
        ('[openai]\ncategories = "up"\n', "the openai table may only hold"),
    ],
)
def test_bad_source_tables_of_the_mapping_fail_cleanly(tmp_path, toml, message):
    from schemas.errors import ConfigError

    mapping = tmp_path / "map.toml"
    mapping.write_text(toml)
    path = _write(tmp_path / "traces.json", _page([_with_ids(t) for t in LF_TRACES], 1, 5, limit=50))
    with pytest.raises(ConfigError, match=message):
        ingest(IngestConfig(inputs=(str(path),), warehouse=str(tmp_path / "wh"), source="langfuse", mapping=str(mapping)))
