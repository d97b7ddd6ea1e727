-- wrk script: the same kind of request against an endpoint that does nothing.
function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. args[1]
  wrk.body = '{"curriculum":"bench","student_id":"w1-1"}'
end
