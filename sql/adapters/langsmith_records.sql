-- adapters/langsmith_records: every LangSmith export object read, with the kind it is.
--
-- Grain: one row per source record.   Key: ("file_index", "row_number").
-- Inputs: "source_records" (one JSON object per record: JSON Lines, a JSON array, or one object).
-- Kinds, by the fields langsmith-sdk's schemas require (python/langsmith/schemas.py): 'feedback'
-- (Feedback: key, with run_id or trace_id), 'run' (Run: id with run_type, or with start_time and
-- inputs), else 'unparseable' (not a JSON object, or neither kind).
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
        WHEN json_exists("record", '$.key') AND (json_exists("record", '$.run_id') OR json_exists("record", '$.trace_id')) THEN 'feedback'
        WHEN json_exists("record", '$.id') AND (
            json_exists("record", '$.run_type') OR (json_exists("record", '$.start_time') AND json_exists("record", '$.inputs'))
        ) THEN 'run'
        ELSE 'unparseable'
    END AS "kind"
FROM objects
