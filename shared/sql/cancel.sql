-- turnq_cancel(turn, user, namespace, mode) -> (outcome, turn jsonb); no row: not found
--
-- A user's cancel request, decided under the turn's row lock:
--   cancelled   queued or waiting: cancelled now (cancel), by this call; a waiting
--               turn's pending approvals are closed (``cancelled``) and, under interrupt,
--               what it finished is kept (turnq_close_waiting)
--   requested   running: ``cancel_mode`` recorded; its holder stops at the next safe
--               point and commits it ``cancelled`` (turnq_complete / turnq_fail)
--   already     it was cancelled before
--   finished    it succeeded or failed: nothing to cancel
-- Another user's turn is not found, exactly like a missing one (I10).
CREATE FUNCTION turnq_cancel(p_tid uuid, p_user text, p_ns text, p_mode text)
RETURNS TABLE (outcome text, turn jsonb)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_status text;
    v_outcome text;
BEGIN
    -- The session row first, then the turn's: the order of every writer (turnq_hold, an
    -- enqueue's turnq_stop_pending), so closing a waiting turn cannot deadlock with them.
    PERFORM 1 FROM sessions s JOIN turns t ON t.session_id = s.id
    WHERE t.id = p_tid AND s.user_id = p_user AND s.namespace = p_ns
    FOR UPDATE OF s;
    SELECT t.status INTO v_status FROM turns t JOIN sessions s ON s.id = t.session_id
    WHERE t.id = p_tid AND s.user_id = p_user AND s.namespace = p_ns
    FOR UPDATE OF t;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v_status = {{status:cancelled}} THEN
        v_outcome := 'already';
    ELSIF v_status IN {{in:terminal}} THEN
        v_outcome := 'finished';
    ELSIF v_status = {{status:running}} THEN
        UPDATE turns t SET cancel_mode = COALESCE(t.cancel_mode, p_mode),
            cancel_requested_at = COALESCE(t.cancel_requested_at, now())
        WHERE t.id = p_tid;
        v_outcome := 'requested';
    ELSE
        PERFORM turnq_close_waiting(p_tid, p_mode, 'turnq:cancel');
        UPDATE turns t SET status = {{to:cancel}}, finished_at = now(),
            error = CASE WHEN v_status = {{status:waiting}}
                         THEN 'cancelled while waiting for an approval'
                         ELSE 'cancelled before it ran' END,
            cancel_mode = p_mode, cancel_requested_at = now()
        WHERE t.id = p_tid AND t.status IN {{from:cancel}};
        v_outcome := CASE WHEN FOUND THEN 'cancelled' ELSE 'lost_race' END;
        IF p_mode = 'rollback' THEN
            UPDATE turn_steps j SET rolled_back = true WHERE j.turn_id = p_tid;
        END IF;
    END IF;
    RETURN QUERY
    SELECT v_outcome, turnq_turn_json(t, s)
    FROM turns t JOIN sessions s ON s.id = t.session_id WHERE t.id = p_tid;
END
$fn$;
