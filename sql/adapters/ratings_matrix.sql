-- adapters/ratings_matrix: a user x item rating matrix (Coat's train.ascii / test.ascii: one line
-- per user, whitespace-separated ratings, 0 = unrated) -> canonical raw events.
--
-- Grain: one row per canonical event: one impression per (user, item) cell -- the exposure
-- universe is every cell -- and one vote per rated cell. Key: "event_id".
-- Inputs: "source_records" (one matrix line per record). Parameters: $base_time (TIMESTAMPTZ; the
-- data has no times, every impression gets base, every vote base + 1 s), $threshold (DOUBLE).
-- observed = rated (rating > 0); label = 1 when rating >= $threshold (thumbs_up), else 0. The raw
-- rating rides on the vote as "rating_value" (null elsewhere); feedback_etl.sources turns it into the
-- feedback table's outcome column "rating" (issue 17).
-- Ids: user u = line - 1, item i = column - 1 (0-based like the matrix); exposure_id
-- '<file tag>:u<u>:i<i>', so two files (train, test) never share an exposure. A cell that is not a
-- number becomes one unparseable row.
-- Portability: the two zipped select-list UNNESTs are POSEXPLODE in Spark.
WITH lines AS (
    SELECT "file_index", "source_file", "file_tag", "row_number", "record"
    FROM "source_records"
    WHERE TRIM(COALESCE("record", '')) <> ''
),

split_lines AS (
    SELECT "file_index", "source_file", "file_tag", "row_number", regexp_split_to_array(TRIM("record"), '\s+') AS "cells"
    FROM lines
),

-- UNNEST in the select list (the two lists have the same length, so they zip): the lateral form
-- CROSS JOIN UNNEST(...) WITH ORDINALITY took 15x the time and 2 GB at 1.5M cells (DuckDB 2.0).
positioned AS (
    SELECT
        "file_index", "source_file", "file_tag", "row_number",
        UNNEST("cells") AS "cell",
        UNNEST(generate_series(1, len("cells"))) AS "item_position"
    FROM split_lines
),

cells AS (
    SELECT *, TRY_CAST("cell" AS DOUBLE) AS "rating"
    FROM positioned
),

exposures AS (
    SELECT
        *,
        'u' || CAST("row_number" - 1 AS VARCHAR) AS "user_key",
        'i' || CAST("item_position" - 1 AS VARCHAR) AS "item_key"
    FROM cells
    WHERE "rating" IS NOT NULL AND "rating" >= 0
),

impressions AS (
    SELECT
        "file_index", "source_file", "row_number",
        "file_tag" || ':' || "user_key" || ':' || "item_key" || ':impression' AS "event_id",
        $base_time AS "event_time",
        'impression' AS "event_type",
        "file_tag" || ':' || "user_key" || ':' || "item_key" AS "exposure_id",
        "user_key" AS "user_id",
        "user_key" AS "session_id",
        "user_key" AS "prompt_id",
        "item_key" AS "response_id",
        "file_tag" AS "model_id",
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
    FROM exposures
),

votes AS (
    SELECT
        "file_index", "source_file", "row_number",
        "file_tag" || ':' || "user_key" || ':' || "item_key" || ':vote' AS "event_id",
        $base_time + INTERVAL '1' SECOND AS "event_time",
        CASE WHEN "rating" >= $threshold THEN 'thumbs_up' ELSE 'thumbs_down' END AS "event_type",
        "file_tag" || ':' || "user_key" || ':' || "item_key" AS "exposure_id",
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
    FROM exposures
    WHERE "rating" > 0
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
        'line ' || CAST("row_number" AS VARCHAR) || ', column ' || CAST("item_position" AS VARCHAR) || ': ' || "cell" AS "payload",
        FALSE AS "parse_ok",
        CAST(NULL AS DOUBLE) AS "rating_value"
    FROM cells
    WHERE "rating" IS NULL OR "rating" < 0
)

SELECT * FROM impressions
UNION ALL
SELECT * FROM votes
UNION ALL
SELECT * FROM unparseable
