"""Glue between the `lambda:function` world and a user's Python handler.

build.py puts the user's source beside this file as `handler.py` and
componentizes this module. `handle` builds the event of API.md, calls
`handler(event)` and turns its answer into JSON text or an `error-info`
whose line points into the user's source.
"""

import json
import os
import traceback

import _lambda_stdlib

# The whole standard library into the snapshot, before the user's module
# runs (see stdlib.py): at run time there is nothing to import it from.
_lambda_stdlib.prepare(os.path.join(os.path.dirname(__file__), "_lambda_tzdata"))

import wit_world  # noqa: E402
from componentize_py_types import Err  # noqa: E402
from wit_world.imports import host, types  # noqa: E402

import handler as user  # noqa: E402

_LEVELS = {
    "debug": host.Level.DEBUG,
    "info": host.Level.INFO,
    "warn": host.Level.WARN,
    "error": host.Level.ERROR,
}


def log(level: str, message: str) -> None:
    """Appends a line to the execution's log: log("info", "...")."""
    host.log(_LEVELS.get(level, host.Level.INFO), str(message))


# Handlers call `log("info", "...")` without importing anything, unless they
# define a `log` of their own.
if not hasattr(user, "log"):
    user.log = log


class WitWorld(wit_world.WitWorld):
    def handle(self, inv: types.Invocation) -> str:
        event = {
            "params": json.loads(inv.params),
            "context": json.loads(inv.context),
            "request_id": inv.request_id,
            "language_title": inv.language_title,
        }
        try:
            result = user.handler(event)
        except Exception as error:  # noqa: BLE001 - every failure is reported
            raise Err(_describe(error)) from None
        try:
            # NaN and Infinity are not JSON: an error, as in JavaScript.
            return json.dumps(result, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError) as error:
            raise Err(_error_info(f"the handler's result is not JSON: {error}")) from None


def _describe(error: BaseException) -> types.ErrorInfo:
    frames = traceback.extract_tb(error.__traceback__)
    # The innermost frame in the user's file.
    in_handler = [f for f in frames if f.filename.endswith("handler.py")]
    frame = in_handler[-1] if in_handler else None
    column = getattr(frame, "colno", None) if frame else None
    return _error_info(
        f"{type(error).__name__}: {error}",
        stack_trace="".join(traceback.format_exception(error)),
        line=frame.lineno if frame else None,
        column=column + 1 if column is not None else None,
    )


def _error_info(message, stack_trace=None, line=None, column=None) -> types.ErrorInfo:
    return types.ErrorInfo(message=message, stack_trace=stack_trace, line=line, column=column)
