-- adapters/openai_chat: OpenAI-style chat logs (stored chat completions) + feedback -> canonical raw events.
--
-- Grain: one row per canonical event: one impression per assistant turn, one vote per feedback
-- row (adapters/export_events adds one row per record that is neither a completion nor feedback
-- and numbers the rows of each file). Key: "event_id".
-- Inputs: "openai_chat_records" (adapters/openai_chat_records), "source_feedback"
-- (adapters/openai_chat_feedback).
-- A completion record (ChatCompletion: id, created, model, choices[].message; with the request's
-- messages, metadata and user) gives one exposure per choice: exposure_id = id (id:k for choice
-- k > 0), prompt = the request's messages (the conversation so far) as JSON text, response =
-- choices[k].message.content. A transcript record (id and messages, no choices) gives one exposure
-- per assistant message: exposure_id = id:turn<k> (k-th assistant message, from 1), prompt = the
-- messages before it, response = its content. Earlier assistant turns inside a completion's
-- messages are not exposures of that record (they are the exposures of their own completions).
-- event_time = created (epoch seconds), user_id = user, else metadata.user_id, else
-- safety_identifier; session_id = metadata.conversation_id / session_id / thread_id, else the
-- completion id; model_id = model; prompt_id = md5 of the prompt's JSON text.
-- Feedback: thumbs_up / thumbs_down by its polarity, else the unknown type 'rating:<value>'
-- (rejected, counted); event_time = created, else the completion's.
WITH records AS (
    SELECT * FROM "openai_chat_records"
),

completions AS (
    SELECT
        "file_index", "source_file", "row_number", "record",
        json_extract_string("record", '$.id') AS "completion_id",
        json_extract_string("record", '$.created') AS "created",
        json_extract_string("record", '$.model') AS "model",
        COALESCE(
            json_extract_string("record", '$.user'),
            json_extract_string("record", '$.metadata.user_id'),
            json_extract_string("record", '$.safety_identifier')
        ) AS "user_id",
        COALESCE(
            json_extract_string("record", '$.metadata.conversation_id'),
            json_extract_string("record", '$.metadata.session_id'),
            json_extract_string("record", '$.metadata.thread_id'),
            json_extract_string("record", '$.id')
        ) AS "session_id",
        CASE WHEN json_type(json_extract("record", '$.messages')) = 'ARRAY' THEN json_extract("record", '$.messages') ELSE '[]' END AS "messages",
        COALESCE(json_type(json_extract("record", '$.choices')) = 'ARRAY', FALSE) AS "has_choices"
    FROM records
    WHERE "kind" = 'completion'
),

choice_turns AS (
    SELECT
        c.*,
        CAST(ch."k" AS BIGINT) AS "order_in_record",
        COALESCE(TRY_CAST(json_extract_string(ch."choice", '$.index') AS INTEGER), CAST(ch."k" AS INTEGER) - 1) AS "choice_index",
        CAST(c."messages" AS VARCHAR) AS "prompt_json",
        json_extract_string(ch."choice", '$.message.content') AS "response"
    FROM completions AS c
    CROSS JOIN UNNEST(CAST(json_extract(c."record", '$.choices') AS JSON[])) WITH ORDINALITY AS ch("choice", "k")
    WHERE c."has_choices" AND json_type(ch."choice") = 'OBJECT'
),

transcript_messages AS (
    SELECT c.*, m."message", CAST(m."k" AS BIGINT) AS "k"
    FROM completions AS c
    CROSS JOIN UNNEST(CAST(c."messages" AS JSON[])) WITH ORDINALITY AS m("message", "k")
    WHERE NOT c."has_choices"
),

assistant_turns AS (
    SELECT
        *,
        ROW_NUMBER() OVER (PARTITION BY "file_index", "row_number" ORDER BY "k") AS "turn",
        CAST(TO_JSON(list_slice(CAST("messages" AS JSON[]), 1, "k" - 1)) AS VARCHAR) AS "prompt_json",
        json_extract_string("message", '$.content') AS "response"
    FROM transcript_messages
    WHERE json_extract_string("message", '$.role') = 'assistant'
),

exposures AS (
    SELECT
        "file_index", "source_file", "row_number", "order_in_record", "created", "model", "user_id", "session_id",
        "completion_id" || CASE WHEN "choice_index" > 0 THEN ':' || CAST("choice_index" AS VARCHAR) ELSE '' END AS "exposure_id",
        "prompt_json", "response"
    FROM choice_turns
    UNION ALL
    SELECT
        "file_index", "source_file", "row_number", "k" AS "order_in_record", "created", "model", "user_id", "session_id",
        "completion_id" || ':turn' || CAST("turn" AS VARCHAR) AS "exposure_id",
        "prompt_json", "response"
    FROM assistant_turns
),

exposure_times AS (
    SELECT "exposure_id", MIN("created") AS "created" FROM exposures GROUP BY "exposure_id"
),

impressions AS (
    SELECT
        "file_index", "source_file", "row_number", "order_in_record",
        'openai:' || "exposure_id" || ':impression' AS "event_id",
        "created" AS "event_time",
        'impression' AS "event_type",
        "exposure_id",
        "user_id",
        "session_id",
        MD5("prompt_json") AS "prompt_id",
        "exposure_id" AS "response_id",
        COALESCE("model", 'unknown') AS "model_id",
        "prompt_json" AS "prompt_text",
        "response" AS "response_text",
        'openai' AS "platform",
        CAST(NULL AS VARCHAR) AS "payload",
        TRUE AS "parse_ok"
    FROM exposures
),

feedback AS (
    SELECT
        s."file_index", s."source_file", s."row_number", CAST(0 AS BIGINT) AS "order_in_record",
        s."feedback_id" AS "event_id",
        COALESCE(s."feedback_time", t."created") AS "event_time",
        CASE
            WHEN s."polarity" = 'up' THEN 'thumbs_up'
            WHEN s."polarity" = 'down' THEN 'thumbs_down'
            ELSE s."name" || ':' || COALESCE(s."value_text", CAST(s."value" AS VARCHAR), 'null')
        END AS "event_type",
        s."exposure_id",
        CAST(NULL AS VARCHAR) AS "user_id",
        CAST(NULL AS VARCHAR) AS "session_id",
        CAST(NULL AS VARCHAR) AS "prompt_id",
        CAST(NULL AS VARCHAR) AS "response_id",
        CAST(NULL AS VARCHAR) AS "model_id",
        CAST(NULL AS VARCHAR) AS "prompt_text",
        CAST(NULL AS VARCHAR) AS "response_text",
        CAST(NULL AS VARCHAR) AS "platform",
        s."payload",
        TRUE AS "parse_ok"
    FROM "source_feedback" AS s
    LEFT JOIN exposure_times AS t
        ON t."exposure_id" = s."exposure_id"
    WHERE s."role" = 'organic'
)

-- Impressions and feedback rows; adapters/export_events adds the unparseable records and numbers the rows.
SELECT * FROM impressions
UNION ALL
SELECT * FROM feedback
