-- adapters/openai_chat_feedback: every feedback row of an OpenAI-style chat log, once.
--
-- Grain: one row per distinct feedback.   Key: "feedback_id".
-- Inputs: "openai_chat_records" (adapters/openai_chat_records), "vote_categories" (lower-cased
-- text -> up | down).
-- OpenAI keeps no feedback with stored completions, so this is causalrm's own row: completion_id
-- (ChatCompletion.id), optional choice_index (the choice rated, default 0) or turn (the k-th
-- assistant message of a transcript, from 1), rating (a number: > 0 up, <= 0 down; or text: up /
-- down / true / false / thumbs_up ... through "vote_categories"), created (epoch seconds or
-- ISO-8601), optional id, key, comment and correction.
-- "exposure_id": the completion's exposure for that choice (completion_id, or completion_id:k for
-- choice k > 0) or transcript turn (completion_id:turn<k>). Every row is an organic vote.
WITH fields AS (
    SELECT
        "file_index", "source_file", "row_number", "record",
        json_extract_string("record", '$.id') AS "id",
        json_extract_string("record", '$.completion_id') || CASE
            WHEN json_exists("record", '$.turn') THEN ':turn' || json_extract_string("record", '$.turn')
            WHEN COALESCE(TRY_CAST(json_extract_string("record", '$.choice_index') AS INTEGER), 0) > 0
                THEN ':' || json_extract_string("record", '$.choice_index')
            ELSE ''
        END AS "exposure_id",
        COALESCE(json_extract_string("record", '$.key'), 'rating') AS "name",
        CASE WHEN json_type(json_extract("record", '$.rating')) IN ('BIGINT', 'UBIGINT', 'DOUBLE')
             THEN TRY_CAST(json_extract_string("record", '$.rating') AS DOUBLE) END AS "value",
        LOWER(TRIM(CASE WHEN json_type(json_extract("record", '$.rating')) IN ('VARCHAR', 'BOOLEAN')
                        THEN json_extract_string("record", '$.rating') END)) AS "value_text",
        json_extract_string("record", '$.comment') AS "comment",
        CASE WHEN json_type(json_extract("record", '$.correction')) <> 'NULL' THEN CAST(json_extract("record", '$.correction') AS VARCHAR) END AS "correction",
        COALESCE(json_extract_string("record", '$.created'), json_extract_string("record", '$.created_at')) AS "feedback_time"
    FROM "openai_chat_records"
    WHERE "kind" = 'feedback'
),

deduped AS (
    SELECT *
    FROM (
        SELECT
            *,
            ROW_NUMBER() OVER (
                PARTITION BY COALESCE("id", MD5(CAST("record" AS VARCHAR)))
                ORDER BY "file_index", "row_number"
            ) AS "copy_rank"
        FROM fields
    ) AS ranked
    WHERE "copy_rank" = 1
)

SELECT
    d."file_index", d."source_file", d."row_number", CAST(0 AS BIGINT) AS "position",
    -- Without an id, the row's content names it: the same row read again is the same feedback.
    COALESCE(d."id", 'openai:' || d."exposure_id" || ':feedback:' || MD5(CAST(d."record" AS VARCHAR))) AS "feedback_id",
    d."exposure_id",
    d."name",
    'user' AS "origin",
    'organic' AS "role",
    'vote' AS "channel",
    CASE
        WHEN d."value" > 0 THEN 'up'
        WHEN d."value" <= 0 THEN 'down'
        ELSE v."polarity"
    END AS "polarity",
    d."value",
    d."value_text",
    d."comment",
    d."correction",
    d."feedback_time",
    CAST(d."record" AS VARCHAR) AS "payload"
FROM deduped AS d
LEFT JOIN "vote_categories" AS v
    ON v."value" = d."value_text"
