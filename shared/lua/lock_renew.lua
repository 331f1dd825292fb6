-- Heartbeat of a session lock.
-- KEYS[1] = lock_key(session_id)
-- ARGV[1] = our token, ARGV[2] = TTL in milliseconds
-- returns 1: renewed; 2: the key was gone (Redis restarted or flushed) and we took it
-- back with our token; 0: someone else holds it now (we lost it: stop, the fence
-- will refuse our writes anyway).
local current = redis.call("GET", KEYS[1])
if current == ARGV[1] then
    redis.call("PEXPIRE", KEYS[1], ARGV[2])
    return 1
end
if not current then
    redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
    return 2
end
return 0
