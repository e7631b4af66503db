"""The Python interpreter (tier 0): one component for every Python function.

Each call takes the function's source from the `script` import, compiles it
as `handler.py` and runs it as a fresh module in the fresh instance, then
calls its handler: a new function runs at once, before its own component
(tier 1) is built. The standard library is the same as a built function's:
stdlib.py prepares the snapshot in the same way.
"""

import base64
import json
import marshal
import os
import sys
import types as pytypes

import _lambda_stdlib

_lambda_stdlib.prepare(os.path.join(os.path.dirname(__file__), "_lambda_tzdata"))

import wit_world  # noqa: E402
from componentize_py_types import Err  # noqa: E402
from wit_world.imports import script, types  # noqa: E402

import _lambda_call  # noqa: E402


class WitWorld(wit_world.WitWorld):
    def handle(self, inv: types.Invocation) -> str:
        source = script.read()
        # Compiling costs about a millisecond: `check` does it once and
        # answers the code object, marshalled, for `run-prepared`.
        if source.mode == script.Mode.RUN_PREPARED:
            code = marshal.loads(base64.b64decode(source.text))
        else:
            code = _compile(source.text)
        user = _evaluate(code)
        if source.mode == script.Mode.CHECK:
            return json.dumps(base64.b64encode(marshal.dumps(code)).decode("ascii"))
        return _lambda_call.call_handler(user, inv)


def _compile(text: str) -> pytypes.CodeType:
    try:
        return compile(text, "handler.py", "exec")
    except SyntaxError as error:
        raise Err(_lambda_call.error_info(f"SyntaxError: {error.msg}", line=error.lineno, column=error.offset)) from None


def _evaluate(code: pytypes.CodeType) -> pytypes.ModuleType:
    """The code run as the module `handler`, as a build imports it."""
    user = pytypes.ModuleType("handler")
    user.__file__ = "handler.py"
    _lambda_call.give_log(user)
    sys.modules["handler"] = user
    try:
        exec(code, user.__dict__)  # noqa: S102 - running the function's source is the point
    except Exception as error:  # noqa: BLE001 - every failure is reported
        raise Err(_lambda_call.describe(error)) from None
    return user
