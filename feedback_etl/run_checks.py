"""No silent zero (issue 18): judge a finished ingest run before it is committed.

A run that reads rows but accepts none (and finds no copy of an event the warehouse already holds)
is refused with one line naming the likely cause, and nothing is written; so is a run after which
the warehouse holds no exposure at all. ``allow_empty`` (``--allow-empty``) lets scripted runs
that expect nothing commit anyway. Two outcomes are warnings, kept in the run's manifest record
under ``warnings`` and printed by the CLI (exit code 0): exposures exist but none is observed, and
more than half of one file's rows were rejected for one reason.
"""

from __future__ import annotations

from schemas.errors import EmptyIngestError

# The likely cause of each reject reason, phrased as what to check.
_CAUSES: dict[str, str] = {
    "unparseable_row": "rows are not records of this --source (check --source and the file format)",
    "missing_field": "a required field is absent (rename it in the [fields] table of a --mapping file, a dotted path "
    "such as extra.metadata.user_id reaches nested keys, or pick the right --source)",
    "bad_timestamp": "event_time is neither ISO-8601 nor epoch seconds / milliseconds (map the right field as event_time)",
    "unknown_event_type": "event types are not canonical (map them in the [event_types] table of a --mapping file)",
    "orphan_feedback": "feedback names exposures without an impression (ingest the impressions / traces / runs too)",
    "conflicting_impression": "impressions repeat an exposure_id with different content",
    "bad_value": "position, latency_ms or solicited hold values of the wrong type",
}
# Per source: why feedback may all be missing although exposures were read.
_NOT_OBSERVED_HINTS: dict[str, str] = {
    "langfuse": "traces from GET /api/public/traces list score ids only: pass the scores export (GET /api/public/scores) "
    "in the same run, and name the feedback scores in [langfuse.scores] (default: user-feedback, source API)",
    "langsmith": "pass the feedback export with the runs, and name the vote keys in [langsmith.feedback] (default: user_score, thumbs)",
    "openai-chat": "pass the feedback file (completion_id, rating) with the completions",
}
_CATEGORY_TABLES = {"langfuse": "langfuse.categories", "langsmith": "langsmith.categories", "openai-chat": "openai.categories"}
HALF = 0.5


def check_run(record: dict, *, source: str, allow_empty: bool, rejected_by_file: dict[str, dict[str, int]],
              reject_details: dict[str, str]) -> list[str]:
    """Warnings for a run's manifest record; raise when the run is empty (unless ``allow_empty``).

    Parameters
    ----------
    record : the run's record: counts (``rows_read``, ``accepted``, ``duplicates``, ``rejected``,
        ``accepted_by_type``), ``feedback`` summary and ``files`` (with ``rows_read`` per file).
    rejected_by_file : source file -> reject reason -> rows.
    reject_details : reject reason -> one example detail.

    Raises
    ------
    EmptyIngestError : rows were read but nothing accepted, or the warehouse has no exposure.
    """
    warnings: list[str] = []
    read_files = [e for e in record.get("files", []) if e.get("status") == "ingested"]
    if not read_files:
        return warnings  # every file was skipped as already ingested: a no-op, not an empty run
    feedback = record.get("feedback") or {}
    exposures = int(feedback.get("exposures") or 0)
    problem = None
    if record["accepted"] + record["duplicates"] == 0:
        problem = f"no event accepted from {record['rows_read']:,} rows read" + _cause(record, reject_details)
    elif exposures == 0:
        problem = "no impression accepted and the warehouse holds no exposure" + _cause(record, reject_details)
    if problem is not None:
        if not allow_empty:
            raise EmptyIngestError(
                problem,
                where=", ".join(e["path"] for e in read_files[:3]) + (" ..." if len(read_files) > 3 else ""),
                fix="fix the cause named and run again (nothing was written), or pass --allow-empty when an empty run is expected",
            )
        warnings.append(problem + " (--allow-empty)")
    if exposures and not feedback.get("observed"):
        hint = _NOT_OBSERVED_HINTS.get(source, "no feedback event matched an impression: check the feedback rows' exposure_id")
        warnings.append(f"the warehouse has {exposures:,} exposures but none observed; {hint}")
    for entry in read_files:
        rows = int(entry.get("rows_read") or 0)
        for reason, n in sorted(rejected_by_file.get(entry["path"], {}).items(), key=lambda kv: -kv[1]):
            if rows and n > HALF * rows:
                detail = reject_details.get(reason)
                warnings.append(
                    f"{entry['path']}: {n:,} of {rows:,} rows rejected as {reason}"
                    + (f" (e.g. {detail})" if detail else "") + f"; likely cause: {_likely_cause(reason, source)}"
                )
    return warnings


def _cause(record: dict, reject_details: dict[str, str]) -> str:
    rejected = {k: v for k, v in record.get("rejected", {}).items() if v}
    if not rejected:
        return ": the input holds no rows (or no record this --source reads)"
    reason, n = max(rejected.items(), key=lambda kv: kv[1])
    detail = reject_details.get(reason)
    return (
        f": {n:,} rejected as {reason}" + (f" (e.g. {detail})" if detail else "")
        + f"; likely cause: {_likely_cause(reason, record.get('source'))}"
    )


def _likely_cause(reason: str, source: str | None) -> str:
    if reason == "unknown_event_type" and source in _CATEGORY_TABLES:
        return f"vote values read as neither up nor down (map them in the [{_CATEGORY_TABLES[source]}] table of a --mapping file)"
    return _CAUSES.get(reason, reason)
