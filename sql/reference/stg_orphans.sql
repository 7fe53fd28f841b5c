-- stg_orphans: this run's feedback events whose exposure has no impression (resolution rule 5).
-- REFERENCE ONLY: ingest does not run this file. sql/staging/stg_resolution.sql runs rules 1, 5 and 6 in one
-- query; tests/feedback_etl/test_stg_resolution.py checks that it gives the same rows as the three files here.
--
--
-- Grain: one row per orphan feedback row.   Key: ("file_index", "row_number").
-- Inputs: "typed_events", "duplicates", "warehouse_events".
-- An exposure is known when the warehouse or this run holds an impression for it (any accepted
-- impression row counts, also one that later loses as a repeat or conflict: its exposure exists).
-- Orphans are rejected for good: a later run that brings the impression does not resurrect them;
-- re-ingesting their file with --force does.
WITH new_feedback AS (
    SELECT t."file_index", t."row_number", t."event_id", t."exposure_id"
    FROM "typed_events" AS t
    WHERE t."reject_reason" IS NULL
      AND t."event_type" <> 'impression'
      AND NOT EXISTS (
          SELECT 1 FROM "duplicates" AS d
          WHERE d."file_index" = t."file_index" AND d."row_number" = t."row_number"
      )
),

known_exposures AS (
    SELECT "exposure_id" FROM "warehouse_events" WHERE "event_type" = 'impression'
    UNION
    SELECT "exposure_id" FROM "typed_events" WHERE "reject_reason" IS NULL AND "event_type" = 'impression'
)

SELECT
    f."file_index",
    f."row_number",
    f."event_id",
    f."exposure_id"
FROM new_feedback AS f
WHERE NOT EXISTS (
    SELECT 1 FROM known_exposures AS k WHERE k."exposure_id" = f."exposure_id"
)
