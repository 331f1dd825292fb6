-- turnq_complete(session, fence, turn, items, tokens, output, usage, ctx, max_lost,
--                output_json, agent, entry)
--   -> the session's context tokens after it, the turn's final status, the next claim
--
-- Appends the turn's items and finishes it, then claims the session's next turn
-- (turnq_take): one statement, so one round trip per turn.  A cancel request recorded
-- meanwhile decides the outcome here, under the turn's row lock: ``rollback`` writes
-- no items, ``interrupt`` keeps them (the caller passes them repaired); both end
-- ``cancelled`` (stop), otherwise the turn succeeds.  ``agent`` (who answered) becomes the
-- session's active agent, where its next turn starts (not after a rollback: the turn left
-- no trace).  The usage is added to the session's.  TQ001 if the fence is stale.
CREATE FUNCTION turnq_complete(
    p_sid uuid, p_fence bigint, p_tid uuid, p_items jsonb, p_tokens integer[],
    p_output text, p_usage jsonb, p_ctx integer, p_max_lost integer,
    p_output_json jsonb, p_agent text, p_entry text
)
RETURNS TABLE (
    after_tokens integer, final_status text,
    fence bigint, gave_up text[], turn jsonb,
    summary text, compaction_mark bigint, summary_items jsonb, items jsonb
)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_mode text;
    v_old jsonb;
    v_after integer;
    v_status text;
BEGIN
    v_mode := turnq_hold(p_sid, p_fence, p_tid);
    SELECT t.usage INTO v_old FROM turns t WHERE t.id = p_tid;
    IF v_mode = 'rollback' THEN
        UPDATE turn_steps j SET rolled_back = true WHERE j.turn_id = p_tid;
        p_items := '[]'::jsonb;
        p_tokens := '{}';
        p_ctx := NULL;
        p_output := NULL;
        p_output_json := NULL;
    END IF;
    v_after := turnq_append(p_sid, p_tid, p_items, p_tokens, p_ctx,
        turnq_usage_delta(p_usage, v_old), p_entry,
        CASE WHEN v_mode = 'rollback' THEN NULL ELSE p_agent END);
    IF v_mode IS NULL THEN
        UPDATE turns t SET status = {{to:succeed}}, output = p_output, usage = p_usage,
            output_json = p_output_json, agent = p_agent, run_state = NULL, pending_items = NULL,
            context_tokens = p_ctx, finished_at = now()
        WHERE t.id = p_tid AND t.status IN {{from:succeed}}
        RETURNING t.status INTO v_status;
    ELSE
        UPDATE turns t SET status = {{to:stop}}, output = p_output, usage = p_usage,
            output_json = p_output_json, agent = p_agent, run_state = NULL, pending_items = NULL,
            context_tokens = p_ctx, finished_at = now(),
            error = 'cancelled (' || v_mode || ')'
        WHERE t.id = p_tid AND t.status IN {{from:stop}}
        RETURNING t.status INTO v_status;
    END IF;
    IF v_status IS NULL THEN
        RAISE EXCEPTION 'turn %: lost a race while finishing it', p_tid USING ERRCODE = 'TQ001';
    END IF;
    RETURN QUERY SELECT v_after, v_status, c.*
        FROM turnq_take(p_sid, p_fence, p_max_lost) AS c;
END
$fn$;
