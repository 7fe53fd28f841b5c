-- stg_late_events: how many of this run's accepted feedback events fall after their exposure's
-- attribution window (resolution rule 2), for the run manifest.
--
-- Grain: one row.   Key: none (a single count).
-- Inputs: "new_events" (stg_new_events), "all_events" (warehouse plus this run). Parameter: $window.
WITH impressions AS (
    SELECT "exposure_id", "event_time" AS "impression_time"
    FROM "all_events"
    WHERE "event_type" = 'impression'
)

SELECT COUNT(*) AS "late_events"
FROM "new_events" AS f
JOIN impressions AS i
    ON i."exposure_id" = f."exposure_id"
WHERE f."event_type" <> 'impression'
  AND f."event_time" > i."impression_time" + $window
