-- adapters/export_events: the canonical raw events of an export adapter (langfuse, langsmith,
-- openai-chat), shared by the three so that the numbering and the canonical column list live once.
--
-- Grain: one row per canonical event, plus one row per record that is no object of the source.
-- Key: "event_id"; ("file_index", "row_number") numbers the rows of each file in input order
-- (record, then impression before feedback, then position within the record).
-- Inputs: "adapter_rows" (the adapter's impressions and feedback rows, adapters/<source>),
-- "export_records" (the adapter's records, adapters/<source>_records).
WITH impressions_and_feedback AS (
    SELECT * FROM "adapter_rows"
),
unparseable AS (
    SELECT
        "file_index", "source_file", "row_number", CAST(0 AS BIGINT) AS "order_in_record",
        CAST(NULL AS VARCHAR) AS "event_id", CAST(NULL AS VARCHAR) AS "event_time",
        CAST(NULL AS VARCHAR) AS "event_type", CAST(NULL AS VARCHAR) AS "exposure_id",
        CAST(NULL AS VARCHAR) AS "user_id", CAST(NULL AS VARCHAR) AS "session_id",
        CAST(NULL AS VARCHAR) AS "prompt_id", CAST(NULL AS VARCHAR) AS "response_id",
        CAST(NULL AS VARCHAR) AS "model_id", CAST(NULL AS VARCHAR) AS "prompt_text",
        CAST(NULL AS VARCHAR) AS "response_text", CAST(NULL AS VARCHAR) AS "platform",
        CAST("record" AS VARCHAR) AS "payload",
        FALSE AS "parse_ok"
    FROM "export_records"
    WHERE "kind" = 'unparseable'
),

events AS (
    SELECT * FROM impressions_and_feedback
    UNION ALL
    SELECT * FROM unparseable
)

SELECT
    "file_index", "source_file",
    ROW_NUMBER() OVER (PARTITION BY "file_index" ORDER BY "row_number", "order_in_record", "event_id") AS "row_number",
    "event_id", "event_time", "event_type", "exposure_id", "user_id", "session_id", "prompt_id",
    "response_id", "model_id", "prompt_text", "response_text",
    CAST(NULL AS VARCHAR) AS "position",
    "platform",
    CAST(NULL AS VARCHAR) AS "locale",
    CAST(NULL AS VARCHAR) AS "latency_ms",
    CAST(NULL AS VARCHAR) AS "solicited",
    "payload",
    "parse_ok"
FROM events
