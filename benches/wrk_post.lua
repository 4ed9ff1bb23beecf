-- wrk script of benches/callback_http.rs: sends pre-sealed, distinct callback POSTs.
-- The file named after `--` holds each raw HTTP/1.1 request preceded by its length on a
-- line of its own. Requests go out in order; after the last one they start again (those
-- copies are replays, which the endpoint answers without processing them again).
local requests, count, next_index = {}, 0, 0

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local data = file:read("*a")
  file:close()
  local pos = 1
  while pos <= #data do
    local newline = assert(data:find("\n", pos, true))
    local length = assert(tonumber(data:sub(pos, newline - 1)))
    count = count + 1
    requests[count] = data:sub(newline + 1, newline + length)
    pos = newline + 1 + length
  end
  assert(count > 0, "no requests in " .. args[1])
end

function request()
  next_index = next_index + 1
  if next_index > count then
    next_index = 1
  end
  return requests[next_index]
end
