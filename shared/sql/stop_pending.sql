-- turnq_stop_pending(session, before_seq, mode) -> ids of running turns asked to stop
--
-- A new message with multitask_strategy ``interrupt`` or ``rollback``: the session's
-- earlier turns that have not run or are paused are cancelled now (cancel; a paused
-- turn's pending approvals are closed and, under interrupt, what it finished is kept:
-- turnq_close_waiting); the one running is asked to stop (its holder commits it
-- ``cancelled``).  The caller holds the session row lock (the enqueue's upsert).
CREATE FUNCTION turnq_stop_pending(p_sid uuid, p_before integer, p_mode text)
RETURNS SETOF text
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM turnq_close_waiting(t.id, p_mode, 'turnq:' || p_mode)
    FROM turns t
    WHERE t.session_id = p_sid AND t.seq < p_before AND t.status = {{status:waiting}}
    ORDER BY t.seq;
    UPDATE turns t SET status = {{to:cancel}}, finished_at = now(), cancel_mode = p_mode,
        cancel_requested_at = now(),
        error = 'cancelled: ' || p_mode || ' by turn ' || p_before
    WHERE t.session_id = p_sid AND t.seq < p_before AND t.status IN {{from:cancel}};
    IF p_mode = 'rollback' THEN
        UPDATE turn_steps j SET rolled_back = true
        FROM turns t
        WHERE j.turn_id = t.id AND t.session_id = p_sid AND t.seq < p_before
          AND t.status = {{status:cancelled}} AND NOT j.rolled_back;
    END IF;
    RETURN QUERY
    UPDATE turns t SET cancel_mode = COALESCE(t.cancel_mode, p_mode),
        cancel_requested_at = COALESCE(t.cancel_requested_at, now())
    WHERE t.session_id = p_sid AND t.status = {{status:running}}
    RETURNING t.id::text;
END
$fn$;
