-- Release a session lock only if we still hold it (compare-and-delete), and take the
-- "kicked while held" mark with it.
-- KEYS[1] = lock_key(session_id), KEYS[2] = kicked_key(session_id)
-- ARGV[1] = our token
-- returns {released, kicked}: {1, 1} a kick came while we held it; {1, 0} none did;
-- {0, 0} the lock was someone else's or gone (the mark, if any, is theirs).
if redis.call("GET", KEYS[1]) == ARGV[1] then
    redis.call("DEL", KEYS[1])
    if redis.call("GETDEL", KEYS[2]) then
        return {1, 1}
    end
    return {1, 0}
end
return {0, 0}
