-- POST /api/comment/new with a fresh body each request (a counter in the comment), spread over
-- 1000 content ids from 100000 up, so the items read by the other scenarios never grow.
dofile("bench/wrk/report.lua")

local n = 0
local headers = { ["Content-Type"] = "application/json" }

request = function()
  n = n + 1
  local body = string.format(
    '{"email":"bench@example.com","comment":"bench comment %d","content_id":%d}', n, 100000 + n % 1000)
  return wrk.format("POST", "/api/comment/new", headers, body)
end
