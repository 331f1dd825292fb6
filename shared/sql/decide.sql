-- turnq_decide(turn, call, approve, message, by, owner, namespace)
--   -> (outcome, resumed, session, turn jsonb, waited_s); no row: no such turn for this caller
--
-- A person's decision on one pending tool call, recorded exactly once, under the turn's
-- row lock (two identical decisions sent at once apply once):
--   recorded     this call recorded it
--   same         the same decision was recorded before (idempotent)
--   conflict     the other decision was recorded before
--   unknown_call the turn never asked about this call
--   not_pending  the turn is no longer waiting for it (cancelled, expired, finished)
-- When it was the last pending call of a waiting turn, the turn is queued again (resume)
-- and ``resumed`` is true: the caller kicks the session, and any worker goes on from the
-- saved run state.  ``owner`` NULL: an approver key (any user of the namespace);
-- otherwise only the session's owner finds the turn (another user's: not found, I10).
CREATE FUNCTION turnq_decide(
    p_tid uuid, p_call text, p_approve boolean, p_message text, p_by text, p_owner text,
    p_ns text
)
RETURNS TABLE (outcome text, resumed boolean, session_id text, turn jsonb, waited_s double precision)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_status text;
    v_sid uuid;
    v_decision text;
    v_found boolean;
    v_asked timestamptz;
    v_outcome text;
    v_resumed boolean := false;
    v_wanted text := CASE WHEN p_approve THEN 'approved' ELSE 'rejected' END;
BEGIN
    SELECT t.status, t.session_id INTO v_status, v_sid
    FROM turns t JOIN sessions s ON s.id = t.session_id
    WHERE t.id = p_tid AND s.namespace = p_ns AND (p_owner IS NULL OR s.user_id = p_owner)
    FOR UPDATE OF t;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT true, a.decision, a.requested_at INTO v_found, v_decision, v_asked
    FROM approvals a WHERE a.turn_id = p_tid AND a.call_id = p_call FOR UPDATE;
    IF v_found IS NULL THEN
        v_outcome := 'unknown_call';
    ELSIF v_decision = v_wanted THEN
        v_outcome := 'same';
    ELSIF v_decision IS NOT NULL AND v_decision IN ('approved', 'rejected') THEN
        v_outcome := 'conflict';
    ELSIF v_decision IS NOT NULL OR v_status <> {{status:waiting}} THEN
        v_outcome := 'not_pending';
    ELSE
        UPDATE approvals a SET decision = v_wanted, message = p_message, decided_by = p_by,
            decided_at = now()
        WHERE a.turn_id = p_tid AND a.call_id = p_call;
        v_outcome := 'recorded';
        IF NOT EXISTS (SELECT 1 FROM approvals a WHERE a.turn_id = p_tid
                       AND a.decision IS NULL) THEN
            UPDATE turns t SET status = {{to:resume}}, last_kick_at = now()
            WHERE t.id = p_tid AND t.status IN {{from:resume}};
            v_resumed := FOUND;
        END IF;
    END IF;
    RETURN QUERY
    SELECT v_outcome, v_resumed, v_sid::text, turnq_turn_json(t, s),
        EXTRACT(EPOCH FROM now() - v_asked)::double precision
    FROM turns t JOIN sessions s ON s.id = t.session_id WHERE t.id = p_tid;
END
$fn$;
