-- turnq_turn_json(turn row, its session row) -> the turn as the store's records read it
--
-- The turn's columns and its session's: owner, key, entry and active agent.  One
-- definition for every function that hands out a turn (turnq_take, turnq_cancel).  A
-- paused run's state stays server-side: only turnq_take adds it, for the worker.
CREATE FUNCTION turnq_turn_json(t turns, s sessions)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $fn$
BEGIN
    RETURN (to_jsonb(t) - 'run_state') || jsonb_build_object(
        'user_id', s.user_id, 'session_key', s.key,
        'entry_agent', s.entry_agent, 'active_agent', s.active_agent
    );
END
$fn$;
