-- Paced wrk (loadtest/als/bench_envoy.py): every connection waits about WRK_DELAY_MS
-- between requests; the number of connections sets the rate. The wait is uniform in
-- [0, 2 * WRK_DELAY_MS] whole milliseconds (wrk truncates to ms): the same mean, and the
-- connections do not fall into lockstep (a constant delay fires them all together).
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "0")

function delay()
  return math.random(0, 2 * delay_ms)
end
