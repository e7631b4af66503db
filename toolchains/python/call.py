"""What a built function (glue.py) and the interpreter (interpreter.py)
share: the event of API.md, the handler's answer as JSON text or an
`error-info` whose line points into the user's source, and `log`.

build.py puts this file beside them as `_lambda_call.py`.
"""

import json
import traceback

from componentize_py_types import Err
from wit_world.imports import host, types

_LEVELS = {
    "debug": host.Level.DEBUG,
    "info": host.Level.INFO,
    "warn": host.Level.WARN,
    "error": host.Level.ERROR,
}


def log(level: str, message: str) -> None:
    """Appends a line to the execution's log: log("info", "...")."""
    host.log(_LEVELS.get(level, host.Level.INFO), str(message))


def give_log(user) -> None:
    """Handlers call `log("info", "...")` without importing anything, unless
    they define a `log` of their own."""
    if not hasattr(user, "log"):
        user.log = log


def call_handler(user, inv: types.Invocation) -> str:
    """Calls `user.handler` with the event of `inv`; its answer as JSON text."""
    event = {
        "params": json.loads(inv.params),
        "context": json.loads(inv.context),
        "request_id": inv.request_id,
        "language_title": inv.language_title,
    }
    try:
        result = user.handler(event)
    except Exception as error:  # noqa: BLE001 - every failure is reported
        raise Err(describe(error)) from None
    try:
        # NaN and Infinity are not JSON: an error, as in JavaScript.
        return json.dumps(result, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise Err(error_info(f"the handler's result is not JSON: {error}")) from None


def describe(error: BaseException) -> types.ErrorInfo:
    frames = traceback.extract_tb(error.__traceback__)
    # The innermost frame in the user's file.
    in_handler = [f for f in frames if f.filename.endswith("handler.py")]
    frame = in_handler[-1] if in_handler else None
    column = getattr(frame, "colno", None) if frame else None
    return error_info(
        f"{type(error).__name__}: {error}",
        stack_trace="".join(traceback.format_exception(error)),
        line=frame.lineno if frame else None,
        column=column + 1 if column is not None else None,
    )


def error_info(message, stack_trace=None, line=None, column=None) -> types.ErrorInfo:
    return types.ErrorInfo(message=message, stack_trace=stack_trace, line=line, column=column)
