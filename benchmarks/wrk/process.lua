-- wrk script for POST /api/v1/alerts/process (benchmarks/api.py runs it).
--
--   wrk -t2 -c100 -d10s --timeout 10s -s benchmarks/wrk/process.lua URL -- KEYS BATCH RUN REPEAT_KEYS
--
-- KEYS = "fresh": every alert has a proposition key never sent before (a new merchant);
--        "repeat": keys cycle over REPEAT_KEYS merchants the benchmark answered beforehand.
-- BATCH = alerts per request (1 sends one alert object, more send a list).
-- The API token, if any, comes from the WRK_API_TOKEN environment variable (never the command line).
-- At the end one line "WRK_JSON {...}" carries latency percentiles (microseconds), the summary,
-- and per-status, per-tier, degraded and Retry-After counts gathered from every thread.

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local keys, batch, run, repeat_keys, id
local counter = 0
statuses, tiers, degraded = {}, {}, {}
retry_after = 0

function init(args)
  keys = args[1] or "fresh"
  batch = tonumber(args[2] or "1")
  run = args[3] or "run"
  repeat_keys = tonumber(args[4] or "200")
  id = wrk.thread:get("id")
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  local token = os.getenv("WRK_API_TOKEN")
  if token and token ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. token
  end
end

local function alert(n, i)
  local merchant
  if keys == "fresh" then
    merchant = string.format("api-fresh-%s-%d-%d-%d", run, id, n, i)
  else
    merchant = string.format("api-repeat-%s-%04d", run, (id * 7919 + n * batch + i) % repeat_keys)
  end
  return string.format(
    '{"id":"api-%s-%s-%d-%d-%d","type":"scam","timestamp":%d,"severity":"high","source":"fraud-detector",'
      .. '"attributes":{"pattern":"card_testing","merchant":"%s","amount":42.5}}',
    run, keys, id, n, i, os.time(), merchant)
end

function request()
  counter = counter + 1
  local body
  if batch == 1 then
    body = alert(counter, 1)
  else
    local items = {}
    for i = 1, batch do
      items[i] = alert(counter, i)
    end
    body = "[" .. table.concat(items, ",") .. "]"
  end
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if headers["Retry-After"] or headers["retry-after"] then
    retry_after = retry_after + 1
  end
  if status == 200 then
    for tier in body:gmatch('"cache_tier":"(%a+)"') do
      tiers[tier] = (tiers[tier] or 0) + 1
    end
    for reason in body:gmatch('"reason":"([^"]+)"') do
      degraded[reason] = (degraded[reason] or 0) + 1
    end
  end
end

local function merge(into, from)
  for k, v in pairs(from or {}) do
    into[k] = (into[k] or 0) + v
  end
end

local function object(t, quote_keys)
  local parts = {}
  for k, v in pairs(t) do
    table.insert(parts, string.format('"%s":%s', tostring(k), tostring(v)))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local all_statuses, all_tiers, all_degraded, all_retry_after = {}, {}, {}, 0
  for _, thread in ipairs(threads) do
    merge(all_statuses, thread:get("statuses"))
    merge(all_tiers, thread:get("tiers"))
    merge(all_degraded, thread:get("degraded"))
    all_retry_after = all_retry_after + (thread:get("retry_after") or 0)
  end
  local lat = {}
  for _, p in ipairs({50, 90, 99, 99.9}) do
    lat[string.format('p%s_us', tostring(p):gsub("%.", "_"))] = latency:percentile(p)
  end
  lat.min_us, lat.max_us, lat.mean_us, lat.stdev_us = latency.min, latency.max, latency.mean, latency.stdev
  local e = summary.errors
  io.write("WRK_JSON ", string.format(
    '{"duration_us":%d,"requests":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency":%s,"statuses":%s,"tiers":%s,"degraded":%s,"retry_after":%d}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    object(lat), object(all_statuses), object(all_tiers), object(all_degraded), all_retry_after))
end
