-- turnq_expire_approvals(namespace, default ttl s, per-agent ttl {agent: s}, limit)
--   -> (id of a session whose turn resumed, approvals expired by this call): one row per
--      resumed session, or one with a NULL session when none resumed; no row: none expired
--
-- Beat: approvals nobody decided within their TTL are rejected as ``expired`` with a
-- message the model sees ("approval timed out"), oldest first, at most ``limit`` per run;
-- a turn whose every call is decided resumes (like turnq_decide).  Rows another
-- transaction holds (a decision being made) are skipped, never waited for.
CREATE FUNCTION turnq_expire_approvals(
    p_ns text, p_ttl double precision, p_ttls jsonb, p_limit integer
)
RETURNS TABLE (session_id text, expired integer)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_turns uuid[];
    v_count integer;
BEGIN
    WITH due AS (
        SELECT a.turn_id, a.call_id FROM approvals a
        WHERE a.namespace = p_ns AND a.decision IS NULL
          AND a.requested_at < now() - make_interval(
                secs => COALESCE((p_ttls->>a.agent)::double precision, p_ttl))
        ORDER BY a.requested_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), done AS (
        UPDATE approvals a SET decision = 'expired', message = 'approval timed out',
            decided_by = 'turnq:expiry', decided_at = now()
        FROM due WHERE a.turn_id = due.turn_id AND a.call_id = due.call_id
        RETURNING a.turn_id
    )
    SELECT array_agg(DISTINCT done.turn_id), count(*) INTO v_turns, v_count FROM done;
    IF v_count = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH ready AS (
        UPDATE turns t SET status = {{to:resume}}, last_kick_at = now()
        WHERE t.id = ANY(v_turns) AND t.status IN {{from:resume}}
          AND NOT EXISTS (SELECT 1 FROM approvals a WHERE a.turn_id = t.id
                          AND a.decision IS NULL)
        RETURNING t.session_id
    )
    SELECT r.session_id::text, v_count FROM ready r
    UNION ALL
    SELECT NULL, v_count WHERE NOT EXISTS (SELECT 1 FROM ready);
END
$fn$;
