-- wrk script: POST /api/v1/execute/<session> with the token and params from
-- the environment. X-Cache-Control: no-cache unless CACHED=1, so every
-- request runs the guest.
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
wrk.headers["Content-Type"] = "application/json"
if os.getenv("CACHED") ~= "1" then
  wrk.headers["X-Cache-Control"] = "no-cache"
end
wrk.body = '{"params":' .. os.getenv("PARAMS") .. '}'
