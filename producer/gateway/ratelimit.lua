-- Per-user token bucket of the HTTP gateway (producer/gateway/ratelimit.py).
-- KEYS[1] = rate_limit_key(user_id)   HASH {tokens, ts}; PEXPIRE = time to refill + 1 s
-- ARGV[1] = rate (tokens per second), ARGV[2] = burst (bucket size)
-- returns {allowed 1|0, retry_after_ms, tokens left (floor)}
-- The clock is Redis's own (TIME), so gateways on several machines share one bucket
-- without trusting each other's clocks.
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call("HMGET", KEYS[1], "tokens", "ts")
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
    tokens = burst
    ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local allowed = 0
local retry_ms = 0
if tokens >= 1 then
    tokens = tokens - 1
    allowed = 1
else
    retry_ms = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call("HSET", KEYS[1], "tokens", tostring(tokens), "ts", tostring(now))
redis.call("PEXPIRE", KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, retry_ms, math.floor(tokens)}
