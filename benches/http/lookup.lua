-- wrk script: POST /api/helpdesk/lookup with a bearer token, 8-digit key IDs read from
-- QUERIES (one per line: half present in the store, half absent), round robin per thread.
-- TOKEN and QUERIES come from the environment (see benches/README.md).
local token = os.getenv("TOKEN")
local path = os.getenv("LOOKUP_PATH") or "/api/helpdesk/lookup"
local queries = {}
for line in io.lines(os.getenv("QUERIES")) do
  queries[#queries + 1] = line
end
local i = 0
local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Bearer " .. token,
}

function setup(thread)
  thread:set("start", math.random(#queries))
end

function init(args)
  i = start or 0
end

request = function()
  i = i % #queries + 1
  local body = '{"key_id":"' .. queries[i] .. '","reason":"Lost PIN"}'
  return wrk.format("POST", path, headers, body)
end
