-- Enrols members with phones +3361NNNNNNN, NNNNNNN cycling over LOYALTY_MEMBERS numbers, so a
-- long run enrols exactly that many members (later requests find them already enrolled).
local key = os.getenv("LOYALTY_STORE_KEY")
local members = tonumber(os.getenv("LOYALTY_MEMBERS") or "100000")
local threads = tonumber(os.getenv("WRK_THREADS") or "2")
local counter = 0
tid = 0
local n = 0
function setup(thread)
  thread:set("tid", n)
  n = n + 1
end
function request()
  local id = (counter * threads + tid) % members
  counter = counter + 1
  local body = string.format('{"phone":"+3361%07d"}', id)
  return wrk.format("POST", "/v1/members", {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}, body)
end
