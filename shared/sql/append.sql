-- turnq_append(session, turn, items, tokens, ctx) -> the session's context tokens after
--
-- Appends a turn's items at the session's next positions (O(new items), never a
-- rewrite of history) and updates its counters; ``ctx`` NULL keeps the context size.
-- The caller holds the session row lock (turnq_hold).
CREATE FUNCTION turnq_append(
    p_sid uuid, p_tid uuid, p_items jsonb, p_tokens integer[], p_ctx integer
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
        context_tokens = COALESCE(p_ctx, s.context_tokens)
    WHERE s.id = p_sid
    RETURNING s.item_count, s.context_tokens INTO v_count, v_after;
    INSERT INTO items (session_id, position, turn_id, item, tokens)
    SELECT p_sid, v_count - v_n + e.ord - 1, p_tid, e.item, p_tokens[e.ord]
    FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(item, ord);
    RETURN v_after;
END
$fn$;
