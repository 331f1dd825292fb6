-- turnq_fail(session, fence, turn, code, error, items, tokens, usage, max_lost, agent, entry)
--   -> the turn's final status, the next claim
--
-- Ends the holder's running turn ``failed`` with its error code and reason, appending
-- ``items`` (what the failure keeps in the transcript; usually nothing), then claims the
-- session's next turn.  A cancel request recorded meanwhile wins: the turn ends
-- ``cancelled`` (``rollback`` keeps no items).  The usage the failed run spent is added
-- to the session's; ``agent`` is who was running.  TQ001 if the fence is stale.
CREATE FUNCTION turnq_fail(
    p_sid uuid, p_fence bigint, p_tid uuid, p_code text, p_error text,
    p_items jsonb, p_tokens integer[], p_usage jsonb, p_max_lost integer, p_agent text,
    p_entry text
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
    IF v_mode = 'rollback' THEN
        UPDATE turn_steps j SET rolled_back = true WHERE j.turn_id = p_tid;
        p_items := '[]'::jsonb;
        p_tokens := '{}';
    END IF;
    PERFORM turnq_append(p_sid, p_tid, p_items, p_tokens, NULL,
        turnq_usage_delta(p_usage, v_old), p_entry, NULL);
    IF v_mode IS NULL THEN
        UPDATE turns t SET status = {{to:fail}}, error_code = p_code, error = p_error,
            usage = p_usage, agent = p_agent, run_state = NULL, pending_items = NULL,
            finished_at = now()
        WHERE t.id = p_tid AND t.status IN {{from:fail}}
        RETURNING t.status INTO v_status;
    ELSE
        UPDATE turns t SET status = {{to:stop}}, usage = p_usage, agent = p_agent,
            run_state = NULL, pending_items = NULL, finished_at = now(),
            error = 'cancelled (' || v_mode || ')'
        WHERE t.id = p_tid AND t.status IN {{from:stop}}
        RETURNING t.status INTO v_status;
    END IF;
    IF v_status IS NULL THEN
        RAISE EXCEPTION 'turn %: lost a race while failing it', p_tid USING ERRCODE = 'TQ001';
    END IF;
    RETURN QUERY SELECT v_status, c.* FROM turnq_take(p_sid, p_fence, p_max_lost) AS c;
END
$fn$;
