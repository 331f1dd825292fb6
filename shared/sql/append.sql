-- turnq_append(session, turn, items, tokens, ctx, usage, entry, active)
--   -> the session's context tokens after
--
-- Appends a turn's items at the session's next positions (O(new items), never a
-- rewrite of history) and updates the session row in the same UPDATE: item count,
-- transcript tokens, context size (``ctx`` NULL keeps it), the model usage the turn
-- spent (``usage``: requests, input/cached/output/reasoning tokens; NULL: none), the
-- active agent (``active`` NULL keeps it) and the entry agent if the session had none
-- yet (it was created without naming one: it is bound to the default it ran with).
-- The caller holds the session row lock (turnq_hold).
CREATE FUNCTION turnq_append(
    p_sid uuid, p_tid uuid, p_items jsonb, p_tokens integer[], p_ctx integer, p_usage jsonb,
    p_entry text, p_active text
)
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    v_n integer := jsonb_array_length(p_items);
    v_count bigint;
    v_after integer;
BEGIN
    UPDATE sessions s SET item_count = s.item_count + v_n, updated_at = now(),
        transcript_tokens = s.transcript_tokens
            + COALESCE((SELECT sum(x) FROM unnest(p_tokens) AS x), 0),
        context_tokens = COALESCE(p_ctx, s.context_tokens),
        requests = s.requests + COALESCE((p_usage->>'requests')::bigint, 0),
        input_tokens = s.input_tokens + COALESCE((p_usage->>'input_tokens')::bigint, 0),
        cached_tokens = s.cached_tokens + COALESCE((p_usage->>'cached_tokens')::bigint, 0),
        output_tokens = s.output_tokens + COALESCE((p_usage->>'output_tokens')::bigint, 0),
        reasoning_tokens = s.reasoning_tokens
            + COALESCE((p_usage->>'reasoning_tokens')::bigint, 0),
        entry_agent = COALESCE(s.entry_agent, p_entry),
        active_agent = COALESCE(p_active, s.active_agent)
    WHERE s.id = p_sid
    RETURNING s.item_count, s.context_tokens INTO v_count, v_after;
    INSERT INTO items (session_id, position, turn_id, item, tokens)
    SELECT p_sid, v_count - v_n + e.ord - 1, p_tid, e.item, p_tokens[e.ord]
    FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(item, ord);
    RETURN v_after;
END
$fn$;
