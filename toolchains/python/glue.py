"""Glue between the `lambda:function` world and a user's Python handler, for
a function's own component (tier 1).

build.py puts the user's source beside this file as `handler.py` and
componentizes this module; `_lambda_call` does the rest.
"""

import os

import _lambda_stdlib

# The whole standard library into the snapshot, before the user's module
# runs (see stdlib.py): at run time there is nothing to import it from.
_lambda_stdlib.prepare(os.path.join(os.path.dirname(__file__), "_lambda_tzdata"))

import wit_world  # noqa: E402
from wit_world.imports import types  # noqa: E402

import _lambda_call  # noqa: E402
import handler as user  # noqa: E402

_lambda_call.give_log(user)


class WitWorld(wit_world.WitWorld):
    def handle(self, inv: types.Invocation) -> str:
        return _lambda_call.call_handler(user, inv)
