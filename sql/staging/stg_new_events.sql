-- stg_new_events: the events this run adds to WH/events/ (staged, typed, de-duplicated).
--
-- Grain: one row per accepted event.   Key: "event_id" (unique across the whole warehouse).
-- Inputs: "typed_events", "duplicates", "impression_losers", "orphans".
-- Accepted = typed without a reject reason, and not a duplicate copy (rule 1), not a losing
-- impression (rule 6) and not orphan feedback (rule 5). Late events are accepted: the window
-- (rule 2) is applied when the feedback table is built, so a later run can use another window.
-- "source_file" and "row_number" keep each event's lineage.
SELECT
    t."event_id",
    t."event_time",
    t."event_type",
    t."exposure_id",
    t."user_id",
    t."session_id",
    t."prompt_id",
    t."response_id",
    t."model_id",
    t."prompt_text",
    t."response_text",
    t."position",
    t."platform",
    t."locale",
    t."latency_ms",
    t."solicited",
    t."source_file",
    t."row_number"
FROM "typed_events" AS t
WHERE t."reject_reason" IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM "duplicates" AS d
      WHERE d."file_index" = t."file_index" AND d."row_number" = t."row_number"
  )
  AND NOT EXISTS (
      SELECT 1 FROM "impression_losers" AS l
      WHERE l."file_index" = t."file_index" AND l."row_number" = t."row_number"
  )
  AND NOT EXISTS (
      SELECT 1 FROM "orphans" AS o
      WHERE o."file_index" = t."file_index" AND o."row_number" = t."row_number"
  )
