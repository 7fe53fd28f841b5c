-- adapters/langsmith_feedback: every LangSmith feedback record read, once, with what it carries.
--
-- Grain: one row per distinct feedback.   Key: "feedback_id" (the feedback id).
-- Inputs: "langsmith_records" (adapters/langsmith_records), "score_channels" (feedback key ->
-- channel), "vote_categories" (lower-cased text -> up | down), "audit_keys" (keys whose score is
-- a gold label).
-- Feedback (langsmith-sdk schemas.Feedback): id, run_id, trace_id, key, score, value, comment,
-- correction, created_at, feedback_source.type. "exposure_id" = the trace (root run) the feedback
-- is about: the trace_id of its run when the run was read, else the feedback's trace_id, else its
-- run_id. "origin" = feedback_source.type ('api' when absent); "role": 'audit' for an audit key,
-- NULL for model feedback (LLM-as-judge), else 'organic'.
-- "polarity": a numeric score > 0 up, <= 0 down; else the text of score (true / false) or value
-- through "vote_categories". "correction" is kept as JSON text.
WITH records AS (
    SELECT * FROM "langsmith_records"
),

runs AS (
    SELECT
        json_extract_string("record", '$.id') AS "run_id",
        COALESCE(json_extract_string("record", '$.trace_id'), json_extract_string("record", '$.id')) AS "trace_id"
    FROM records
    WHERE "kind" = 'run'
),

run_traces AS (
    SELECT "run_id", MIN("trace_id") AS "trace_id" FROM runs GROUP BY "run_id"
),

fields AS (
    SELECT
        f."file_index", f."source_file", f."row_number", f."record",
        json_extract_string(f."record", '$.id') AS "id",
        COALESCE(rt."trace_id", json_extract_string(f."record", '$.trace_id'), json_extract_string(f."record", '$.run_id')) AS "exposure_id",
        json_extract_string(f."record", '$.key') AS "name",
        LOWER(COALESCE(json_extract_string(f."record", '$.feedback_source.type'), 'api')) AS "origin",
        CASE WHEN json_type(json_extract(f."record", '$.score')) IN ('BIGINT', 'UBIGINT', 'DOUBLE')
             THEN TRY_CAST(json_extract_string(f."record", '$.score') AS DOUBLE) END AS "value",
        LOWER(TRIM(COALESCE(
            CASE WHEN json_type(json_extract(f."record", '$.score')) = 'BOOLEAN' THEN json_extract_string(f."record", '$.score') END,
            json_extract_string(f."record", '$.value')
        ))) AS "value_text",
        json_extract_string(f."record", '$.comment') AS "comment",
        CASE WHEN json_type(json_extract(f."record", '$.correction')) NOT IN ('NULL') THEN CAST(json_extract(f."record", '$.correction') AS VARCHAR) END AS "correction",
        json_extract_string(f."record", '$.created_at') AS "feedback_time"
    FROM records AS f
    LEFT JOIN run_traces AS rt
        ON rt."run_id" = json_extract_string(f."record", '$.run_id')
    WHERE f."kind" = 'feedback'
),

deduped AS (
    SELECT *
    FROM (
        SELECT
            *,
            ROW_NUMBER() OVER (
                PARTITION BY COALESCE("id", CAST("file_index" AS VARCHAR) || ':' || CAST("row_number" AS VARCHAR))
                ORDER BY "file_index", "row_number"
            ) AS "copy_rank"
        FROM fields
    ) AS ranked
    WHERE "copy_rank" = 1
)

SELECT
    d."file_index", d."source_file", d."row_number", CAST(0 AS BIGINT) AS "position",
    COALESCE(d."id", d."exposure_id" || ':feedback:' || CAST(d."row_number" AS VARCHAR)) AS "feedback_id",
    d."exposure_id",
    d."name",
    d."origin",
    CASE
        WHEN EXISTS (SELECT 1 FROM "audit_keys" AS a WHERE a."name" = d."name") THEN 'audit'
        WHEN d."origin" = 'model' THEN NULL
        ELSE 'organic'
    END AS "role",
    -- An audit key is a vote by definition: its score is the careful rating of the answer.
    COALESCE(c."channel", CASE WHEN EXISTS (SELECT 1 FROM "audit_keys" AS a WHERE a."name" = d."name") THEN 'vote' END) AS "channel",
    CASE
        WHEN d."value" > 0 THEN 'up'
        WHEN d."value" <= 0 THEN 'down'
        ELSE v."polarity"
    END AS "polarity",
    d."value",
    d."value_text",
    d."comment",
    d."correction",
    d."feedback_time",
    CAST(d."record" AS VARCHAR) AS "payload"
FROM deduped AS d
LEFT JOIN "score_channels" AS c
    ON c."score_name" = d."name"
LEFT JOIN "vote_categories" AS v
    ON v."value" = d."value_text"
