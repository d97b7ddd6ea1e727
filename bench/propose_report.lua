-- wrk script: simulated students doing propose-then-report loops.
-- Each wrk thread keeps the proposals it received and reports each one (as the same student)
-- on its next request, so every proposal is followed by its report.
local threads_made = 0
function setup(thread)
  threads_made = threads_made + 1
  thread:set("tid", threads_made)
end

local pending, n, curriculum, headers = {}, 0, nil, nil
function init(args)
  curriculum = args[2]
  headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. args[1]}
end

local signals = '{"grad_norm_mean":1.5,"grad_norm_episode":0.7,"critic_grad_norm_mean":3.2,'
  .. '"critic_grad_norm_episode":1.1,"episode_return":12.5,"success":false,"env_steps":300,"grad_updates":300}'

function request()
  local p = table.remove(pending)
  if p then
    return wrk.format("POST", "/report", headers,
      '{"proposal_id":"' .. p[1] .. '","student_id":"' .. p[2] .. '","signals":' .. signals .. '}')
  end
  n = n + 1
  local student = "w" .. tid .. "-" .. (n % 128)
  return wrk.format("POST", "/propose", headers, '{"curriculum":"' .. curriculum .. '","student_id":"' .. student .. '"}')
end

function response(status, hdrs, body)
  if status == 200 and body:find('"expires_at"', 1, true) then
    local id = body:match('"proposal_id":"(%x+)"')
    local student = body:match('"student_id":"([^"]+)"')
    table.insert(pending, {id, student})
  end
end
