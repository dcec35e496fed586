-- The v1 paginated list: alternates the first page (?limit=20) and the page after it, following
-- the cursor that bench/run.sh read from the first page (passed as: -- CONTENT_ID CURSOR).
dofile("bench/wrk/report.lua")

local pages = {}
local n = 0

function init(args)
  local path = "/api/v1/contents/" .. args[1] .. "/comments?limit=20"
  pages[1] = wrk.format("GET", path)
  pages[2] = wrk.format("GET", path .. "&after=" .. args[2])
end

request = function()
  n = n + 1
  return pages[n % 2 + 1]
end
