-- turnq_hold(session, fence, turn) -> the turn's cancel_mode (NULL: none requested)
--
-- Every write a holder makes about its running turn starts here: lock the session row,
-- check the holder's fence, lock the turn row and check it is still running under that
-- fence.  Anything else means another worker owns the session now (I1): SQLSTATE TQ001.
CREATE FUNCTION turnq_hold(p_sid uuid, p_fence bigint, p_tid uuid)
RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
    v_fence bigint;
    v_status text;
    v_turn_fence bigint;
    v_mode text;
BEGIN
    SELECT s.fence INTO v_fence FROM sessions s WHERE s.id = p_sid FOR UPDATE;
    SELECT t.status, t.fence, t.cancel_mode INTO v_status, v_turn_fence, v_mode
    FROM turns t WHERE t.id = p_tid AND t.session_id = p_sid FOR UPDATE;
    IF v_fence IS DISTINCT FROM p_fence OR v_turn_fence IS DISTINCT FROM p_fence
            OR v_status IS DISTINCT FROM {{status:running}} THEN
        RAISE EXCEPTION 'turn %: fence % is stale or the turn is no longer running',
            p_tid, p_fence USING ERRCODE = 'TQ001';
    END IF;
    RETURN v_mode;
END
$fn$;
