-- turnq_take(session, fence, max_lost) -> the holder's next claim
--
-- The caller holds the session row lock under ``fence`` (turnq_claim, turnq_complete,
-- turnq_fail).  Takes the session's lowest open turn, if it can run:
--
-- * queued: claim it (attempts + 1).
-- * running: its previous execution never ended (its holder crashed, was killed, or
--   paused past the lock TTL) unless that holder said it left alive (turns.fence NULL,
--   see turnq_left).  The vanished execution's fence joins ``lost_fences``; once that
--   holds ``max_lost`` fences the turn is failed with ``worker_lost`` (a poison turn
--   that keeps killing its workers), else it is taken over under the new fence.
-- * waiting (paused for a human): nothing runs; later turns wait behind it (FIFO).
--
-- A turn run again (a takeover after its holder vanished, or resumed after its approvals
-- were decided) comes with its saved run state, the decisions and its step journal
-- (``turn.run_state``, ``turn.decisions``, ``turn.journal``): the worker replays the
-- journaled steps and goes on from there.  A first execution (attempts 1) has none.
--
-- Every move is a guarded UPDATE; one that matches nothing lost a race (a cancel
-- committed meanwhile) and the loop looks again.  ``max_lost`` NULL claims nothing.
-- Returns the fence, the turns given up on, the claimed turn (jsonb) and its context.
CREATE FUNCTION turnq_take(p_sid uuid, p_fence bigint, p_max_lost integer)
RETURNS TABLE (
    fence bigint, gave_up text[], turn jsonb,
    summary text, compaction_mark bigint, summary_items jsonb, items jsonb
)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_turn turns%ROWTYPE;
    v_claimed uuid;
    v_lost bigint[];
    v_gave_up text[] := '{}';
BEGIN
    IF p_max_lost IS NOT NULL THEN
        LOOP
            SELECT * INTO v_turn FROM turns t
            WHERE t.session_id = p_sid AND t.status IN {{in:open}}
            ORDER BY t.seq LIMIT 1;
            EXIT WHEN NOT FOUND OR v_turn.status = {{status:waiting}};
            IF v_turn.status = {{status:queued}} THEN
                UPDATE turns t SET status = {{to:claim}}, attempts = t.attempts + 1,
                    started_at = now(), fence = p_fence
                WHERE t.id = v_turn.id AND t.status IN {{from:claim}};
            ELSE
                v_lost := v_turn.lost_fences
                    || CASE WHEN v_turn.fence IS NULL THEN '{}'::bigint[]
                            ELSE ARRAY[v_turn.fence] END;
                IF cardinality(v_lost) >= p_max_lost THEN
                    UPDATE turns t SET status = {{to:give_up}}, error_code = {{code:worker_lost}},
                        error = 'its worker vanished ' || cardinality(v_lost)
                            || ' times while running it (crash, out of memory or kill); '
                            || 'gave up after TURNQ_MAX_ATTEMPTS=' || p_max_lost,
                        lost_fences = v_lost, fence = p_fence, finished_at = now()
                    WHERE t.id = v_turn.id AND t.status IN {{from:give_up}};
                    IF FOUND THEN
                        v_gave_up := v_gave_up || v_turn.id::text;
                    END IF;
                    CONTINUE;
                END IF;
                UPDATE turns t SET status = {{to:takeover}}, attempts = t.attempts + 1,
                    started_at = now(), fence = p_fence, lost_fences = v_lost
                WHERE t.id = v_turn.id AND t.status IN {{from:takeover}}
                  AND t.fence IS NOT DISTINCT FROM v_turn.fence;
            END IF;
            IF FOUND THEN
                v_claimed := v_turn.id;
                EXIT;
            END IF;
        END LOOP;
    END IF;
    RETURN QUERY
    SELECT p_fence, v_gave_up,
        CASE WHEN t.id IS NULL THEN NULL
             WHEN t.attempts <= 1 THEN turnq_turn_json(t, s)
             ELSE turnq_turn_json(t, s) || jsonb_build_object(
                 'run_state', t.run_state,
                 'decisions', (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                                   'call_id', a.call_id, 'decision', a.decision,
                                   'message', a.message)), '[]'::jsonb)
                               FROM approvals a WHERE a.turn_id = t.id),
                 'journal', (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                                 'kind', j.kind, 'key', j.key, 'state', j.state,
                                 'payload', j.payload)), '[]'::jsonb)
                             FROM turn_steps j WHERE j.turn_id = t.id AND NOT j.rolled_back))
        END,
        s.summary, s.compaction_mark, s.summary_items,
        CASE WHEN t.id IS NULL THEN NULL ELSE (
            SELECT COALESCE(jsonb_agg(i.item ORDER BY i.position), '[]'::jsonb)
            FROM items i WHERE i.session_id = p_sid AND i.position >= s.compaction_mark
        ) END
    FROM sessions s LEFT JOIN turns t ON t.id = v_claimed
    WHERE s.id = p_sid;
END
$fn$;
