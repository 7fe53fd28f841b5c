-- adapters/langfuse_checks: what a Langfuse run read but could not join, as warnings (issue 18).
--
-- Grain: one row per warning (zero or one today).   Key: "message".
-- Inputs: "langfuse_records" (adapters/langfuse_records), "source_feedback" (adapters/langfuse_feedback).
-- A traces page (TraceWithDetails) lists its scores by id only; ids that no score read in this run
-- carries mean a scores export (or some of its pages) is missing, and those votes would be lost
-- without a word.
WITH listed AS (
    SELECT json_extract_string(s."score_id", '$') AS "score_id"
    FROM "langfuse_records" AS r
    CROSS JOIN UNNEST(CAST(
        CASE WHEN json_type(json_extract(r."record", '$.scores')) = 'ARRAY' THEN json_extract(r."record", '$.scores') ELSE '[]' END
        AS JSON[])) AS s("score_id")
    WHERE r."kind" = 'trace' AND json_type(s."score_id") = 'VARCHAR'
),

unresolved AS (
    SELECT COUNT(DISTINCT l."score_id") AS "n"
    FROM listed AS l
    WHERE NOT EXISTS (SELECT 1 FROM "source_feedback" AS f WHERE f."feedback_id" = l."score_id")
)

SELECT
    CAST("n" AS VARCHAR) || ' score id(s) listed by the traces are in no score read: pass the scores export '
    || '(every page of GET /api/public/scores) in the same run' AS "message"
FROM unresolved
WHERE "n" > 0
