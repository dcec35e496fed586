-- 90/10 read/write: nine GETs of the original list of an item seeded with 20 comments (content
-- id given as: -- CONTENT_ID), then one POST. The POSTs go to 1000 other ids (200000 up) so the
-- list being read keeps its 20 comments for the whole run.
dofile("bench/wrk/report.lua")

local n = 0
local read
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  read = wrk.format("GET", "/api/comment/list/" .. args[1])
end

request = function()
  n = n + 1
  if n % 10 ~= 0 then
    return read
  end
  local body = string.format(
    '{"email":"bench@example.com","comment":"mix comment %d","content_id":%d}', n, 200000 + n % 1000)
  return wrk.format("POST", "/api/comment/new", headers, body)
end
