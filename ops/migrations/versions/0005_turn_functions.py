"""Claim and complete a turn in one round trip each.

A turn used to cost ~25 Postgres round trips in the worker (a fence bump, a claim,
two context reads and a four-statement commit, each with BEGIN/COMMIT and a pool
ping).  These two functions do the same work, with the same row locks and the same
transitions (``shared.status``), in one statement each, so a worker runs them in
autocommit mode: one round trip to claim a turn with its context, one to commit it
and claim the next.  See docs/decisions/0005-one-round-trip-per-step.md.

``turnq_claim(session, fence, max_attempts)``
    ``fence`` NULL: bump the session's fence (a new lock holder), else check it.
    Fails turns that used ``max_attempts`` (returned in ``gave_up``), marks the lowest
    pending turn running and returns it with the session's context.  No row: the
    session is gone.  ``max_attempts`` NULL: claim nothing (just the fence).
``turnq_complete(session, fence, turn, items, tokens, output, usage, ctx, max_attempts)``
    Appends the items and finishes the turn (succeeded, or cancelled when a cancel
    request was recorded; ``rollback`` drops the items), then claims the next turn
    exactly as ``turnq_claim`` does.

Both raise SQLSTATE TQ001 when the fence is stale (another worker owns the session).

A new holder's claim commits without waiting for its WAL flush (``synchronous_commit``
off for that transaction; not when it gave up on a turn): a crash can lose it, but
then the turn is simply queued again, and the worker's completion (a synchronous
commit, which flushes everything before it) can never pass on a lost fence, because
fences grow by a random step: the next holder's fence is not the one that was lost.
Fence checks are equality checks, so a fence only has to be new, not next.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# What a claim returns: the fence, turns given up on, the claimed turn, its context.
CLAIM_COLUMNS = """
    fence bigint, gave_up text[],
    id text, session_id text, seq integer, status text, input text, output text,
    error text, attempts integer, usage jsonb, context_tokens integer,
    idempotency_key text, queued_at timestamptz, started_at timestamptz,
    finished_at timestamptz, user_id text, session_key text,
    summary text, compaction_mark bigint, summary_items jsonb, items jsonb
"""

CLAIM = f"""
CREATE OR REPLACE FUNCTION turnq_claim(p_sid uuid, p_fence bigint, p_max_attempts integer)
RETURNS TABLE ({CLAIM_COLUMNS})
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_fence bigint;
    v_turn turns%ROWTYPE;
    v_gave_up text[] := '{{}}';
BEGIN
    IF p_fence IS NULL THEN
        UPDATE sessions s SET fence = s.fence + 1 + floor(random() * 2147483647)::bigint
        WHERE s.id = p_sid RETURNING s.fence INTO v_fence;
        IF v_fence IS NULL THEN
            RETURN;
        END IF;
    ELSE
        SELECT s.fence INTO v_fence FROM sessions s WHERE s.id = p_sid FOR UPDATE;
        IF v_fence IS DISTINCT FROM p_fence THEN
            RAISE EXCEPTION 'session %: fence % is stale', p_sid, p_fence
                USING ERRCODE = 'TQ001';
        END IF;
    END IF;
    IF p_max_attempts IS NOT NULL THEN
        LOOP
            SELECT * INTO v_turn FROM turns t
            WHERE t.session_id = p_sid AND t.status IN ('queued', 'running')
            ORDER BY t.seq LIMIT 1;
            EXIT WHEN NOT FOUND OR v_turn.attempts < p_max_attempts;
            UPDATE turns t SET status = 'failed', finished_at = now(),
                error = 'gave up after ' || v_turn.attempts || ' attempts that did not '
                    || 'finish (its worker died or lost Postgres/Redis each time)'
            WHERE t.id = v_turn.id;
            v_gave_up := v_gave_up || v_turn.id::text;
        END LOOP;
        IF v_turn.id IS NOT NULL THEN
            UPDATE turns t SET status = 'running', attempts = t.attempts + 1,
                started_at = now(), fence = v_fence
            WHERE t.id = v_turn.id;
        END IF;
    END IF;
    IF p_fence IS NULL AND cardinality(v_gave_up) = 0 THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    RETURN QUERY
    SELECT v_fence, v_gave_up,
        t.id::text, t.session_id::text, t.seq, t.status, t.input, t.output, t.error,
        t.attempts, t.usage, t.context_tokens, t.idempotency_key, t.queued_at,
        t.started_at, t.finished_at, s.user_id, s.key,
        s.summary, s.compaction_mark, s.summary_items,
        CASE WHEN t.id IS NULL THEN NULL ELSE (
            SELECT COALESCE(jsonb_agg(i.item ORDER BY i.position), '[]'::jsonb)
            FROM items i WHERE i.session_id = p_sid AND i.position >= s.compaction_mark
        ) END
    FROM sessions s LEFT JOIN turns t ON t.id = v_turn.id
    WHERE s.id = p_sid;
END
$fn$
"""

COMPLETE = f"""
CREATE OR REPLACE FUNCTION turnq_complete(
    p_sid uuid, p_fence bigint, p_tid uuid, p_items jsonb, p_tokens integer[],
    p_output text, p_usage jsonb, p_ctx integer, p_max_attempts integer
)
RETURNS TABLE (after_tokens integer, final_status text, {CLAIM_COLUMNS})
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_fence bigint;
    v_status text;
    v_mode text;
    v_turn_fence bigint;
    v_count bigint;
    v_after integer;
    v_n integer;
BEGIN
    SELECT s.fence INTO v_fence FROM sessions s WHERE s.id = p_sid FOR UPDATE;
    SELECT t.status, t.cancel_mode, t.fence INTO v_status, v_mode, v_turn_fence
    FROM turns t WHERE t.id = p_tid AND t.session_id = p_sid FOR UPDATE;
    IF v_fence IS DISTINCT FROM p_fence OR v_status IS DISTINCT FROM 'running'
            OR v_turn_fence IS DISTINCT FROM p_fence THEN
        RAISE EXCEPTION 'turn %: fence % is stale or the turn is no longer running',
            p_tid, p_fence USING ERRCODE = 'TQ001';
    END IF;
    IF v_mode = 'rollback' THEN
        p_items := '[]'::jsonb;
        p_tokens := '{{}}';
        p_ctx := NULL;
        p_output := NULL;
    END IF;
    v_n := jsonb_array_length(p_items);
    UPDATE sessions s SET item_count = s.item_count + v_n, updated_at = now(),
        transcript_tokens = s.transcript_tokens
            + COALESCE((SELECT sum(x) FROM unnest(p_tokens) AS x), 0),
        context_tokens = COALESCE(p_ctx, s.context_tokens)
    WHERE s.id = p_sid
    RETURNING s.item_count, s.context_tokens INTO v_count, v_after;
    INSERT INTO items (session_id, position, turn_id, item, tokens)
    SELECT p_sid, v_count - v_n + e.ord - 1, p_tid, e.item, p_tokens[e.ord]
    FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(item, ord);
    v_status := CASE WHEN v_mode IS NULL THEN 'succeeded' ELSE 'cancelled' END;
    UPDATE turns t SET status = v_status, output = p_output,
        error = CASE WHEN v_mode IS NULL THEN NULL ELSE 'cancelled (' || v_mode || ')' END,
        usage = p_usage, context_tokens = p_ctx, finished_at = now()
    WHERE t.id = p_tid;
    RETURN QUERY SELECT v_after, v_status, c.*
        FROM turnq_claim(p_sid, p_fence, p_max_attempts) AS c;
END
$fn$
"""


def upgrade() -> None:
    op.execute(CLAIM)
    op.execute(COMPLETE)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION IF EXISTS turnq_complete(uuid, bigint, uuid, jsonb, integer[], "
        "text, jsonb, integer, integer)"
    )
    op.execute("DROP FUNCTION IF EXISTS turnq_claim(uuid, bigint, integer)")
