"""The seed's Python runtime design, minimal: a FastAPI app that `exec`s the
handler source in a fresh namespace dict on every request, then calls its
`handler(event)`.

    server.py HANDLER_PY PORT [--title LANGUAGE_TITLE]

Listens on 127.0.0.1:PORT. Any POST path takes `{"params": {...}}` and answers
200 `{"result": <handler's return>}` or 500 `{"error": "..."}`; the
X-Cache-Control header is ignored (there is no cache).
"""

import argparse
import uuid
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("handler", type=Path, help="the handler's Python source")
parser.add_argument("port", type=int)
parser.add_argument(
    "--title",
    help="the event's language_title (default: the handler's directory name)",
)
args = parser.parse_args()

# Read once; the seed's runtime got the source with each request (from the
# controller), so the source string -- not a code object compiled once -- is
# what gets exec'd, compiled anew every time.
SOURCE = args.handler.read_text()
TITLE = args.title or args.handler.resolve().parent.name
# The session's id: our host's event carries the id of the session executed.
SESSION = str(uuid.uuid4())

app = FastAPI()


# `async def`: runs on the event loop with no thread-pool hop, the cheapest
# way FastAPI can call a short synchronous handler.
@app.post("/{path:path}")
async def execute(request: Request):
    try:
        body = await request.json()
    except ValueError:
        return JSONResponse({"error": "the body is not JSON"}, status_code=400)
    if not isinstance(body, dict) or not isinstance(body.get("params", {}), dict):
        return JSONResponse(
            {"error": 'the body must be {"params": {...}}'}, status_code=400
        )
    event = {
        "request_id": SESSION,
        "language_title": TITLE,
        "params": body.get("params", {}),
        "context": {},
    }
    try:
        namespace = {}
        exec(SOURCE, namespace)
        result = namespace["handler"](event)
    except Exception as e:  # the guest's failure is the answer, not a crash
        return JSONResponse({"error": f"{type(e).__name__}: {e}"}, status_code=500)
    return {"result": result}


if __name__ == "__main__":
    # One worker process: the machine has 2 cores and wrk shares them, so more
    # workers would only fight wrk for the CPU (and the host under test is
    # measured on the same 2 cores). No access log, as a production setup.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        workers=1,
        log_level="warning",
        access_log=False,
    )
