-- turnq_pause(session, fence, turn, state, approvals, pending_items, finished_items, tokens,
--             usage, agent, entry, max_lost) -> the turn's status, the next claim
--
-- The run ended with tool calls that need a person's approval: the turn waits (pause),
-- holding no lock and no worker slot.  One fenced transaction stores the run state
-- (server-side only), what the turn produced so far (``pending_items``: the transcript's
-- view of it, not yet in the session's items) and one ``approvals`` row per pending call
-- ({call_id, tool, arguments, agent}); calls decided in an earlier pause keep their rows.
-- The next claim then finds the turn waiting and claims nothing: later turns queue
-- behind it (FIFO) until every call is decided (turnq_decide resumes it).
--
-- A cancel requested meanwhile wins: ``interrupt`` keeps ``finished_items`` (what the turn
-- finished, its pending calls repaired away), ``rollback`` nothing; it ends cancelled.
CREATE FUNCTION turnq_pause(
    p_sid uuid, p_fence bigint, p_tid uuid, p_state jsonb, p_approvals jsonb,
    p_pending_items jsonb, p_finished_items jsonb, p_tokens integer[], p_usage jsonb,
    p_agent text, p_entry text, p_max_lost integer
)
RETURNS TABLE (
    final_status text,
    fence bigint, gave_up text[], turn jsonb,
    summary text, compaction_mark bigint, summary_items jsonb, items jsonb
)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_mode text;
    v_old jsonb;
    v_status text;
BEGIN
    v_mode := turnq_hold(p_sid, p_fence, p_tid);
    SELECT t.usage INTO v_old FROM turns t WHERE t.id = p_tid;
    IF v_mode IS NOT NULL THEN
        IF v_mode = 'rollback' THEN
        UPDATE turn_steps j SET rolled_back = true WHERE j.turn_id = p_tid;
            p_finished_items := '[]'::jsonb;
            p_tokens := '{}';
        END IF;
        PERFORM turnq_append(p_sid, p_tid, p_finished_items, p_tokens, NULL,
            turnq_usage_delta(p_usage, v_old), p_entry,
            CASE WHEN v_mode = 'rollback' THEN NULL ELSE p_agent END);
        UPDATE turns t SET status = {{to:stop}}, usage = p_usage, agent = p_agent,
            run_state = NULL, pending_items = NULL, finished_at = now(),
            error = 'cancelled (' || v_mode || ') while waiting for an approval'
        WHERE t.id = p_tid AND t.status IN {{from:stop}}
        RETURNING t.status INTO v_status;
    ELSE
        PERFORM turnq_append(p_sid, p_tid, '[]'::jsonb, '{}', NULL,
            turnq_usage_delta(p_usage, v_old), p_entry, NULL);
        INSERT INTO approvals (turn_id, call_id, session_id, namespace, user_id, tool,
                               arguments, agent)
        SELECT p_tid, a->>'call_id', p_sid, s.namespace, s.user_id, a->>'tool',
               COALESCE(a->>'arguments', '{}'), a->>'agent'
        FROM jsonb_array_elements(p_approvals) AS a, sessions s
        WHERE s.id = p_sid
        ON CONFLICT (turn_id, call_id) DO NOTHING;
        UPDATE turns t SET status = {{to:pause}}, run_state = p_state,
            pending_items = p_pending_items, usage = p_usage, agent = p_agent
        WHERE t.id = p_tid AND t.status IN {{from:pause}}
        RETURNING t.status INTO v_status;
    END IF;
    IF v_status IS NULL THEN
        RAISE EXCEPTION 'turn %: lost a race while pausing it', p_tid USING ERRCODE = 'TQ001';
    END IF;
    RETURN QUERY SELECT v_status, c.* FROM turnq_take(p_sid, p_fence, p_max_lost) AS c;
END
$fn$;
