-- wrk script: heartbeats from many registered workers, round robin.
-- The tokens file (one "workerId token" per line) is named by the TOKENS environment variable.
local workers = {}
local next_index = 1

function init(args)
  for line in io.lines(os.getenv("TOKENS")) do
    local id, token = line:match("^(%S+) (%S+)$")
    workers[#workers + 1] = { id = id, token = token }
  end
  next_index = math.random(#workers)
end

function request()
  local w = workers[next_index]
  next_index = next_index % #workers + 1
  local headers = {
    ["Authorization"] = "Bearer " .. w.token,
    ["Content-Type"] = "application/json",
  }
  local body = '{"status":"online","usage":{"cpuPercent":12.5,"ramPercent":40.1}}'
  return wrk.format("POST", "/api/providers/" .. w.id .. "/heartbeat", headers, body)
end

-- The summary line, shared with the /healthz runs.
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "report.lua")
