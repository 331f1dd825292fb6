-- turnq_close_waiting(turn, mode, by) -> nothing
--
-- A waiting turn is being cancelled (a cancel, or a later message's interrupt or rollback;
-- the caller moves its status): its undecided approvals are closed (``cancelled``, by
-- ``by``) and its saved run state dropped.  Under ``interrupt`` the transcript keeps what
-- the turn finished -- its message, and the tool calls that ran with their outputs -- as
-- when a cancel reaches the run before it pauses (turnq_pause): the calls nobody decided
-- are left out, so no call dangles.  ``rollback`` keeps nothing.  Its usage was counted
-- when it paused.  The caller holds the session row lock, then the turn's.
CREATE FUNCTION turnq_close_waiting(p_tid uuid, p_mode text, p_by text)
RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    v_sid uuid;
    v_pending jsonb;
    v_agent text;
    v_items jsonb;
    v_tokens integer[];
BEGIN
    SELECT t.session_id, t.pending_items, t.agent INTO v_sid, v_pending, v_agent
    FROM turns t WHERE t.id = p_tid AND t.status = {{status:waiting}};
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_mode = 'interrupt' AND v_pending IS NOT NULL THEN
        -- Tokens estimated as shared.store.records.estimate_tokens does (~4 chars each).
        SELECT COALESCE(jsonb_agg(e.item ORDER BY e.ord), '[]'::jsonb),
               COALESCE(array_agg(GREATEST(1, length(e.item::text) / 4) ORDER BY e.ord), '{}')
        INTO v_items, v_tokens
        FROM jsonb_array_elements(v_pending) WITH ORDINALITY AS e(item, ord)
        WHERE e.item->>'approval' IS DISTINCT FROM 'pending';
        PERFORM turnq_append(v_sid, p_tid, v_items, v_tokens, NULL, NULL, NULL, v_agent);
    END IF;
    UPDATE turns t SET run_state = NULL, pending_items = NULL WHERE t.id = p_tid;
    UPDATE approvals a SET decision = 'cancelled', decided_by = p_by, decided_at = now()
    WHERE a.turn_id = p_tid AND a.decision IS NULL;
END
$fn$;
