-- wrk script: POST LOOKUP_PATH (default /api/helpdesk/lookup) with a bearer token, 8-digit
-- key IDs read from QUERIES (one per line: half present in the store, half absent), round
-- robin per thread. TOKEN and QUERIES come from the environment (see benches/README.md).
-- Every answer is checked: 200 must carry EXPECT_200 in its body (the recovery password
-- field for the lookup), 404 the uniform not-found answer; anything else counts as "other".
-- The counts are printed at the end so a run that measured errors is visible.
local token = os.getenv("TOKEN")
local path = os.getenv("LOOKUP_PATH") or "/api/helpdesk/lookup"
local expect_200 = os.getenv("EXPECT_200") or '"recovery_password":"'
local queries = {}
for line in io.lines(os.getenv("QUERIES")) do
  queries[#queries + 1] = line
end
local i = 0
local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Bearer " .. token,
}
local threads = {}

function setup(thread)
  thread:set("start", math.random(#queries))
  table.insert(threads, thread)
end

function init(args)
  i = start or 0
  shown, not_found, other = 0, 0, 0
end

request = function()
  i = i % #queries + 1
  local body = '{"key_id":"' .. queries[i] .. '","reason":"Lost PIN"}'
  return wrk.format("POST", path, headers, body)
end

response = function(status, headers, body)
  if status == 200 and string.find(body, expect_200, 1, true) then
    shown = shown + 1
  elseif status == 404 and string.find(body, '"code":"not_found"', 1, true) then
    not_found = not_found + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local s, n, o = 0, 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("shown")
    n = n + t:get("not_found")
    o = o + t:get("other")
  end
  io.write(string.format("checked: %d 200-with-body, %d 404-not-found, %d other\n", s, n, o))
end
