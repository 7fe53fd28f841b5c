-- stg_rejects: every input row of this run that was not accepted, with its reason code.
--
-- Grain: one row per rejected input row.   Key: ("source_file", "row_number") within a run.
-- Inputs: "typed_events", "impression_losers", "orphans". Parameter: $run_id.
-- "payload" is the raw input row as JSON text (the JSONL line itself, or the Parquet/CSV row as a
-- JSON object). Rows rejected after typing (conflicting_impression, orphan_feedback) carry their
-- typed canonical columns instead, rebuilt here.
-- Portability: STRUCT_PACK is DuckDB's name; Spark SQL spells it NAMED_STRUCT (sqlglot translates).
WITH typing_rejects AS (
    SELECT
        "source_file", "row_number", "reject_reason" AS "reason", "reject_detail" AS "detail",
        "event_id", "exposure_id", "payload"
    FROM "typed_events"
    WHERE "reject_reason" IS NOT NULL
),

late_rejects AS (
    SELECT t.*, 'conflicting_impression' AS "reason",
           'exposure_id already has an impression with different content' AS "detail"
    FROM "typed_events" AS t
    JOIN "impression_losers" AS l
        ON l."file_index" = t."file_index" AND l."row_number" = t."row_number"
    WHERE NOT l."same_content"
    UNION ALL
    SELECT t.*, 'orphan_feedback' AS "reason",
           'no impression with this exposure_id in the warehouse or this run' AS "detail"
    FROM "typed_events" AS t
    JOIN "orphans" AS o
        ON o."file_index" = t."file_index" AND o."row_number" = t."row_number"
),

rebuilt AS (
    SELECT
        "source_file", "row_number", "reason", "detail", "event_id", "exposure_id",
        TO_JSON(STRUCT_PACK(
            "event_id" := "event_id",
            "event_time" := CAST("event_time" AS VARCHAR),
            "event_type" := "event_type",
            "exposure_id" := "exposure_id",
            "user_id" := "user_id",
            "session_id" := "session_id",
            "prompt_id" := "prompt_id",
            "response_id" := "response_id",
            "model_id" := "model_id",
            "prompt_text" := "prompt_text",
            "response_text" := "response_text",
            "position" := "position",
            "platform" := "platform",
            "locale" := "locale",
            "latency_ms" := "latency_ms",
            "solicited" := "solicited"
        )) AS "payload"
    FROM late_rejects
)

SELECT CAST($run_id AS VARCHAR) AS "run_id", "source_file", "row_number", "reason", "detail",
       "event_id", "exposure_id", CAST("payload" AS VARCHAR) AS "payload"
FROM typing_rejects
UNION ALL
SELECT CAST($run_id AS VARCHAR) AS "run_id", "source_file", "row_number", "reason", "detail",
       "event_id", "exposure_id", CAST("payload" AS VARCHAR) AS "payload"
FROM rebuilt
