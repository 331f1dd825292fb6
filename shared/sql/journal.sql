-- turnq_journal(session, fence, turn, kind, key, state, payload)
--
-- One step of a running turn, written as it happens (I14): a model response when it
-- completes (before its tools run), a non-idempotent tool call when it starts, a tool's
-- output when it completes.  Checked against the holder's fence under a share lock on the
-- turn row, so a takeover (which updates the row) waits for it and a stale holder's step
-- is refused (TQ001).  A step already ``done`` is never overwritten.  One round trip.
CREATE FUNCTION turnq_journal(
    p_sid uuid, p_fence bigint, p_tid uuid, p_kind text, p_key text, p_state text,
    p_payload jsonb
)
RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM 1 FROM turns t
    WHERE t.id = p_tid AND t.session_id = p_sid AND t.fence = p_fence
      AND t.status = {{status:running}}
    FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'turn %: fence % is stale or the turn is no longer running',
            p_tid, p_fence USING ERRCODE = 'TQ001';
    END IF;
    INSERT INTO turn_steps (turn_id, kind, key, state, fence, payload, finished_at)
    VALUES (p_tid, p_kind, p_key, p_state, p_fence, p_payload,
            CASE WHEN p_state = 'done' THEN now() END)
    ON CONFLICT (turn_id, kind, key) DO UPDATE
        SET state = EXCLUDED.state, fence = EXCLUDED.fence, payload = EXCLUDED.payload,
            finished_at = EXCLUDED.finished_at
        WHERE turn_steps.state <> 'done';
END
$fn$;
