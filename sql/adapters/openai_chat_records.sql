-- adapters/openai_chat_records: every OpenAI-style chat-log object read, with the kind it is.
--
-- Grain: one row per source record.   Key: ("file_index", "row_number").
-- Inputs: "source_records" (one JSON object per record: JSON Lines, a JSON array, or one object).
-- Kinds: 'feedback' (a feedback row: completion_id), 'completion' (a stored chat completion,
-- openai-python types/chat ChatCompletion: id, created, model, choices, plus the request's
-- messages, metadata and user; or a transcript: id and messages without choices), else
-- 'unparseable' (not a JSON object, or neither kind).
WITH objects AS (
    SELECT
        "file_index", "source_file", "row_number", "record",
        COALESCE(CASE WHEN "parse_ok" AND json_valid("record") THEN json_type("record") = 'OBJECT' END, FALSE) AS "is_object"
    FROM "source_records"
)

SELECT
    "file_index", "source_file", "row_number", "record",
    CASE
        WHEN NOT "is_object" THEN 'unparseable'
        WHEN json_exists("record", '$.completion_id') THEN 'feedback'
        WHEN json_exists("record", '$.id') AND (json_exists("record", '$.choices') OR json_exists("record", '$.messages')) THEN 'completion'
        ELSE 'unparseable'
    END AS "kind"
FROM objects
