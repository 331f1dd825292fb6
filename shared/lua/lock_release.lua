-- Release a session lock only if we still hold it (compare-and-delete).
-- KEYS[1] = lock_key(session_id)
-- ARGV[1] = our token
-- returns 1 if deleted, 0 if the lock was someone else's or gone.
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
