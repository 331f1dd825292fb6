-- turnq_claim(session, fence, max_lost) -> a claim (see turnq_take); no row: session gone
--
-- ``fence`` NULL: a new lock holder; bump the session's fence so every older holder's
-- writes are refused (I1), else check it (TQ001 if stale).  Fences grow by a random
-- step: a new holder's claim commits without waiting for its WAL flush (one fsync less
-- per session start; not when it gave up on a turn), and if a crash loses it the next
-- holder's fence is still not the lost one, so a stale worker can never match it.
-- Fence checks are equality checks: a fence only has to be new, not next.
CREATE FUNCTION turnq_claim(p_sid uuid, p_fence bigint, p_max_lost integer)
RETURNS TABLE (
    fence bigint, gave_up text[], turn jsonb,
    summary text, compaction_mark bigint, summary_items jsonb, items jsonb
)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_fence bigint;
    r record;
BEGIN
    IF p_fence IS NULL THEN
        UPDATE sessions s SET fence = s.fence + 1 + floor(random() * 2147483647)::bigint
        WHERE s.id = p_sid RETURNING s.fence INTO v_fence;
        IF v_fence IS NULL THEN
            RETURN;
        END IF;
    ELSE
        SELECT s.fence INTO v_fence FROM sessions s WHERE s.id = p_sid FOR UPDATE;
        IF v_fence IS NULL THEN
            RETURN;
        END IF;
        IF v_fence <> p_fence THEN
            RAISE EXCEPTION 'session %: fence % is stale', p_sid, p_fence
                USING ERRCODE = 'TQ001';
        END IF;
    END IF;
    SELECT * INTO r FROM turnq_take(p_sid, v_fence, p_max_lost);
    IF p_fence IS NULL AND cardinality(r.gave_up) = 0 THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    fence := r.fence; gave_up := r.gave_up; turn := r.turn; summary := r.summary;
    compaction_mark := r.compaction_mark; summary_items := r.summary_items; items := r.items;
    RETURN NEXT;
END
$fn$;
