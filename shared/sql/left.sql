-- turnq_left(session, turn, fence)
--
-- A holder that stops running its turn while alive (it lost its lock, was fenced out,
-- or lost Postgres/Redis mid-turn) says so.  Its execution then does not count as a
-- vanished one: if nobody took the turn over yet, turns.fence is cleared (the next
-- claim takes it over without counting); if somebody did, the fence that takeover
-- counted is removed from ``lost_fences``.  No status changes; a no-op when repeated.
CREATE FUNCTION turnq_left(p_sid uuid, p_tid uuid, p_fence bigint)
RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    UPDATE turns t SET lost_fences = array_remove(t.lost_fences, p_fence),
        fence = CASE WHEN t.fence = p_fence AND t.status = {{status:running}} THEN NULL
                     ELSE t.fence END
    WHERE t.id = p_tid AND t.session_id = p_sid
      AND (t.fence = p_fence OR p_fence = ANY(t.lost_fences));
END
$fn$;
