-- stg_events_typed: type every canonical column of every input row and name the first reason,
-- if any, why the row cannot be accepted.
--
-- Grain: one row per input row, accepted or not.   Key: ("file_index", "row_number").
-- Inputs: "raw_events" (a reader or source adapter: canonical columns of any type, plus
--         "file_index", "source_file", "row_number", "parse_ok", and the raw row as "payload_text"
--         (the raw line of text formats) or "payload" (a STRUCT of the row's columns), and
--         "nested_column" (the first canonical column whose value is an object or array, else NULL)),
--         "event_type_map" ("source_value" -> canonical "event_type": the identity for every
--         canonical type plus the --mapping file's renames).
-- Reasons, first that applies: unparseable_row; missing_field (event_id, event_type, exposure_id,
-- event_time); bad_timestamp (neither ISO-8601 nor epoch seconds / milliseconds, or outside [1970, 2200)); unknown_event_type;
-- missing_field (an impression without user_id, session_id, prompt_id, response_id or model_id);
-- bad_value (an object or array in any column; an id holding a NUL character; position present
-- but not a whole number >= 0, latency_ms not a number >= 0, solicited not true / false).
-- The payload becomes JSON text on rejected rows only: building a STRUCT is free (it wraps the
-- column vectors), serialising it is not, and CASE serialises only the rows it selects.
-- Portability: TO_JSON(struct) is TO_JSON(STRUCT(...)) in Spark.
WITH source AS (
    SELECT * FROM "raw_events"
),

as_text AS (
    -- Empty or blank strings count as missing. Ids keep their exact spelling (no trimming).
    SELECT
        "file_index",
        "source_file",
        "row_number",
        "parse_ok",
        "payload_text",
        "payload",
        "nested_column",
        CASE WHEN TRIM(CAST("event_id" AS VARCHAR)) = '' THEN NULL ELSE CAST("event_id" AS VARCHAR) END AS "event_id",
        CASE WHEN TRIM(CAST("event_time" AS VARCHAR)) = '' THEN NULL ELSE "event_time" END AS "event_time_raw",
        CASE WHEN TRIM(CAST("event_type" AS VARCHAR)) = '' THEN NULL ELSE TRIM(CAST("event_type" AS VARCHAR)) END AS "event_type_raw",
        CASE WHEN TRIM(CAST("exposure_id" AS VARCHAR)) = '' THEN NULL ELSE CAST("exposure_id" AS VARCHAR) END AS "exposure_id",
        CASE WHEN TRIM(CAST("user_id" AS VARCHAR)) = '' THEN NULL ELSE CAST("user_id" AS VARCHAR) END AS "user_id",
        CASE WHEN TRIM(CAST("session_id" AS VARCHAR)) = '' THEN NULL ELSE CAST("session_id" AS VARCHAR) END AS "session_id",
        CASE WHEN TRIM(CAST("prompt_id" AS VARCHAR)) = '' THEN NULL ELSE CAST("prompt_id" AS VARCHAR) END AS "prompt_id",
        CASE WHEN TRIM(CAST("response_id" AS VARCHAR)) = '' THEN NULL ELSE CAST("response_id" AS VARCHAR) END AS "response_id",
        CASE WHEN TRIM(CAST("model_id" AS VARCHAR)) = '' THEN NULL ELSE CAST("model_id" AS VARCHAR) END AS "model_id",
        CAST("prompt_text" AS VARCHAR) AS "prompt_text",
        CAST("response_text" AS VARCHAR) AS "response_text",
        "position" AS "position_raw",
        CASE WHEN TRIM(CAST("platform" AS VARCHAR)) = '' THEN NULL ELSE CAST("platform" AS VARCHAR) END AS "platform",
        CASE WHEN TRIM(CAST("locale" AS VARCHAR)) = '' THEN NULL ELSE CAST("locale" AS VARCHAR) END AS "locale",
        "latency_ms" AS "latency_ms_raw",
        "solicited" AS "solicited_raw"
    FROM source
),

typed AS (
    -- TRY_CAST turns what does not parse into NULL; the raw value tells "absent" from "bad".
    -- A timestamp without an offset is read as UTC (the session time zone is UTC).
    SELECT
        t.*,
        CASE
            -- A bare number is Unix epoch time (issue 18): seconds below 1e11 (year 5138), milliseconds
            -- from there; beyond 1e14 it is no time at all. MAKE_TIMESTAMP(micros) is Spark's
            -- TIMESTAMP_MICROS, so both engines round to the same microsecond.
            WHEN regexp_matches(CAST(t."event_time_raw" AS VARCHAR), '^\s*[0-9]+(\.[0-9]*)?([eE][+]?[0-9]+)?\s*$') THEN
                CASE
                    WHEN TRY_CAST(CAST(t."event_time_raw" AS VARCHAR) AS DOUBLE) < 1e11 THEN CAST(MAKE_TIMESTAMP(
                        CAST(ROUND(TRY_CAST(CAST(t."event_time_raw" AS VARCHAR) AS DOUBLE) * 1e6) AS BIGINT)) AS TIMESTAMP WITH TIME ZONE)
                    WHEN TRY_CAST(CAST(t."event_time_raw" AS VARCHAR) AS DOUBLE) < 1e14 THEN CAST(MAKE_TIMESTAMP(
                        CAST(ROUND(TRY_CAST(CAST(t."event_time_raw" AS VARCHAR) AS DOUBLE) * 1e3) AS BIGINT)) AS TIMESTAMP WITH TIME ZONE)
                END
            ELSE TRY_CAST(t."event_time_raw" AS TIMESTAMP WITH TIME ZONE)
        END AS "event_time",
        m."event_type" AS "event_type",
        -- Strict types (issue 16), judged on the value's text so JSON, CSV and Parquet follow one
        -- rule: position is a whole number (1.5 is not rounded to 2), solicited is true or false
        -- (not "yes", "t" or 1), latency_ms a number (a boolean is not 1.0).
        CASE
            WHEN TRY_CAST(TRIM(CAST(t."position_raw" AS VARCHAR)) AS DOUBLE) BETWEEN 0 AND 2147483647
                AND TRY_CAST(TRIM(CAST(t."position_raw" AS VARCHAR)) AS DOUBLE) = FLOOR(TRY_CAST(TRIM(CAST(t."position_raw" AS VARCHAR)) AS DOUBLE))
            THEN CAST(TRY_CAST(TRIM(CAST(t."position_raw" AS VARCHAR)) AS DOUBLE) AS INTEGER)
        END AS "position",
        TRY_CAST(TRIM(CAST(t."latency_ms_raw" AS VARCHAR)) AS DOUBLE) AS "latency_ms",
        CASE LOWER(CAST(t."solicited_raw" AS VARCHAR)) WHEN 'true' THEN TRUE WHEN 'false' THEN FALSE END AS "solicited"
    FROM as_text AS t
    LEFT JOIN "event_type_map" AS m
        ON m."source_value" = t."event_type_raw"
),

checked AS (
    SELECT
        *,
        NOT "parse_ok" AS "is_unparseable",
        CASE
            WHEN "event_id" IS NULL THEN 'event_id'
            WHEN "event_type_raw" IS NULL THEN 'event_type'
            WHEN "exposure_id" IS NULL THEN 'exposure_id'
            WHEN "event_time_raw" IS NULL THEN 'event_time'
        END AS "missing_core",
        (
            "event_time" IS NULL
            -- Only a number or an ISO-8601 text (it starts with its year): DuckDB would read the
            -- words 'epoch' and 'infinity' as timestamps (issue 16).
            OR NOT regexp_matches(CAST("event_time_raw" AS VARCHAR), '^\s*[0-9]')
            OR "event_time" < CAST('1970-01-01 00:00:00+00' AS TIMESTAMP WITH TIME ZONE)
            OR "event_time" >= CAST('2200-01-01 00:00:00+00' AS TIMESTAMP WITH TIME ZONE)
        ) AS "is_bad_timestamp",
        CASE
            WHEN "event_type" IS NULL OR "event_type" <> 'impression' THEN NULL
            WHEN "user_id" IS NULL THEN 'user_id'
            WHEN "session_id" IS NULL THEN 'session_id'
            WHEN "prompt_id" IS NULL THEN 'prompt_id'
            WHEN "response_id" IS NULL THEN 'response_id'
            WHEN "model_id" IS NULL THEN 'model_id'
        END AS "missing_impression_id",
        CASE
            -- An id holding a NUL character (JSON "\u0000") is not an id any tool downstream can use.
            -- The reader names the first column holding an object or array (JSON, Parquet structs).
            WHEN "nested_column" IS NOT NULL THEN "nested_column"
            WHEN STRPOS("event_id", CHR(0)) > 0 THEN 'event_id'
            WHEN STRPOS("exposure_id", CHR(0)) > 0 THEN 'exposure_id'
            WHEN STRPOS("user_id", CHR(0)) > 0 THEN 'user_id'
            WHEN STRPOS("session_id", CHR(0)) > 0 THEN 'session_id'
            WHEN STRPOS("prompt_id", CHR(0)) > 0 THEN 'prompt_id'
            WHEN STRPOS("response_id", CHR(0)) > 0 THEN 'response_id'
            WHEN STRPOS("model_id", CHR(0)) > 0 THEN 'model_id'
            WHEN "position_raw" IS NOT NULL AND ("position" IS NULL OR "position" < 0) THEN 'position'
            -- NaN and infinities sort above every number, so the upper bound rejects them too.
            WHEN "latency_ms_raw" IS NOT NULL AND ("latency_ms" IS NULL OR "latency_ms" < 0 OR "latency_ms" > 1e15) THEN 'latency_ms'
            WHEN "solicited_raw" IS NOT NULL AND "solicited" IS NULL THEN 'solicited'
        END AS "bad_value_column"
    FROM typed
),

final AS (
    SELECT
        *,
        CASE
            WHEN "is_unparseable" THEN 'unparseable_row'
            WHEN "missing_core" IS NOT NULL THEN 'missing_field'
            WHEN "is_bad_timestamp" THEN 'bad_timestamp'
            WHEN "event_type" IS NULL THEN 'unknown_event_type'
            WHEN "missing_impression_id" IS NOT NULL THEN 'missing_field'
            WHEN "bad_value_column" IS NOT NULL THEN 'bad_value'
        END AS "reject_reason",
        CASE
            WHEN "is_unparseable" THEN 'row is not a parseable record'
            WHEN "missing_core" IS NOT NULL THEN 'missing ' || "missing_core"
            WHEN "is_bad_timestamp" THEN 'event_time is not an ISO-8601 timestamp or epoch seconds / milliseconds in [1970, 2200)'
            WHEN "event_type" IS NULL THEN 'event_type ' || "event_type_raw" || ' is not a known event type'
            WHEN "missing_impression_id" IS NOT NULL THEN 'impression without ' || "missing_impression_id"
            WHEN "bad_value_column" IS NOT NULL THEN 'bad value in ' || "bad_value_column"
        END AS "reject_detail"
    FROM checked
)

SELECT
    "file_index",
    "source_file",
    "row_number",
    "reject_reason",
    "reject_detail",
    CASE
        WHEN "reject_reason" IS NOT NULL THEN COALESCE("payload_text", CAST(TO_JSON("payload") AS VARCHAR))
    END AS "payload",
    "event_id",
    CASE WHEN NOT "is_bad_timestamp" THEN "event_time" END AS "event_time",
    "event_type",
    "exposure_id",
    "user_id",
    "session_id",
    "prompt_id",
    "response_id",
    "model_id",
    "prompt_text",
    "response_text",
    "position",
    "platform",
    "locale",
    "latency_ms",
    "solicited"
FROM final
