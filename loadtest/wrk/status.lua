-- GET /v1/members/{id} over the member ids listed in LOYALTY_IDS_FILE (one per line).
local key = os.getenv("LOYALTY_STORE_KEY")
local ids = {}
for line in io.lines(os.getenv("LOYALTY_IDS_FILE")) do ids[#ids + 1] = line end
local i = 0
function request()
  i = i + 1
  return wrk.format("GET", "/v1/members/" .. ids[(i % #ids) + 1], {["Authorization"] = "Bearer " .. key})
end
