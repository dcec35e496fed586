-- GET scenarios (health check, original list): the URL on wrk's command line is the request,
-- the same bytes every time; this script only adds the report.
dofile("bench/wrk/report.lua")
