-- Take a session lock, or mark it "kicked while held" if someone holds it.
-- KEYS[1] = lock_key(session_id)
-- ARGV[1] = our token, ARGV[2] = TTL in milliseconds
-- returns 1: taken; 0: held by another, who finds the mark when it releases.
-- The mark is a "+" after the holder's token (tokens all have one length), written in the
-- same atomic step that saw the lock held and living exactly as long as the lock: a
-- holder that releases either sees it (and looks for the kick's turn) or released before
-- this ran (and then this took the lock).  No kick falls between (docs/decisions/0012).
if redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
    return 1
end
redis.call("SETRANGE", KEYS[1], string.len(ARGV[1]), "+")
return 0
