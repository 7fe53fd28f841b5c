-- adapters/langfuse_records: every Langfuse API object read, with the kind it is.
--
-- Grain: one row per source record.   Key: ("file_index", "row_number").
-- Inputs: "source_records" (one JSON object per record: the items of API pages ("data" + "meta"),
-- of JSON arrays, single objects, or JSON Lines).
-- Kinds, told apart by the fields the public API's schemas require (langfuse-python, langfuse/api/
-- commons/types): 'observation' (Observation / ObservationsView: startTime and type), 'score'
-- (Score / ScoreV1 / GetScoresResponseData: dataType, or traceId with name), 'trace' (Trace,
-- TraceWithDetails, TraceWithFullDetails: id and timestamp, no traceId), else 'unparseable' (not a
-- JSON object, or an object of none of these kinds).
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
        WHEN json_exists("record", '$.startTime') AND json_exists("record", '$.type') THEN 'observation'
        WHEN json_exists("record", '$.dataType') OR (json_exists("record", '$.traceId') AND json_exists("record", '$.name')) THEN 'score'
        WHEN json_exists("record", '$.id') AND json_exists("record", '$.timestamp') THEN 'trace'
        ELSE 'unparseable'
    END AS "kind"
FROM objects
