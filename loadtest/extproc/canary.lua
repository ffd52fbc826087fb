-- wrk script: a fresh x-user-id on every request (canary buckets, no pin).
local counter = 0

request = function()
  counter = counter + 1
  wrk.headers["x-user-id"] = "user-" .. counter
  return wrk.format(nil, nil, wrk.headers)
end
