-- turnq_usage_delta(new, old) -> what a turn's usage grew by
--
-- A turn's stored usage is cumulative (a paused turn's, then the resumed run's added);
-- the session's counters get only the growth, so nothing is counted twice.
CREATE FUNCTION turnq_usage_delta(p_new jsonb, p_old jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
    k text;
    v_out jsonb := '{}'::jsonb;
BEGIN
    IF p_new IS NULL THEN
        RETURN NULL;
    END IF;
    FOREACH k IN ARRAY ARRAY['requests', 'input_tokens', 'cached_tokens', 'output_tokens',
                             'reasoning_tokens'] LOOP
        v_out := v_out || jsonb_build_object(k,
            COALESCE((p_new->>k)::bigint, 0) - COALESCE((p_old->>k)::bigint, 0));
    END LOOP;
    RETURN v_out;
END
$fn$;
