-- Release a session lock only if we still hold it (compare-and-delete).
-- KEYS[1] = lock_key(session_id)
-- ARGV[1] = our token
-- returns {released, kicked}: {1, 1} a kick found it held (lock_acquire.lua's "+" mark);
-- {1, 0} none did; {0, 0} the lock was someone else's or gone.
local current = redis.call("GET", KEYS[1])
if current == ARGV[1] or current == ARGV[1] .. "+" then
    redis.call("DEL", KEYS[1])
    return {1, current == ARGV[1] and 0 or 1}
end
return {0, 0}
