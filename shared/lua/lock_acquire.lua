-- Take a session lock, or mark the session "kicked while held" if someone holds it.
-- KEYS[1] = lock_key(session_id), KEYS[2] = kicked_key(session_id)
-- ARGV[1] = our token, ARGV[2] = TTL in milliseconds
-- returns 1: taken; 0: held by another, who now finds the mark when it releases.
-- The mark is set in the same atomic step that saw the lock held, so a holder that
-- releases either sees it (and looks for the kick's turn) or released before this ran
-- (and then this took the lock): no kick falls between the two (docs/decisions/0012).
if redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
    return 1
end
redis.call("SET", KEYS[2], "1", "PX", ARGV[2])
return 0
