-- stg_impression_losers: this run's impressions of an exposure that already has one.
-- REFERENCE ONLY: ingest does not run this file. sql/staging/stg_resolution.sql runs rules 1, 5 and 6 in one
-- query; tests/feedback_etl/test_stg_resolution.py checks that it gives the same rows as the three files here.
--
--
-- Grain: one row per losing impression row of this run.   Key: ("file_index", "row_number").
-- Inputs: "typed_events", "duplicates" (stg_duplicates), "warehouse_events".
-- One exposure has one impression. The winner is the impression already in the warehouse, else
-- this run's earliest by (event_time, event_id). A loser whose content (every column but event_id)
-- equals the winner's only repeats it and is counted as a duplicate ("same_content" true); one that
-- differs is rejected as conflicting_impression (resolution rule 6).
-- Ranking runs on narrow key rows; the wide content (texts) is fetched only for contested exposures.
WITH new_impressions AS (
    SELECT t."file_index", t."row_number", t."exposure_id", t."event_time", t."event_id"
    FROM "typed_events" AS t
    WHERE t."reject_reason" IS NULL
      AND t."event_type" = 'impression'
      AND NOT EXISTS (
          SELECT 1 FROM "duplicates" AS d
          WHERE d."file_index" = t."file_index" AND d."row_number" = t."row_number"
      )
),

keys AS (
    SELECT "exposure_id", "event_time", "event_id", 0 AS "batch_rank", -1 AS "file_index", CAST(-1 AS BIGINT) AS "row_number"
    FROM "warehouse_events"
    WHERE "event_type" = 'impression'
      AND "exposure_id" IN (SELECT "exposure_id" FROM new_impressions)
    UNION ALL
    SELECT "exposure_id", "event_time", "event_id", 1 AS "batch_rank", "file_index", "row_number"
    FROM new_impressions
),

contested AS (
    SELECT "exposure_id"
    FROM keys
    GROUP BY "exposure_id"
    HAVING COUNT(*) > 1
),

ranked AS (
    SELECT
        k.*,
        ROW_NUMBER() OVER (
            PARTITION BY k."exposure_id"
            ORDER BY k."batch_rank", k."event_time", k."event_id"
        ) AS "impression_rank"
    FROM keys AS k
    WHERE k."exposure_id" IN (SELECT "exposure_id" FROM contested)
),

contested_rows AS (
    -- Content of every contested impression, from the warehouse or from this run.
    SELECT
        r."exposure_id", r."impression_rank", r."file_index", r."row_number", r."event_id",
        w."event_time", w."user_id", w."session_id", w."prompt_id", w."response_id", w."model_id",
        w."prompt_text", w."response_text", w."position", w."platform", w."locale", w."latency_ms", w."solicited"
    FROM ranked AS r
    JOIN "warehouse_events" AS w
        ON r."batch_rank" = 0 AND w."event_id" = r."event_id" AND w."event_type" = 'impression'
    UNION ALL
    SELECT
        r."exposure_id", r."impression_rank", r."file_index", r."row_number", r."event_id",
        t."event_time", t."user_id", t."session_id", t."prompt_id", t."response_id", t."model_id",
        t."prompt_text", t."response_text", t."position", t."platform", t."locale", t."latency_ms", t."solicited"
    FROM ranked AS r
    JOIN "typed_events" AS t
        ON r."batch_rank" = 1 AND t."file_index" = r."file_index" AND t."row_number" = r."row_number"
),

winners AS (
    SELECT * FROM contested_rows WHERE "impression_rank" = 1
),

losers AS (
    SELECT * FROM contested_rows WHERE "impression_rank" > 1
)

SELECT
    l."file_index",
    l."row_number",
    l."event_id",
    l."exposure_id",
    (
        l."event_time" IS NOT DISTINCT FROM w."event_time"
        AND l."user_id" IS NOT DISTINCT FROM w."user_id"
        AND l."session_id" IS NOT DISTINCT FROM w."session_id"
        AND l."prompt_id" IS NOT DISTINCT FROM w."prompt_id"
        AND l."response_id" IS NOT DISTINCT FROM w."response_id"
        AND l."model_id" IS NOT DISTINCT FROM w."model_id"
        AND l."prompt_text" IS NOT DISTINCT FROM w."prompt_text"
        AND l."response_text" IS NOT DISTINCT FROM w."response_text"
        AND l."position" IS NOT DISTINCT FROM w."position"
        AND l."platform" IS NOT DISTINCT FROM w."platform"
        AND l."locale" IS NOT DISTINCT FROM w."locale"
        AND l."latency_ms" IS NOT DISTINCT FROM w."latency_ms"
        AND l."solicited" IS NOT DISTINCT FROM w."solicited"
    ) AS "same_content"
FROM losers AS l
JOIN winners AS w
    ON w."exposure_id" = l."exposure_id"
