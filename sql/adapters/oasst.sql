-- adapters/oasst: OpenAssistant message trees (one JSON tree per line) -> canonical raw events.
--
-- Grain: one row per canonical event: one impression per assistant reply, one vote per emoji vote
-- on it. Key: "event_id". Unparseable lines pass through as one row with parse_ok false.
-- Inputs: "source_records" (file_index, source_file, file_tag, row_number, parse_ok, record).
-- Parameter: $base_time (TIMESTAMPTZ): OASST carries no timestamps, so every tree gets a synthetic
-- one: base + (line - 1) hours + depth minutes; its votes follow 1, 2, ... seconds after.
-- Mapping: exposure = assistant reply (response_id = message_id, prompt_id/prompt_text = parent
-- message, user_id = session_id = message_tree_id, model_id = model_name or 'human', locale = lang).
-- Votes: a reply with u "+1" and d "-1" emojis gets u thumbs_up and d thumbs_down events, the
-- majority last, so by rule 3 observed = (u + d > 0) and label = 1 exactly when u > d (a tie
-- ends on thumbs_down: a reply users did not net-endorse is labelled 0).
-- Portability: WITH RECURSIVE + UNNEST of a JSON array is DuckDB's spelling; Spark needs explode and
-- has no recursive CTE before 4.1 (flatten trees to a fixed depth there).
WITH RECURSIVE trees AS (
    -- A line that is JSON but not a tree (no "prompt" object) is as unusable as broken JSON.
    SELECT
        "file_index", "source_file", "row_number", "record",
        COALESCE(CASE WHEN "parse_ok" THEN json_type(json_extract("record", '$.prompt')) = 'OBJECT' END, FALSE) AS "parse_ok"
    FROM "source_records"
),

messages AS (
    SELECT
        "file_index", "source_file", "row_number",
        json_extract_string("record", '$.message_tree_id') AS "tree_id",
        json_extract("record", '$.prompt') AS "message",
        CAST(NULL AS VARCHAR) AS "parent_text",
        0 AS "depth"
    FROM trees
    WHERE "parse_ok"
    UNION ALL
    SELECT
        m."file_index", m."source_file", m."row_number", m."tree_id",
        r."reply",
        json_extract_string(m."message", '$.text') AS "parent_text",
        m."depth" + 1 AS "depth"
    FROM messages AS m
    CROSS JOIN UNNEST(CAST(json_extract(m."message", '$.replies') AS JSON[])) AS r("reply")
),

replies AS (
    SELECT
        "file_index", "source_file", "row_number", "tree_id", "parent_text", "depth",
        json_extract_string("message", '$.message_id') AS "message_id",
        json_extract_string("message", '$.parent_id') AS "parent_id",
        json_extract_string("message", '$.text') AS "text",
        json_extract_string("message", '$.lang') AS "lang",
        json_extract_string("message", '$.model_name') AS "model_name",
        COALESCE(TRY_CAST(json_extract_string("message", '$.emojis."+1"') AS INTEGER), 0) AS "n_up",
        COALESCE(TRY_CAST(json_extract_string("message", '$.emojis."-1"') AS INTEGER), 0) AS "n_down",
        $base_time + INTERVAL '1' HOUR * ("row_number" - 1) + INTERVAL '1' MINUTE * "depth" AS "impression_time"
    FROM messages
    WHERE json_extract_string("message", '$.role') = 'assistant'
),

impressions AS (
    SELECT
        "file_index", "source_file", "row_number",
        'oasst:' || "message_id" || ':impression' AS "event_id",
        "impression_time" AS "event_time",
        'impression' AS "event_type",
        "message_id" AS "exposure_id",
        "tree_id" AS "user_id",
        "tree_id" AS "session_id",
        "parent_id" AS "prompt_id",
        "message_id" AS "response_id",
        COALESCE("model_name", 'human') AS "model_id",
        "parent_text" AS "prompt_text",
        "text" AS "response_text",
        CAST(NULL AS INTEGER) AS "position",
        'oasst' AS "platform",
        "lang" AS "locale",
        CAST(NULL AS DOUBLE) AS "latency_ms",
        FALSE AS "solicited"
    FROM replies
),

votes AS (
    SELECT
        r."file_index", r."source_file", r."row_number",
        'oasst:' || r."message_id" || ':vote:' || CAST(v."k" AS VARCHAR) AS "event_id",
        r."impression_time" + INTERVAL '1' SECOND * v."k" AS "event_time",
        CASE
            WHEN r."n_up" > r."n_down" THEN CASE WHEN v."k" <= r."n_down" THEN 'thumbs_down' ELSE 'thumbs_up' END
            ELSE CASE WHEN v."k" <= r."n_up" THEN 'thumbs_up' ELSE 'thumbs_down' END
        END AS "event_type",
        r."message_id" AS "exposure_id",
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
        CAST(NULL AS BOOLEAN) AS "solicited"
    FROM replies AS r
    CROSS JOIN UNNEST(GENERATE_SERIES(1, r."n_up" + r."n_down")) AS v("k")
    WHERE r."n_up" + r."n_down" > 0
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
        "record" AS "payload"
    FROM trees
    WHERE NOT "parse_ok"
)

SELECT *, CAST(NULL AS VARCHAR) AS "payload", TRUE AS "parse_ok" FROM impressions
UNION ALL
SELECT *, CAST(NULL AS VARCHAR) AS "payload", TRUE AS "parse_ok" FROM votes
UNION ALL
SELECT *, FALSE AS "parse_ok" FROM unparseable
