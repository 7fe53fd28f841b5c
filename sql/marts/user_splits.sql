-- user_splits: each user's split of the feedback table (train / val / test), built before the mart.
--
-- Grain: one row per user with an impression in "all_events".   Key: "user_id".
-- Inputs: "all_events" (impressions only); "previous_splits" ("user_id", "split"): the users of the
-- warehouse's committed feedback table and their split (empty on a first run; registered by
-- feedback_etl.ingest / spark_ingest).
-- Rules (issue 15 item 6; docs/data-contract.md, "split"):
--   1. a user of the committed feedback table keeps its split: re-ingests, --force reruns and
--      window changes never move a user (nor do its new exposures);
--   2. the other (new) users are ordered by md5(user_id) (then user_id) and laid end to end on a
--      circle of circumference 2 * (their exposure count); a user's point is the middle of its own
--      rows, m = 2 * (rows of the users before it) + (its rows), shifted by an offset drawn from
--      the new users' hashes (systematic sampling with a random start, so a run adding one user
--      does not always put it in train). At u = point / circumference in [0, 1): u < 0.8 train,
--      u < 0.9 val, else test. The new users' rows go 80 / 10 / 10 up to one user at each of the
--      three boundaries, each split a contiguous range of the hash order (heavy users no longer
--      make the split uneven in rows, as md5(user_id) mod 10 did).
-- Exact integer arithmetic (same answer on DuckDB and Spark): with C = 2 * total rows and the
-- offset o = 24 bits of md5(smallest new user's md5), U = (m * 2^24 + o * C) mod (C * 2^24) and
-- u < 0.8 reads 10 * U < 8 * C * 2^24 (BIGINT: up to ~2.7e10 exposures).
-- Portability: the hex cast CAST('0x..' AS BIGINT) is CONV(.., 16, 10) on Spark (sql_translate).
WITH user_rows AS (
    SELECT "user_id", COUNT(*) AS "n_rows"
    FROM "all_events"
    WHERE "event_type" = 'impression'
    GROUP BY "user_id"
),

kept AS (
    SELECT "user_id", MIN("split") AS "split"
    FROM "previous_splits"
    GROUP BY "user_id"
),

new_users AS (
    SELECT u."user_id", CAST(u."n_rows" AS BIGINT) AS "n_rows", MD5(u."user_id") AS "user_hash"
    FROM user_rows AS u
    LEFT JOIN kept AS k
        ON k."user_id" = u."user_id"
    WHERE k."user_id" IS NULL
),

laid_out AS (
    SELECT
        "user_id",
        CAST(2 * SUM("n_rows") OVER (
            ORDER BY "user_hash", "user_id" ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) - "n_rows" AS BIGINT) AS "middle",
        CAST(2 * SUM("n_rows") OVER () AS BIGINT) AS "circumference",
        MIN("user_hash") OVER () AS "first_hash"
    FROM new_users
),

points AS (
    SELECT
        "user_id",
        "circumference",
        ("middle" * 16777216 + CAST(('0x' || SUBSTRING(MD5("first_hash"), 1, 6)) AS BIGINT) * "circumference")
            % ("circumference" * 16777216) AS "point"
    FROM laid_out
)

SELECT k."user_id", k."split"
FROM kept AS k
JOIN user_rows AS u
    ON u."user_id" = k."user_id"
UNION ALL
SELECT
    "user_id",
    CASE
        WHEN 10 * "point" < 8 * "circumference" * 16777216 THEN 'train'
        WHEN 10 * "point" < 9 * "circumference" * 16777216 THEN 'val'
        ELSE 'test'
    END AS "split"
FROM points
