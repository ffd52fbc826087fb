-- wrk script: pace each connection (JUNCTION_PACE_MS between a response and the next
-- request); with JUNCTION_CANARY=1, a fresh x-user-id per request as canary.lua.
local pace = tonumber(os.getenv("JUNCTION_PACE_MS") or "0")
local counter = 0

-- Uniform in [0, 2 * pace]: the same mean, and connections never fall into lockstep (a
-- constant delay makes every connection fire together, a burst every period).
function delay()
  return math.random(0, 2 * pace)
end

if os.getenv("JUNCTION_CANARY") == "1" then
  request = function()
    counter = counter + 1
    wrk.headers["x-user-id"] = "user-" .. counter
    return wrk.format(nil, nil, wrk.headers)
  end
end
