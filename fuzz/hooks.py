"""Schemathesis hooks for fuzzing the host (scripts/fuzz.sh).

One check replaces schemathesis' `not_a_server_error`: API.md answers a
function's own failure with 500 RUNTIME_ERROR, a full host with 503
OVERLOADED and a guest past its deadline with 504 TIMEOUT. Those are the
contract, not failures of the host; any other 5xx, or a 5xx without our
error body, is.
"""

import schemathesis

# (status, error.code) pairs of the contract.
CONTRACT_5XX = {(500, "RUNTIME_ERROR"), (503, "OVERLOADED"), (504, "TIMEOUT")}


@schemathesis.check
def no_host_failure(ctx, response, case):
    if response.status_code < 500:
        return None
    try:
        code = response.json()["error"]["code"]
    except Exception:  # not our error body: a failure in itself
        code = None
    if (response.status_code, code) in CONTRACT_5XX:
        return None
    raise AssertionError(f"{response.status_code} {code}: a failure of the host, not of the function")
