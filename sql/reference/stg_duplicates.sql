-- stg_duplicates: input rows that repeat an event already kept (resolution rule 1).
-- REFERENCE ONLY: ingest does not run this file. sql/staging/stg_resolution.sql runs rules 1, 5 and 6 in one
-- query; tests/feedback_etl/test_stg_resolution.py checks that it gives the same rows as the three files here.
--
--
-- Grain: one row per repeated copy in this run's input.   Key: ("file_index", "row_number").
-- Inputs: "typed_events" (stg_events_typed), "warehouse_events" (events accepted by earlier runs).
-- Rows with the same event_id are one event. The copy kept is the one already in the warehouse,
-- else the first in input order (file, then row); every other copy is a duplicate. Only rows that
-- passed typing take part: a rejected row never shadows a good one.
WITH kept_before AS (
    -- Only ids this run also carries matter; the semi-join keeps the window small on big warehouses.
    SELECT
        "event_id",
        0 AS "batch_rank",
        -1 AS "file_index",
        CAST(-1 AS BIGINT) AS "row_number"
    FROM "warehouse_events"
    WHERE "event_id" IN (SELECT "event_id" FROM "typed_events" WHERE "reject_reason" IS NULL)
),

this_run AS (
    SELECT
        "event_id",
        1 AS "batch_rank",
        "file_index",
        "row_number"
    FROM "typed_events"
    WHERE "reject_reason" IS NULL
),

candidates AS (
    SELECT * FROM kept_before
    UNION ALL
    SELECT * FROM this_run
),

repeated AS (
    -- A hash aggregate finds the few repeated ids; only those get ranked.
    SELECT "event_id"
    FROM candidates
    GROUP BY "event_id"
    HAVING COUNT(*) > 1
),

ranked AS (
    SELECT
        c.*,
        ROW_NUMBER() OVER (
            PARTITION BY c."event_id"
            ORDER BY c."batch_rank", c."file_index", c."row_number"
        ) AS "copy_rank"
    FROM candidates AS c
    WHERE c."event_id" IN (SELECT "event_id" FROM repeated)
)

SELECT
    "file_index",
    "row_number",
    "event_id"
FROM ranked
WHERE "copy_rank" > 1
  AND "batch_rank" = 1
