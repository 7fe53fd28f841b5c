-- feedback: the feedback table (schemas/feedback.py FeedbackTable), rebuilt from all staged events.
--
-- Grain: one row per exposure (impression).   Key: "exposure_id".
-- Inputs: "all_events" (WH/events/ plus this run's accepted events: one impression per exposure,
-- unique event_id, no orphans). Parameter: $window (INTERVAL), the attribution window W.
-- Resolution rules (README "Resolution rules"):
--   2. a feedback event counts when event_time <= impression_time + W; later ones are "late":
--      ignored for labels, counted in n_late_events.
--   3. the vote is the last in-window thumbs_up / thumbs_down / vote_cleared by event_time, ties
--      broken by the greater event_id; observed = that vote is up or down; label = 1 up, 0 down.
--   4. copied / regenerated / shared = at least one such in-window event.
-- Point-in-time history (only what happened strictly before this impression):
--   user_prior_exposures = the user's impressions with impression_time < this impression_time;
--   user_prior_votes = the user's exposures whose final counted vote is up or down and whose
--     impression and final vote both happened before this impression_time (so votes <= exposures);
--   user_prior_feedback_rate = user_prior_votes / user_prior_exposures, NULL without prior exposures.
-- split: the user's split from the relation "user_splits" (sql/marts/user_splits.sql, run first:
--   balanced in rows, a user of the committed feedback table keeps its split).
-- Portability: DATE_DIFF('microsecond', a, b) is TIMESTAMPDIFF(MICROSECOND, a, b) in Spark.
-- "all_events" is read directly where needed: a CTE over it read three times would be
-- materialised, texts and all. The wide columns (texts) join once, at the end.
WITH impressions AS (
    SELECT "exposure_id", "user_id", "event_time" AS "impression_time"
    FROM "all_events"
    WHERE "event_type" = 'impression'
),

feedback_events AS (
    SELECT
        f."exposure_id",
        f."event_id",
        f."event_type",
        f."event_time",
        CASE WHEN f."event_time" <= i."impression_time" + $window THEN 1 ELSE 0 END AS "in_window"
    FROM "all_events" AS f
    JOIN impressions AS i
        ON i."exposure_id" = f."exposure_id"
    WHERE f."event_type" <> 'impression'
),

channels AS (
    -- One aggregate per exposure (issue 19: was a window over the votes joined back): the final
    -- vote is the in-window vote with the greatest (event_time, event_id), its time the greatest
    -- in-window vote time. ARG_MAX over a STRUCT key is MAX_BY(.., STRUCT(..)) in Spark.
    SELECT
        "exposure_id",
        ARG_MAX("event_type", STRUCT_PACK("t" := "event_time", "id" := "event_id")) FILTER (
            WHERE "in_window" = 1 AND "event_type" IN ('thumbs_up', 'thumbs_down', 'vote_cleared')
        ) AS "final_vote",
        MAX("event_time") FILTER (
            WHERE "in_window" = 1 AND "event_type" IN ('thumbs_up', 'thumbs_down', 'vote_cleared')
        ) AS "final_vote_time",
        MAX(CASE WHEN "in_window" = 1 AND "event_type" = 'copy' THEN 1 ELSE 0 END) AS "copied",
        MAX(CASE WHEN "in_window" = 1 AND "event_type" = 'regenerate' THEN 1 ELSE 0 END) AS "regenerated",
        MAX(CASE WHEN "in_window" = 1 AND "event_type" = 'share' THEN 1 ELSE 0 END) AS "shared",
        SUM("in_window") AS "n_window_feedback",
        SUM(1 - "in_window") AS "n_late_events"
    FROM feedback_events
    GROUP BY "exposure_id"
),

resolved AS (
    SELECT
        i.*,
        COALESCE(c."final_vote" IN ('thumbs_up', 'thumbs_down'), FALSE) AS "observed",
        CASE c."final_vote" WHEN 'thumbs_up' THEN 1 WHEN 'thumbs_down' THEN 0 END AS "label",
        CASE WHEN c."final_vote" IN ('thumbs_up', 'thumbs_down') THEN c."final_vote_time" END AS "final_vote_time",
        COALESCE(c."copied", 0) = 1 AS "copied",
        COALESCE(c."regenerated", 0) = 1 AS "regenerated",
        COALESCE(c."shared", 0) = 1 AS "shared",
        1 + COALESCE(c."n_window_feedback", 0) AS "n_events",
        COALESCE(c."n_late_events", 0) AS "n_late_events",
        u."split",
        u."user_no"
    FROM impressions AS i
    LEFT JOIN channels AS c
        ON c."exposure_id" = i."exposure_id"
    -- The split joins here, on narrow rows, not on the wide output rows (issue 19).
    -- "user_no" numbers the users: the history window partitions on it, an integer, rather than on
    -- the user_id text (issue 19: 8% of the mart on 1M events).
    JOIN (SELECT "user_id", "split", ROW_NUMBER() OVER (ORDER BY "user_id") AS "user_no" FROM user_splits) AS u
        ON u."user_id" = i."user_id"
),

history_points AS (
    -- One stream per user: impressions (is_vote 0) and counted votes (is_vote 1). A vote point sits
    -- at the later of its impression and its vote, so it only counts once both lie in the past.
    SELECT "user_no", "exposure_id", "impression_time" AS "point_time", 0 AS "is_vote"
    FROM resolved
    UNION ALL
    SELECT "user_no", NULL AS "exposure_id", GREATEST("impression_time", "final_vote_time") AS "point_time", 1 AS "is_vote"
    FROM resolved
    WHERE "observed"
),

history AS (
    -- Ordering by (point_time, is_vote) puts votes after impressions at the same instant, so a
    -- running vote sum at an impression counts votes strictly before it; RANK - 1 counts every row
    -- strictly before it, and subtracting the votes leaves the impressions strictly before it.
    -- Both windows share one sort.
    SELECT
        "exposure_id",
        SUM("is_vote") OVER (
            PARTITION BY "user_no" ORDER BY "point_time", "is_vote"
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS "prior_votes",
        RANK() OVER (PARTITION BY "user_no" ORDER BY "point_time", "is_vote") AS "point_rank",
        "is_vote"
    FROM history_points
),

user_history AS (
    SELECT
        "exposure_id",
        CAST("point_rank" - 1 - "prior_votes" AS BIGINT) AS "user_prior_exposures",
        CAST("prior_votes" AS BIGINT) AS "user_prior_votes"
    FROM history
    WHERE "is_vote" = 0
)

SELECT
    r."exposure_id",
    r."user_id",
    i."session_id",
    i."prompt_id",
    i."response_id",
    i."model_id",
    r."impression_time",
    CAST(r."impression_time" AS DATE) AS "impression_date",
    CAST(EXTRACT(HOUR FROM r."impression_time") AS INTEGER) AS "impression_hour",
    CAST(i."position" AS INTEGER) AS "position",
    i."platform",
    i."locale",
    CAST(i."latency_ms" AS DOUBLE) AS "latency_ms",
    i."prompt_text",
    i."response_text",
    CAST(LENGTH(i."response_text") AS BIGINT) AS "response_chars",
    r."observed",
    CAST(r."label" AS TINYINT) AS "label",
    r."copied",
    r."regenerated",
    r."shared",
    COALESCE(i."solicited", FALSE) AS "solicited",
    CASE
        WHEN r."observed"
        THEN GREATEST(0.0, DATE_DIFF('microsecond', r."impression_time", r."final_vote_time") / 1000000.0)
    END AS "feedback_delay_s",
    CAST(r."n_events" AS INTEGER) AS "n_events",
    CAST(r."n_late_events" AS INTEGER) AS "n_late_events",
    h."user_prior_exposures",
    h."user_prior_votes",
    CASE
        WHEN h."user_prior_exposures" > 0
        THEN CAST(h."user_prior_votes" AS DOUBLE) / h."user_prior_exposures"
    END AS "user_prior_feedback_rate",
    r."split"
FROM resolved AS r
JOIN user_history AS h
    ON h."exposure_id" = r."exposure_id"
JOIN "all_events" AS i
    ON i."exposure_id" = r."exposure_id" AND i."event_type" = 'impression'
