-- adapters/langfuse_feedback: every Langfuse score read, once, with the feedback it carries.
--
-- Grain: one row per distinct score.   Key: "feedback_id" (the score id).
-- Inputs: "langfuse_records" (adapters/langfuse_records), "score_channels" (score name -> channel),
-- "vote_categories" (lower-cased text value -> up | down), "score_roles" (score source -> organic
-- | audit).
-- A score is a record of its own (GET /api/public/scores: GetScoresResponseData) or an object in a
-- trace's "scores" (GET /api/public/traces/ID: TraceWithFullDetails.scores, ScoreV1); a trace
-- page's score ids (TraceWithDetails.scores, strings) carry nothing and are joined through the
-- scores export instead. A score read twice (exported and embedded) is one row, the first in input
-- order (file, record, position in the trace). "exposure_id" = traceId, else the embedding trace.
-- "origin" = source (API, ANNOTATION, EVAL; API when absent); "role" from "score_roles" (NULL:
-- neither organic feedback nor a gold label, e.g. EVAL by default).
-- "polarity": BOOLEAN value 1 up, 0 down; NUMERIC (or a number without dataType) > 0 up, <= 0
-- down; CATEGORICAL (or text without dataType) through "vote_categories"; NULL otherwise (TEXT,
-- CORRECTION, an unmapped category).
-- Portability: UNNEST ... WITH ORDINALITY over a JSON array is DuckDB's spelling (Spark: POSEXPLODE).
WITH records AS (
    SELECT * FROM "langfuse_records"
),

read AS (
    SELECT "file_index", "source_file", "row_number", CAST(0 AS BIGINT) AS "position", "record" AS "score",
           CAST(NULL AS VARCHAR) AS "parent_trace_id"
    FROM records
    WHERE "kind" = 'score'
    UNION ALL
    SELECT r."file_index", r."source_file", r."row_number", CAST(s."position" AS BIGINT), s."score",
           json_extract_string(r."record", '$.id')
    FROM records AS r
    CROSS JOIN UNNEST(CAST(
        CASE WHEN json_type(json_extract(r."record", '$.scores')) = 'ARRAY' THEN json_extract(r."record", '$.scores') ELSE '[]' END
        AS JSON[])) WITH ORDINALITY AS s("score", "position")
    WHERE r."kind" = 'trace' AND json_type(s."score") = 'OBJECT'
),

fields AS (
    SELECT
        "file_index", "source_file", "row_number", "position", "score",
        json_extract_string("score", '$.id') AS "score_id",
        COALESCE(json_extract_string("score", '$.traceId'), "parent_trace_id") AS "trace_id",
        json_extract_string("score", '$.name') AS "name",
        UPPER(COALESCE(json_extract_string("score", '$.source'), 'API')) AS "origin",
        UPPER(json_extract_string("score", '$.dataType')) AS "data_type",
        TRY_CAST(json_extract_string("score", '$.value') AS DOUBLE) AS "value",
        LOWER(TRIM(COALESCE(
            json_extract_string("score", '$.stringValue'),
            CASE WHEN json_type(json_extract("score", '$.value')) = 'VARCHAR' THEN json_extract_string("score", '$.value') END
        ))) AS "value_text",
        json_extract_string("score", '$.comment') AS "comment",
        json_extract_string("score", '$.timestamp') AS "feedback_time"
    FROM read
),

deduped AS (
    SELECT *
    FROM (
        SELECT
            *,
            ROW_NUMBER() OVER (
                PARTITION BY COALESCE("score_id", CAST("file_index" AS VARCHAR) || ':' || CAST("row_number" AS VARCHAR) || ':' || CAST("position" AS VARCHAR))
                ORDER BY "file_index", "row_number", "position"
            ) AS "copy_rank"
        FROM fields
    ) AS ranked
    WHERE "copy_rank" = 1
)

SELECT
    d."file_index", d."source_file", d."row_number", d."position",
    COALESCE(d."score_id", d."trace_id" || ':score:' || CAST(d."position" AS VARCHAR)) AS "feedback_id",
    d."trace_id" AS "exposure_id",
    d."name",
    d."origin",
    r."role",
    c."channel",
    CASE
        WHEN d."data_type" = 'BOOLEAN' THEN CASE WHEN d."value" = 1 THEN 'up' WHEN d."value" = 0 THEN 'down' ELSE v."polarity" END
        WHEN d."data_type" = 'NUMERIC' OR (d."data_type" IS NULL AND d."value" IS NOT NULL) THEN
            CASE WHEN d."value" > 0 THEN 'up' WHEN d."value" <= 0 THEN 'down' END
        WHEN d."data_type" = 'CATEGORICAL' OR d."data_type" IS NULL THEN v."polarity"
    END AS "polarity",
    d."value",
    d."value_text",
    d."comment",
    CAST(NULL AS VARCHAR) AS "correction",
    d."feedback_time",
    CAST(d."score" AS VARCHAR) AS "payload"
FROM deduped AS d
LEFT JOIN "score_channels" AS c
    ON c."score_name" = d."name"
LEFT JOIN "score_roles" AS r
    ON r."origin" = d."origin"
LEFT JOIN "vote_categories" AS v
    ON v."value" = d."value_text"
