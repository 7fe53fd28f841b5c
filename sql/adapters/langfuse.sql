-- adapters/langfuse: Langfuse traces with their scores (exported as JSON) -> canonical raw events.
--
-- Grain: one row per canonical event: one impression per trace, one event per score whose name
-- the mapping assigns to a channel (vote, copy, regenerate, share). Key: "event_id".
-- Inputs: "source_records" (one trace object per record), "score_channels" (score_name ->
-- channel; default "user-feedback" -> vote). Scores with other names are not feedback and are
-- skipped (counted in the manifest as source rows, not as events).
-- Mapping: exposure_id = trace id, event_time = trace timestamp, user_id = userId, session_id =
-- sessionId (the trace id when absent), prompt_id = md5 of the input, response_id = trace id,
-- model_id = metadata.model, else the first observation's model, else version, release, 'unknown';
-- prompt_text / response_text = input / output (JSON text when they are objects).
-- A vote score is thumbs_up when its value is > 0 or its text is true / up / thumbs_up / positive,
-- thumbs_down when the value is <= 0 or the text is false / down / thumbs_down / negative; any
-- other value becomes an unknown event type and is rejected. Score time defaults to the trace's.
-- Portability: UNNEST ... WITH ORDINALITY over a JSON array is DuckDB's spelling (Spark: POSEXPLODE).
WITH traces AS (
    SELECT
        "file_index", "source_file", "row_number", "record",
        COALESCE(CASE WHEN "parse_ok" THEN json_type("record") = 'OBJECT' END, FALSE) AS "parse_ok"
    FROM "source_records"
),

parsed AS (
    SELECT
        "file_index", "source_file", "row_number", "record",
        json_extract_string("record", '$.id') AS "trace_id",
        json_extract_string("record", '$.timestamp') AS "trace_time",
        json_extract_string("record", '$.userId') AS "user_id",
        json_extract_string("record", '$.sessionId') AS "session_id",
        json_extract_string("record", '$.input') AS "input_text",
        json_extract_string("record", '$.output') AS "output_text",
        COALESCE(
            json_extract_string("record", '$.metadata.model'),
            json_extract_string("record", '$.observations[0].model'),
            json_extract_string("record", '$.version'),
            json_extract_string("record", '$.release'),
            'unknown'
        ) AS "model_id"
    FROM traces
    WHERE "parse_ok"
),

impressions AS (
    SELECT
        "file_index", "source_file", "row_number",
        'langfuse:' || "trace_id" || ':impression' AS "event_id",
        "trace_time" AS "event_time",
        'impression' AS "event_type",
        "trace_id" AS "exposure_id",
        "user_id",
        COALESCE("session_id", "trace_id") AS "session_id",
        MD5(COALESCE("input_text", '')) AS "prompt_id",
        "trace_id" AS "response_id",
        "model_id",
        "input_text" AS "prompt_text",
        "output_text" AS "response_text",
        CAST(NULL AS VARCHAR) AS "position",
        'langfuse' AS "platform",
        CAST(NULL AS VARCHAR) AS "locale",
        CAST(NULL AS VARCHAR) AS "latency_ms",
        CAST(NULL AS VARCHAR) AS "solicited",
        CAST(NULL AS VARCHAR) AS "payload",
        TRUE AS "parse_ok"
    FROM parsed
),

scores AS (
    SELECT
        p."file_index", p."source_file", p."row_number", p."trace_id", p."trace_time",
        s."score", s."score_position",
        json_extract_string(s."score", '$.name') AS "score_name",
        TRY_CAST(json_extract_string(s."score", '$.value') AS DOUBLE) AS "score_value",
        LOWER(COALESCE(json_extract_string(s."score", '$.stringValue'), json_extract_string(s."score", '$.value'))) AS "score_text"
    FROM parsed AS p
    CROSS JOIN UNNEST(CAST(COALESCE(json_extract(p."record", '$.scores'), '[]') AS JSON[])) WITH ORDINALITY AS s("score", "score_position")
    WHERE json_type(s."score") = 'OBJECT'
),

feedback AS (
    SELECT
        s."file_index", s."source_file", s."row_number",
        COALESCE(
            json_extract_string(s."score", '$.id'),
            s."trace_id" || ':score:' || CAST(s."score_position" AS VARCHAR)
        ) AS "event_id",
        COALESCE(json_extract_string(s."score", '$.timestamp'), s."trace_time") AS "event_time",
        CASE
            WHEN c."channel" <> 'vote' THEN c."channel"
            WHEN s."score_value" > 0 OR s."score_text" IN ('true', 'up', 'thumbs_up', 'positive') THEN 'thumbs_up'
            WHEN s."score_value" <= 0 OR s."score_text" IN ('false', 'down', 'thumbs_down', 'negative') THEN 'thumbs_down'
            ELSE 'score:' || s."score_name" || '=' || COALESCE(s."score_text", 'null')
        END AS "event_type",
        s."trace_id" AS "exposure_id",
        CAST(NULL AS VARCHAR) AS "user_id",
        CAST(NULL AS VARCHAR) AS "session_id",
        CAST(NULL AS VARCHAR) AS "prompt_id",
        CAST(NULL AS VARCHAR) AS "response_id",
        CAST(NULL AS VARCHAR) AS "model_id",
        CAST(NULL AS VARCHAR) AS "prompt_text",
        CAST(NULL AS VARCHAR) AS "response_text",
        CAST(NULL AS VARCHAR) AS "position",
        CAST(NULL AS VARCHAR) AS "platform",
        CAST(NULL AS VARCHAR) AS "locale",
        CAST(NULL AS VARCHAR) AS "latency_ms",
        CAST(NULL AS VARCHAR) AS "solicited",
        CAST(s."score" AS VARCHAR) AS "payload",
        TRUE AS "parse_ok"
    FROM scores AS s
    JOIN "score_channels" AS c
        ON c."score_name" = s."score_name"
),

unparseable AS (
    SELECT
        "file_index", "source_file", "row_number",
        CAST(NULL AS VARCHAR) AS "event_id", CAST(NULL AS VARCHAR) AS "event_time",
        CAST(NULL AS VARCHAR) AS "event_type", CAST(NULL AS VARCHAR) AS "exposure_id",
        CAST(NULL AS VARCHAR) AS "user_id", CAST(NULL AS VARCHAR) AS "session_id",
        CAST(NULL AS VARCHAR) AS "prompt_id", CAST(NULL AS VARCHAR) AS "response_id",
        CAST(NULL AS VARCHAR) AS "model_id", CAST(NULL AS VARCHAR) AS "prompt_text",
        CAST(NULL AS VARCHAR) AS "response_text", CAST(NULL AS VARCHAR) AS "position",
        CAST(NULL AS VARCHAR) AS "platform", CAST(NULL AS VARCHAR) AS "locale",
        CAST(NULL AS VARCHAR) AS "latency_ms", CAST(NULL AS VARCHAR) AS "solicited",
        CAST("record" AS VARCHAR) AS "payload",
        FALSE AS "parse_ok"
    FROM traces
    WHERE NOT "parse_ok"
)

SELECT * FROM impressions
UNION ALL
SELECT * FROM feedback
UNION ALL
SELECT * FROM unparseable
