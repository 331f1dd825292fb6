-- Heartbeat of a session lock.
-- KEYS[1] = lock_key(session_id)
-- ARGV[1] = our token, ARGV[2] = TTL in milliseconds
-- returns 1: renewed; 2: the key is gone; 0: someone else holds it now (we lost it:
-- stop, the fence refuses our writes anyway).
-- Our token with a kick's mark after it ("+", lock_acquire.lua) is still ours.
-- A missing key is NOT re-created here: it is gone after a Redis flush or restart (we
-- still own the session), but also after it expired under a paused holder (someone may
-- have taken the session over since).  The holder takes it back (SET NX) only after
-- checking in Postgres that its fence is still the session's (shared/locks.py).
local current = redis.call("GET", KEYS[1])
if current == ARGV[1] or current == ARGV[1] .. "+" then
    redis.call("PEXPIRE", KEYS[1], ARGV[2])
    return 1
end
if not current then
    return 2
end
return 0
