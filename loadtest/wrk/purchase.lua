-- POST /v1/purchases (202 once durable in the log; LOYALTY_WAIT_MS > 0 waits for the effect),
-- unique event ids per thread and run, members from LOYALTY_IDS_FILE.
local key = os.getenv("LOYALTY_STORE_KEY")
local wait = os.getenv("LOYALTY_WAIT_MS") or "0"
local run = os.getenv("LOYALTY_RUN") or tostring(os.time())
local ids = {}
for line in io.lines(os.getenv("LOYALTY_IDS_FILE")) do ids[#ids + 1] = line end
local counter = 0
tid = 0
local n = 0
function setup(thread)
  thread:set("tid", n)
  n = n + 1
end
function request()
  counter = counter + 1
  local m = ids[((counter * 7 + tid) % #ids) + 1]
  local body = string.format('{"event_id":"b-%s-%d-%d","member_id":"%s","amount_cents":%d,"currency":"EUR"}',
    run, tid, counter, m, 100 + (counter % 900))
  local path = "/v1/purchases"
  if wait ~= "0" then path = path .. "?wait_ms=" .. wait end
  return wrk.format("POST", path, {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}, body)
end
