-- turnq_expire_journal(namespace, age s, limit) -> steps removed
--
-- Beat: the journal of turns finished longer than ``age`` ago (kept until then for audit:
-- what the model answered at each step, with usage) is deleted in one bounded batch.
CREATE FUNCTION turnq_expire_journal(p_ns text, p_age double precision, p_limit integer)
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    v_n integer;
BEGIN
    WITH doomed AS (
        SELECT j.turn_id, j.kind, j.key FROM turn_steps j
        JOIN turns t ON t.id = j.turn_id JOIN sessions s ON s.id = t.session_id
        WHERE s.namespace = p_ns AND t.status IN {{in:terminal}}
          AND t.finished_at < now() - make_interval(secs => p_age)
        ORDER BY j.created_at
        LIMIT p_limit
        FOR UPDATE OF j SKIP LOCKED
    )
    DELETE FROM turn_steps j USING doomed d
    WHERE j.turn_id = d.turn_id AND j.kind = d.kind AND j.key = d.key;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$fn$;
