-- adapters/ratings_triples: (user_id, item_id, rating) triples -> canonical raw events.
--
-- Grain: one row per canonical event: one impression per (user, item) pair of the exposure
-- universe -- every user in the file crossed with every item in the file -- and one vote per
-- rated pair. Key: "event_id".
-- Inputs: "source_triples" (file_index, source_file, file_tag, row_number, parse_ok, user_id,
-- item_id, rating as text). Parameters: $base_time (TIMESTAMPTZ), $threshold (DOUBLE).
-- observed = rated; label = 1 when rating >= $threshold. The raw rating rides on the vote as
-- "rating_value" (null elsewhere), for the feedback table's outcome column "rating" (issue 17). A triple with a missing id or a rating
-- that is not a non-negative number becomes one unparseable row. A repeated (user, item) triple
-- repeats the vote's event_id, so it is counted as a duplicate (the first one wins).
WITH triples AS (
    SELECT
        *,
        TRY_CAST("rating_text" AS DOUBLE) AS "rating"
    FROM "source_triples"
),

valid AS (
    SELECT *
    FROM triples
    WHERE "parse_ok" AND "user_id" IS NOT NULL AND "item_id" IS NOT NULL
      AND "rating" IS NOT NULL AND "rating" >= 0
),

users AS (
    SELECT "file_index", "file_tag", "user_id", MIN("row_number") AS "first_row", MIN("source_file") AS "source_file"
    FROM valid
    GROUP BY "file_index", "file_tag", "user_id"
),

items AS (
    SELECT DISTINCT "file_index", "item_id"
    FROM valid
),

impressions AS (
    SELECT
        u."file_index", u."source_file", u."first_row" AS "row_number",
        u."file_tag" || ':' || u."user_id" || ':' || i."item_id" || ':impression' AS "event_id",
        $base_time AS "event_time",
        'impression' AS "event_type",
        u."file_tag" || ':' || u."user_id" || ':' || i."item_id" AS "exposure_id",
        u."user_id" AS "user_id",
        u."user_id" AS "session_id",
        u."user_id" AS "prompt_id",
        i."item_id" AS "response_id",
        u."file_tag" AS "model_id",
        CAST(NULL AS VARCHAR) AS "prompt_text",
        CAST(NULL AS VARCHAR) AS "response_text",
        CAST(NULL AS INTEGER) AS "position",
        'ratings' AS "platform",
        CAST(NULL AS VARCHAR) AS "locale",
        CAST(NULL AS DOUBLE) AS "latency_ms",
        FALSE AS "solicited",
        CAST(NULL AS VARCHAR) AS "payload",
        TRUE AS "parse_ok",
        CAST(NULL AS DOUBLE) AS "rating_value"
    FROM users AS u
    JOIN items AS i
        ON i."file_index" = u."file_index"
),

votes AS (
    SELECT
        "file_index", "source_file", "row_number",
        "file_tag" || ':' || "user_id" || ':' || "item_id" || ':vote' AS "event_id",
        $base_time + INTERVAL '1' SECOND AS "event_time",
        CASE WHEN "rating" >= $threshold THEN 'thumbs_up' ELSE 'thumbs_down' END AS "event_type",
        "file_tag" || ':' || "user_id" || ':' || "item_id" AS "exposure_id",
        CAST(NULL AS VARCHAR) AS "user_id",
        CAST(NULL AS VARCHAR) AS "session_id",
        CAST(NULL AS VARCHAR) AS "prompt_id",
        CAST(NULL AS VARCHAR) AS "response_id",
        CAST(NULL AS VARCHAR) AS "model_id",
        CAST(NULL AS VARCHAR) AS "prompt_text",
        CAST(NULL AS VARCHAR) AS "response_text",
        CAST(NULL AS INTEGER) AS "position",
        CAST(NULL AS VARCHAR) AS "platform",
        CAST(NULL AS VARCHAR) AS "locale",
        CAST(NULL AS DOUBLE) AS "latency_ms",
        CAST(NULL AS BOOLEAN) AS "solicited",
        CAST(NULL AS VARCHAR) AS "payload",
        TRUE AS "parse_ok",
        "rating" AS "rating_value"
    FROM valid
),

unparseable AS (
    SELECT
        "file_index", "source_file", "row_number",
        CAST(NULL AS VARCHAR) AS "event_id", CAST(NULL AS TIMESTAMP WITH TIME ZONE) AS "event_time",
        CAST(NULL AS VARCHAR) AS "event_type", CAST(NULL AS VARCHAR) AS "exposure_id",
        CAST(NULL AS VARCHAR) AS "user_id", CAST(NULL AS VARCHAR) AS "session_id",
        CAST(NULL AS VARCHAR) AS "prompt_id", CAST(NULL AS VARCHAR) AS "response_id",
        CAST(NULL AS VARCHAR) AS "model_id", CAST(NULL AS VARCHAR) AS "prompt_text",
        CAST(NULL AS VARCHAR) AS "response_text", CAST(NULL AS INTEGER) AS "position",
        CAST(NULL AS VARCHAR) AS "platform", CAST(NULL AS VARCHAR) AS "locale",
        CAST(NULL AS DOUBLE) AS "latency_ms", CAST(NULL AS BOOLEAN) AS "solicited",
        "payload",
        FALSE AS "parse_ok",
        CAST(NULL AS DOUBLE) AS "rating_value"
    FROM triples
    WHERE NOT ("parse_ok" AND "user_id" IS NOT NULL AND "item_id" IS NOT NULL
               AND "rating" IS NOT NULL AND "rating" >= 0)
)

SELECT * FROM impressions
UNION ALL
SELECT * FROM votes
UNION ALL
SELECT * FROM unparseable
