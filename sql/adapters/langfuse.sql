-- adapters/langfuse: Langfuse public-API exports (traces, scores, observations) -> canonical raw events.
--
-- Grain: one row per canonical event: one impression per trace record, one event per organic score
-- whose name the mapping assigns to a channel (adapters/export_events adds one row per record that
-- is no Langfuse object and numbers the rows of each file). Key: "event_id".
-- Inputs: "langfuse_records" (adapters/langfuse_records), "source_feedback" (adapters/langfuse_feedback).
-- Traces (Trace / TraceWithDetails / TraceWithFullDetails): exposure_id = id, event_time =
-- timestamp, user_id = userId, session_id = sessionId (the trace id when absent), prompt_id = md5 of
-- the input, response_id = id, prompt_text / response_text = input / output (JSON text when they
-- are objects), model_id = the model of the trace's first GENERATION observation (by startTime;
-- observations are records of their own, GET /api/public/observations, or objects in the trace's
-- "observations"), else metadata.model, else any observation's model, version, release, 'unknown'.
-- Scores: only role 'organic' (source API by default) become events. A vote is thumbs_up /
-- thumbs_down by its polarity, else the unknown type 'score:<name>=<value>' (rejected, counted); a
-- copy / regenerate / share score is an event when its polarity is up. The score (comment
-- included) is the row's payload; event_time = the score's timestamp, else its trace's.
-- Rows are numbered per file in input order (record, then impression before scores, then position).
WITH records AS (
    SELECT * FROM "langfuse_records"
),

traces AS (
    SELECT
        "file_index", "source_file", "row_number", "record",
        json_extract_string("record", '$.id') AS "trace_id",
        json_extract_string("record", '$.timestamp') AS "trace_time"
    FROM records
    WHERE "kind" = 'trace'
),

observations AS (
    SELECT
        json_extract_string("record", '$.traceId') AS "trace_id",
        json_extract_string("record", '$.type') AS "type",
        json_extract_string("record", '$.model') AS "model",
        json_extract_string("record", '$.startTime') AS "start_time"
    FROM records
    WHERE "kind" = 'observation'
    UNION ALL
    SELECT
        COALESCE(json_extract_string(o."observation", '$.traceId'), t."trace_id"),
        json_extract_string(o."observation", '$.type'),
        json_extract_string(o."observation", '$.model'),
        json_extract_string(o."observation", '$.startTime')
    FROM traces AS t
    CROSS JOIN UNNEST(CAST(
        CASE WHEN json_type(json_extract(t."record", '$.observations')) = 'ARRAY' THEN json_extract(t."record", '$.observations') ELSE '[]' END
        AS JSON[])) AS o("observation")
    WHERE json_type(o."observation") = 'OBJECT'
),

trace_models AS (
    -- Per trace: the model of the first GENERATION and of the first observation of any type.
    SELECT
        "trace_id",
        MAX(CASE WHEN "is_generation" AND "generation_rank" = 1 THEN "model" END) AS "generation_model",
        MAX(CASE WHEN "any_rank" = 1 THEN "model" END) AS "any_model"
    FROM (
        SELECT
            "trace_id", "model", "type" = 'GENERATION' AS "is_generation",
            ROW_NUMBER() OVER (PARTITION BY "trace_id", "type" = 'GENERATION' ORDER BY "start_time" NULLS LAST, "model") AS "generation_rank",
            ROW_NUMBER() OVER (PARTITION BY "trace_id" ORDER BY "start_time" NULLS LAST, "model") AS "any_rank"
        FROM observations
        WHERE "model" IS NOT NULL AND "trace_id" IS NOT NULL
    ) AS ranked
    GROUP BY "trace_id"
),

trace_times AS (
    SELECT "trace_id", MIN("trace_time") AS "trace_time"
    FROM traces
    GROUP BY "trace_id"
),

impressions AS (
    SELECT
        t."file_index", t."source_file", t."row_number", CAST(0 AS BIGINT) AS "order_in_record",
        'langfuse:' || t."trace_id" || ':impression' AS "event_id",
        t."trace_time" AS "event_time",
        'impression' AS "event_type",
        t."trace_id" AS "exposure_id",
        json_extract_string(t."record", '$.userId') AS "user_id",
        COALESCE(json_extract_string(t."record", '$.sessionId'), t."trace_id") AS "session_id",
        MD5(COALESCE(json_extract_string(t."record", '$.input'), '')) AS "prompt_id",
        t."trace_id" AS "response_id",
        COALESCE(
            m."generation_model",
            json_extract_string(t."record", '$.metadata.model'),
            m."any_model",
            json_extract_string(t."record", '$.version'),
            json_extract_string(t."record", '$.release'),
            'unknown'
        ) AS "model_id",
        json_extract_string(t."record", '$.input') AS "prompt_text",
        json_extract_string(t."record", '$.output') AS "response_text",
        'langfuse' AS "platform",
        CAST(NULL AS VARCHAR) AS "payload",
        TRUE AS "parse_ok"
    FROM traces AS t
    LEFT JOIN trace_models AS m
        ON m."trace_id" = t."trace_id"
),

feedback AS (
    SELECT
        s."file_index", s."source_file", s."row_number", 1 + s."position" AS "order_in_record",
        s."feedback_id" AS "event_id",
        COALESCE(s."feedback_time", tt."trace_time") AS "event_time",
        CASE
            WHEN s."channel" <> 'vote' THEN s."channel"
            WHEN s."polarity" = 'up' THEN 'thumbs_up'
            WHEN s."polarity" = 'down' THEN 'thumbs_down'
            ELSE 'score:' || s."name" || '=' || COALESCE(s."value_text", CAST(s."value" AS VARCHAR), 'null')
        END AS "event_type",
        s."exposure_id",
        CAST(NULL AS VARCHAR) AS "user_id",
        CAST(NULL AS VARCHAR) AS "session_id",
        CAST(NULL AS VARCHAR) AS "prompt_id",
        CAST(NULL AS VARCHAR) AS "response_id",
        CAST(NULL AS VARCHAR) AS "model_id",
        CAST(NULL AS VARCHAR) AS "prompt_text",
        CAST(NULL AS VARCHAR) AS "response_text",
        CAST(NULL AS VARCHAR) AS "platform",
        s."payload",
        TRUE AS "parse_ok"
    FROM "source_feedback" AS s
    LEFT JOIN trace_times AS tt
        ON tt."trace_id" = s."exposure_id"
    WHERE s."role" = 'organic'
      AND s."channel" IS NOT NULL
      AND (s."channel" = 'vote' OR s."polarity" = 'up')
)

-- Impressions and feedback rows; adapters/export_events adds the unparseable records and numbers the rows.
SELECT * FROM impressions
UNION ALL
SELECT * FROM feedback
