-- stg_resolution: resolution rules 1, 5 and 6 (duplicates, orphans, impression losers) in one query
-- over this run's key columns (issue 19), on both engines. It defines the same rows as the three
-- reference files in sql/reference/ (stg_duplicates, stg_orphans, stg_impression_losers; not run). On Spark, each CTE marked
-- MATERIALIZED is run first and kept (sql_translate.spark_statements): inlined, it was slower there
-- than the three files.
--
-- Grain: one row per input row of this run that a rule takes out.   Key: ("file_index", "row_number").
-- Inputs: "typed_events" (stg_events_typed), "warehouse_events" (events accepted by earlier runs),
-- "typed_content" (every typed column of this run's rows, keyed by file and row: typed_events
-- itself, or, when typed_events holds the key columns only, those joined to the content columns
-- read from the input again; read for the contested impressions only).
-- "rule" is 'duplicate' (rule 1: a repeated event_id; the warehouse copy, else the first in input
-- order, is kept), 'impression_loser' (rule 6: a second impression of an exposure; "same_content"
-- says whether it only repeats the winner's content) or 'orphan' (rule 5: feedback whose exposure
-- has no impression in the warehouse or among this run's accepted impression rows). The views
-- "duplicates", "impression_losers" and "orphans" are this table filtered by "rule".
-- Only the key columns (event_id, exposure_id, event_type, event_time, file and row numbers) are
-- read for every row; the wide content (texts) is read only for contested exposures.
-- Measured on 1M events, one thread (issue 19): 0.46-0.53 CPU s against 0.63-0.77 for the three
-- files; a ROW_NUMBER window over every exposure's rows instead of the aggregate cost 1.1-1.3 s (the
-- sort), and forcing the key CTEs to be materialised cost 0.6 s: DuckDB plans them best inlined.
WITH run_keys AS NOT MATERIALIZED (
    -- This run's accepted rows, key columns only (a projection: typed_events is columnar).
    SELECT "file_index", "row_number", "event_id", "exposure_id", "event_type", "event_time"
    FROM "typed_events"
    WHERE "reject_reason" IS NULL
),

-- Rule 1: a hash aggregate finds the few repeated ids; only those get ranked.
dup_candidates AS (
    SELECT "event_id", 0 AS "batch_rank", -1 AS "file_index", CAST(-1 AS BIGINT) AS "row_number"
    FROM "warehouse_events"
    WHERE "event_id" IN (SELECT "event_id" FROM run_keys)
    UNION ALL
    SELECT "event_id", 1 AS "batch_rank", "file_index", "row_number"
    FROM run_keys
),

repeated AS (
    SELECT "event_id"
    FROM dup_candidates
    GROUP BY "event_id"
    HAVING COUNT(*) > 1
),

duplicates AS MATERIALIZED (
    SELECT "file_index", "row_number", "event_id"
    FROM (
        SELECT
            c.*,
            ROW_NUMBER() OVER (
                PARTITION BY c."event_id"
                ORDER BY c."batch_rank", c."file_index", c."row_number"
            ) AS "copy_rank"
        FROM dup_candidates AS c
        WHERE c."event_id" IN (SELECT "event_id" FROM repeated)
    ) AS ranked
    WHERE "copy_rank" > 1
      AND "batch_rank" = 1
),

-- Rules 5 and 6: one hash aggregate over each exposure's key rows (this run's accepted rows, each
-- flagged as a duplicate or not, and the warehouse impressions of the same exposures):
-- "n_ranked" = its impressions that are not duplicate copies, "known" = it has any impression
-- here or in the warehouse (any accepted impression row counts, also a duplicate copy). Only the
-- rows of contested exposures (n_ranked > 1) and orphans are joined back; the contested ones are
-- ranked by (batch_rank, event_time, event_id): the first wins, the others lose.
exposure_keys AS NOT MATERIALIZED (
    SELECT
        k."file_index", k."row_number", k."event_id", k."exposure_id", k."event_time",
        1 AS "batch_rank",
        k."event_type" = 'impression' AS "is_impression",
        k."event_type" = 'impression' AND d."row_number" IS NULL AS "ranked",
        d."row_number" IS NOT NULL AS "is_duplicate"
    FROM run_keys AS k
    LEFT JOIN duplicates AS d
        ON d."file_index" = k."file_index" AND d."row_number" = k."row_number"
    UNION ALL
    SELECT
        -1 AS "file_index", CAST(-1 AS BIGINT) AS "row_number", "event_id", "exposure_id", "event_time",
        0 AS "batch_rank", TRUE AS "is_impression", TRUE AS "ranked", FALSE AS "is_duplicate"
    FROM "warehouse_events"
    WHERE "event_type" = 'impression'
      AND "exposure_id" IN (SELECT "exposure_id" FROM run_keys)
),

exposure_stats AS (
    SELECT "exposure_id",
           SUM(CASE WHEN "ranked" THEN 1 ELSE 0 END) AS "n_ranked",
           SUM(CASE WHEN "ranked" AND "batch_rank" = 1 THEN 1 ELSE 0 END) AS "n_new_ranked",
           BOOL_OR("is_impression") AS "known"
    FROM exposure_keys
    WHERE "exposure_id" IS NOT NULL
    GROUP BY "exposure_id"
),

flagged AS (
    SELECT e.*
    FROM exposure_keys AS e
    JOIN exposure_stats AS s
        ON s."exposure_id" = e."exposure_id"
    -- Contested: more than one impression, one of them from this run (as stg_impression_losers).
    WHERE (e."ranked" AND s."n_ranked" > 1 AND s."n_new_ranked" > 0)
       OR (NOT s."known" AND NOT e."is_impression" AND NOT e."is_duplicate")
),

outcomes AS MATERIALIZED (
    SELECT
        "file_index", "row_number", "event_id", "exposure_id", "batch_rank",
        CASE
            WHEN NOT "ranked" THEN 'orphan'
            WHEN ROW_NUMBER() OVER (
                PARTITION BY "exposure_id", "ranked" ORDER BY "batch_rank", "event_time", "event_id"
            ) = 1 THEN 'winner'
            ELSE 'impression_loser'
        END AS "rule"
    FROM flagged
),

contested_rows AS (
    -- Content of every contested impression, from the warehouse or from this run.
    SELECT
        r."exposure_id", r."rule", r."file_index", r."row_number", r."event_id",
        w."event_time", w."user_id", w."session_id", w."prompt_id", w."response_id", w."model_id",
        w."prompt_text", w."response_text", w."position", w."platform", w."locale", w."latency_ms", w."solicited"
    FROM outcomes AS r
    JOIN "warehouse_events" AS w
        ON r."batch_rank" = 0 AND w."event_id" = r."event_id" AND w."event_type" = 'impression'
    WHERE r."rule" IN ('winner', 'impression_loser')
    UNION ALL
    SELECT
        r."exposure_id", r."rule", r."file_index", r."row_number", r."event_id",
        t."event_time", t."user_id", t."session_id", t."prompt_id", t."response_id", t."model_id",
        t."prompt_text", t."response_text", t."position", t."platform", t."locale", t."latency_ms", t."solicited"
    FROM outcomes AS r
    JOIN "typed_content" AS t
        ON r."batch_rank" = 1 AND t."file_index" = r."file_index" AND t."row_number" = r."row_number"
    WHERE r."rule" IN ('winner', 'impression_loser')
),

losers AS (
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
    FROM contested_rows AS l
    JOIN contested_rows AS w
        ON w."exposure_id" = l."exposure_id" AND w."rule" = 'winner'
    WHERE l."rule" = 'impression_loser'
)

SELECT "file_index", "row_number", "event_id", CAST(NULL AS VARCHAR) AS "exposure_id",
       'duplicate' AS "rule", CAST(NULL AS BOOLEAN) AS "same_content"
FROM duplicates
UNION ALL
SELECT "file_index", "row_number", "event_id", "exposure_id", 'impression_loser' AS "rule", "same_content"
FROM losers
UNION ALL
SELECT "file_index", "row_number", "event_id", "exposure_id", 'orphan' AS "rule", CAST(NULL AS BOOLEAN) AS "same_content"
FROM outcomes
WHERE "rule" = 'orphan'
