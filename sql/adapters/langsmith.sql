-- adapters/langsmith: LangSmith runs and feedback exports -> canonical raw events.
--
-- Grain: one row per canonical event: one impression per root run (no parent_run_id), one event
-- per organic feedback whose key the mapping assigns to a channel (adapters/export_events adds one
-- row per record that is neither a run nor feedback and numbers the rows of each file).
-- Key: "event_id".
-- Inputs: "langsmith_records" (adapters/langsmith_records), "source_feedback"
-- (adapters/langsmith_feedback). Parameters: $user_path, $session_path (JSON paths of the run's
-- user and session: the mapping's [fields] user_id / session_id, default extra.metadata.user_id
-- and extra.metadata.session_id).
-- Runs (langsmith-sdk schemas.Run): exposure_id = response_id = id (a root run's id is its
-- trace_id), event_time = start_time, user_id = $user_path, session_id = $session_path, else
-- extra.metadata.thread_id or conversation_id (LangSmith's thread keys), else the trace id;
-- prompt_text / response_text = inputs / outputs as JSON text, prompt_id = md5 of inputs; model_id
-- = extra.metadata.ls_model_name of the root, else of the trace's first llm run (by start_time),
-- else that run's extra.invocation_params.model / model_name, else the root's name.
-- Feedback: a vote is thumbs_up / thumbs_down by its polarity, else the unknown type
-- 'feedback:<key>=<value>' (rejected, counted); a copy / regenerate / share key is an event when
-- up. event_time = created_at, else the run's start_time. The record (comment and correction
-- included) is the row's payload.
WITH records AS (
    SELECT * FROM "langsmith_records"
),

runs AS (
    SELECT
        "file_index", "source_file", "row_number", "record",
        json_extract_string("record", '$.id') AS "run_id",
        COALESCE(json_extract_string("record", '$.trace_id'), json_extract_string("record", '$.id')) AS "trace_id",
        json_extract_string("record", '$.parent_run_id') IS NULL AS "is_root",
        json_extract_string("record", '$.run_type') AS "run_type",
        json_extract_string("record", '$.start_time') AS "start_time",
        COALESCE(
            json_extract_string("record", '$.extra.metadata.ls_model_name'),
            json_extract_string("record", '$.extra.invocation_params.model'),
            json_extract_string("record", '$.extra.invocation_params.model_name')
        ) AS "model"
    FROM records
    WHERE "kind" = 'run'
),

trace_models AS (
    SELECT "trace_id", "model"
    FROM (
        SELECT "trace_id", "model",
               ROW_NUMBER() OVER (PARTITION BY "trace_id" ORDER BY "start_time" NULLS LAST, "run_id") AS "rank"
        FROM runs
        WHERE "run_type" = 'llm' AND "model" IS NOT NULL
    ) AS ranked
    WHERE "rank" = 1
),

run_times AS (
    SELECT "trace_id", MIN("start_time") AS "start_time" FROM runs WHERE "is_root" GROUP BY "trace_id"
),

impressions AS (
    SELECT
        r."file_index", r."source_file", r."row_number", CAST(0 AS BIGINT) AS "order_in_record",
        'langsmith:' || r."run_id" || ':impression' AS "event_id",
        r."start_time" AS "event_time",
        'impression' AS "event_type",
        r."run_id" AS "exposure_id",
        json_extract_string(r."record", $user_path) AS "user_id",
        COALESCE(
            json_extract_string(r."record", $session_path),
            json_extract_string(r."record", '$.extra.metadata.thread_id'),
            json_extract_string(r."record", '$.extra.metadata.conversation_id'),
            r."trace_id"
        ) AS "session_id",
        MD5(COALESCE(json_extract_string(r."record", '$.inputs'), '')) AS "prompt_id",
        r."run_id" AS "response_id",
        COALESCE(json_extract_string(r."record", '$.extra.metadata.ls_model_name'), m."model", json_extract_string(r."record", '$.name'), 'unknown') AS "model_id",
        json_extract_string(r."record", '$.inputs') AS "prompt_text",
        json_extract_string(r."record", '$.outputs') AS "response_text",
        'langsmith' AS "platform",
        CAST(NULL AS VARCHAR) AS "payload",
        TRUE AS "parse_ok"
    FROM runs AS r
    LEFT JOIN trace_models AS m
        ON m."trace_id" = r."trace_id"
    WHERE r."is_root"
),

feedback AS (
    SELECT
        s."file_index", s."source_file", s."row_number", CAST(1 AS BIGINT) AS "order_in_record",
        s."feedback_id" AS "event_id",
        COALESCE(s."feedback_time", rt."start_time") AS "event_time",
        CASE
            WHEN s."channel" <> 'vote' THEN s."channel"
            WHEN s."polarity" = 'up' THEN 'thumbs_up'
            WHEN s."polarity" = 'down' THEN 'thumbs_down'
            ELSE 'feedback:' || s."name" || '=' || COALESCE(s."value_text", CAST(s."value" AS VARCHAR), 'null')
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
    LEFT JOIN run_times AS rt
        ON rt."trace_id" = s."exposure_id"
    WHERE s."role" = 'organic'
      AND s."channel" IS NOT NULL
      AND (s."channel" = 'vote' OR s."polarity" = 'up')
)

-- Impressions and feedback rows; adapters/export_events adds the unparseable records and numbers the rows.
SELECT * FROM impressions
UNION ALL
SELECT * FROM feedback
