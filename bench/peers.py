"""The peers of the benchmark: the designs of the system we replace (the
"seed"), rebuilt minimally, so bench/run.py measures them beside our host on
the same machine with the same wrk script (bench/execute.lua).

The seed ran user code in one long-lived server process per language, the
controller forwarding each execution to it over HTTP with the script's source:

- "fastapi exec (python-text_processor)": bench/peers/python/server.py, a
  FastAPI app served by uvicorn (one worker process). Per request it `exec`s
  the handler's source string in a fresh namespace dict -- compiling it anew,
  as the seed's Python runtime did with the source it was sent -- and calls
  `handler(event)`. Isolation is a dict: the guest shares the interpreter,
  its memory and its privileges with the server.
- "express + vm2 (nodejs-calculator)": bench/peers/node/server.js, an express
  app that per request creates a fresh vm2 `VM` (a new V8 context, with a
  timeout), runs the handler's source in it and calls the handler, as the
  seed's Node.js runtime did. vm2 runs scripts, not modules, so the handler's
  `export default` is turned into an assignment once at start.

Both take our API's body, `{"params": {...}}`, on any POST path, build the
event our host builds (`request_id`, `language_title`, `params`, `context`),
and answer 200 `{"result": <the handler's return>}` or 500 `{"error": ...}`.
They ignore the Authorization and X-Cache-Control headers: no auth, no cache,
no session store, no logs -- only the seed's execution path, which is the
most favourable comparison for the seed. The pinned versions are in
bench/peers/python/requirements.txt and bench/peers/node/package-lock.json.

Use: `install(ROOT)` once (idempotent and quiet), then
`procs = start(ROOT, {"fastapi": port1, "vm2": port2})`, measure
`http://127.0.0.1:<port>/` for each entry of PEERS, and `stop(procs)`.
"""

import hashlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

# Name in the results -> (key of the port in start()'s `ports`, the
# function of components/ it runs: measure it with that function's params).
PEERS = {
    "fastapi exec (python-text_processor)": ("fastapi", "python-text_processor"),
    "express + vm2 (nodejs-calculator)": ("vm2", "nodejs-calculator"),
}

# What each server runs: (directory under bench/peers, the component).
_SERVERS = {
    "fastapi": ("python", "python-text_processor"),
    "vm2": ("node", "nodejs-calculator"),
}

# The port keys of the servers, in the order start() returns their processes.
SERVERS = tuple(_SERVERS)


def _peers(root):
    return Path(root).resolve() / "bench" / "peers"


def _venv_python(root):
    return _peers(root) / "python" / ".venv" / "bin" / "python"


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _stamped(stamp, digest):
    try:
        return stamp.read_text().strip() == digest
    except OSError:
        return False


def _quiet(args, cwd, what):
    """Runs a command, its output kept for the error if it fails."""
    try:
        done = subprocess.run(
            args,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    except OSError as e:
        raise RuntimeError(f"bench peers: {what}: cannot run {args[0]}: {e}") from e
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-30:])
        raise RuntimeError(
            f"bench peers: {what} failed (exit {done.returncode}): "
            f"{' '.join(map(str, args))}\n{tail}"
        )


def install(root: Path) -> None:
    """Installs what the peers need and is missing; a no-op when all is there.

    - bench/peers/python/.venv, with requirements.txt installed; a stamp file
      in the venv holds the requirements' hash, so an edit reinstalls.
    - bench/peers/node/node_modules by `npm ci`, when missing or when
      package-lock.json changed since (a stamp in node_modules).

    Raises RuntimeError, with the failing command's output, on failure.
    """
    peers = _peers(root)

    requirements = peers / "python" / "requirements.txt"
    venv = peers / "python" / ".venv"
    stamp = venv / ".requirements.sha256"
    digest = _sha256(requirements)
    if not (_venv_python(root).exists() and _stamped(stamp, digest)):
        if not _venv_python(root).exists():
            _quiet([sys.executable, "-m", "venv", str(venv)], peers, "creating the venv")
        _quiet(
            [
                str(_venv_python(root)), "-m", "pip", "install", "--quiet",
                "--disable-pip-version-check", "-r", str(requirements),
            ],
            peers / "python",
            "pip install -r bench/peers/python/requirements.txt",
        )
        stamp.write_text(digest + "\n")

    node_dir = peers / "node"
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"bench peers: `{tool}` is not on PATH (install Node.js >= 18)")
    stamp = node_dir / "node_modules" / ".package-lock.sha256"
    digest = _sha256(node_dir / "package-lock.json")
    if not _stamped(stamp, digest):
        _quiet(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            node_dir,
            "npm ci in bench/peers/node",
        )
        stamp.write_text(digest + "\n")


def _command(root, name, port):
    kind, component = _SERVERS[name]
    handler = Path(root).resolve() / "components" / component
    if kind == "python":
        server = _peers(root) / "python" / "server.py"
        return [str(_venv_python(root)), str(server), str(handler / "handler.py"), str(port)]
    server = _peers(root) / "node" / "server.js"
    return ["node", str(server), str(handler / "handler.js"), str(port)]


def _listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start(root: Path, ports: dict, log_dir: Path = None, timeout: float = 30) -> list:
    """Starts both peers, `ports["fastapi"]` and `ports["vm2"]` on
    127.0.0.1, and returns their processes once both accept connections.

    Their output goes to `log_dir/peer-<name>.log` when log_dir is given,
    else nowhere. Raises RuntimeError (after stopping what it started) if
    one exits or is not listening within `timeout` seconds. Call install()
    first.
    """
    procs = []
    try:
        for name in _SERVERS:
            if log_dir is not None:
                out = open(Path(log_dir) / f"peer-{name}.log", "wb")
            else:
                out = subprocess.DEVNULL
            try:
                procs.append(
                    subprocess.Popen(
                        _command(root, name, ports[name]),
                        cwd=Path(root).resolve(),
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
            finally:
                if out is not subprocess.DEVNULL:
                    out.close()  # the child has its own descriptor
        deadline = time.monotonic() + timeout
        for name, proc in zip(_SERVERS, procs):
            while not _listening(ports[name]):
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"bench peers: the {name} peer exited with {proc.returncode}"
                        + (f" (see {log_dir}/peer-{name}.log)" if log_dir else "")
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"bench peers: the {name} peer is not listening on "
                        f"127.0.0.1:{ports[name]} after {timeout} s"
                    )
                time.sleep(0.1)
            if proc.poll() is not None:  # someone else holds the port
                raise RuntimeError(
                    f"bench peers: the {name} peer exited with {proc.returncode}"
                )
    except BaseException:
        stop(procs)
        raise
    return procs


def stop(procs: list) -> None:
    """Stops the processes start() returned: SIGTERM, then SIGKILL after 5 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
