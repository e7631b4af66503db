"""The standard library inside a function.

build.py puts this file beside the glue as `_lambda_stdlib.py`; the glue
imports it first, while componentize-py pre-initialises the component. What
it sets up is part of the snapshot every execution starts from:

- Every module of the standard library that works under WASI, packages'
  submodules included, is imported now. At run time a function has no file
  system at all (nothing is granted to it), so a module that is not in the
  snapshot cannot be found; and importing at run time would cost every
  execution tens to hundreds of milliseconds (measured: a handler importing
  nine common modules took 268 ms per execution from source, 62 ms from
  bytecode, against 4.6 ms with them pre-imported; a handler importing
  nothing pays about 0.1 ms for the larger snapshot). docs/python.md has
  the numbers.
- A module that cannot work under WASI fails to import with a message that
  says why (UNAVAILABLE), and so does any module that is not part of the
  standard library.
- Sockets, threads and processes, whose modules import but whose use cannot
  work, fail with a message that says why instead of "Permission denied".
  asyncio runs coroutines and timers (its event loop no longer needs the
  socket pair it would use to wake itself from other threads).
- zoneinfo finds every IANA time zone: the tzdata package, pinned in
  requirements.txt, is read into memory now.
"""

import contextlib
import importlib
import io
import os
import pkgutil
import sys

# Modules of sys.stdlib_module_names that cannot work in a function, and
# why. docs/python.md lists the same names; a test imports every name of
# the standard library in a function and expects exactly these to fail.
UNAVAILABLE = {
    **dict.fromkeys(
        ["ssl", "_ssl", "_hashlib"],
        "TLS and OpenSSL are not part of CPython for WASI (hashlib's own "
        "algorithms work: md5, sha1, sha2, sha3, blake2)",
    ),
    **dict.fromkeys(
        ["bz2", "_bz2", "lzma", "_lzma", "_zstd"],
        "the compression library is not part of CPython for WASI (zlib, gzip and zipfile work)",
    ),
    **dict.fromkeys(["ctypes", "_ctypes"], "WASI has no foreign function interface"),
    **dict.fromkeys(
        ["curses", "_curses", "_curses_panel", "readline", "termios", "tty", "pty"],
        "a function has no terminal",
    ),
    **dict.fromkeys(
        ["tkinter", "_tkinter", "turtle", "turtledemo", "idlelib"],
        "a function has no display",
    ),
    **dict.fromkeys(
        ["_dbm", "_gdbm"],
        "the database library is not part of CPython for WASI (dbm.dumb and sqlite3 work)",
    ),
    **dict.fromkeys(
        ["_interpreters", "_interpchannels", "_interpqueues"],
        "WASI has no threads for subinterpreters",
    ),
    **dict.fromkeys(
        ["_multiprocessing", "_posixshmem", "_posixsubprocess"],
        "WASI has no processes",
    ),
    **dict.fromkeys(
        ["fcntl", "grp", "pwd", "resource", "syslog", "mmap"],
        "WASI has no such operating-system facility",
    ),
    "_uuid": "libuuid is not part of CPython for WASI (the uuid module works)",
    "_remote_debugging": "a function cannot be debugged from outside",
    **dict.fromkeys(
        ["_overlapped", "_winapi", "_wmi", "msvcrt", "nt", "winreg", "winsound"],
        "it is part of CPython for Windows",
    ),
    "_scproxy": "it is part of CPython for macOS",
    "antigravity": "it opens a web browser",
}

# Functions have no network: sockets, name lookups and everything built on
# them (urllib.request, http.client, smtplib...) fail with this.
NO_NETWORK = "a function has no network access: sockets are not available"
NO_THREADS = "a function cannot start threads: WASI 0.2 has none (do the work in the handler)"
NO_PROCESSES = "a function cannot start processes: WASI has none"


class _Refuse:
    """First on sys.meta_path: an unavailable module fails with the reason."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        reason = UNAVAILABLE.get(name) or UNAVAILABLE.get(name.partition(".")[0])
        if reason is not None:
            raise ModuleNotFoundError(
                f"No module named {name!r}: it is not available in a function: {reason}",
                name=name,
            )
        return None


class _Missing:
    """Last on sys.meta_path: at run time nothing is found on a file system
    (there is none), so whatever the snapshot lacks is not part of the
    standard library, or not of this function."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        raise ModuleNotFoundError(
            f"No module named {name!r}: a function has the standard library and its own "
            "source, nothing else",
            name=name,
        )


def _preload():
    """Imports every module of the standard library that works here."""
    names = sorted(set(sys.stdlib_module_names) - set(UNAVAILABLE))
    # Some modules print or warn while they import; that output is not the
    # function's.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for name in names:
            # BaseException: a module may exit (SystemExit) as it imports.
            try:
                module = importlib.import_module(name)
            except BaseException:  # noqa: BLE001 - a module that cannot work is skipped
                continue
            for info in pkgutil.walk_packages(
                getattr(module, "__path__", []), name + ".", onerror=lambda _: None
            ):
                # A package's __main__ is a program: importing it runs it.
                parts = info.name.split(".")
                if "__main__" in parts or any(p in ("test", "tests", "idle_test") for p in parts):
                    continue
                try:
                    importlib.import_module(info.name)
                except BaseException:  # noqa: BLE001 - a submodule that cannot work is skipped
                    pass


def _refuse_sockets_threads_and_processes():
    import multiprocessing.process
    import socket
    import threading

    # Without an errno: WASI numbers them its own way ("[Errno 2]" is
    # EACCES there), which would only mislead.
    def no_network(*args, **kwargs):
        raise PermissionError(NO_NETWORK)

    socket.socket.__init__ = no_network
    for name in ("socketpair", "create_connection", "create_server", "getaddrinfo",
                 "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"):
        setattr(socket, name, no_network)

    def no_threads(self, *args, **kwargs):
        raise RuntimeError(NO_THREADS)

    threading.Thread.start = no_threads

    def no_processes(self, *args, **kwargs):
        raise OSError(NO_PROCESSES)

    multiprocessing.process.BaseProcess.start = no_processes


def _asyncio_without_a_self_pipe():
    """asyncio's selector loop opens a socket pair so that other threads
    and signal handlers can wake it; a function has neither, nor sockets.
    Without the pair, coroutines and timers run as they should."""
    from asyncio import selector_events

    loop = selector_events.BaseSelectorEventLoop
    loop._make_self_pipe = lambda self: None
    loop._close_self_pipe = lambda self: None
    loop._write_to_self = lambda self: None


def _zoneinfo_from_memory(tzdata_dir):
    """Reads every zone of the bundled tzdata package and serves zoneinfo
    from memory: at run time there is no file to read them from."""
    import zoneinfo
    from zoneinfo import _common, _tzpath

    zones = {}
    root = os.path.join(tzdata_dir, "zoneinfo")
    for directory, _, files in os.walk(root):
        for file in files:
            path = os.path.join(directory, file)
            key = os.path.relpath(path, root)
            with open(path, "rb") as f:
                data = f.read()
            if data.startswith(b"TZif"):
                zones[key] = data

    def load_tzdata(key):
        try:
            return io.BytesIO(zones[key])
        except KeyError:
            raise zoneinfo.ZoneInfoNotFoundError(f"No time zone found with key {key}") from None

    def available_timezones():
        return set(zones)

    _common.load_tzdata = load_tzdata
    _tzpath.available_timezones = available_timezones
    zoneinfo.available_timezones = available_timezones


def prepare(tzdata_dir):
    """Called once, by the glue, during pre-initialisation."""
    sys.meta_path.insert(0, _Refuse)
    _preload()
    _refuse_sockets_threads_and_processes()
    _asyncio_without_a_self_pipe()
    _zoneinfo_from_memory(tzdata_dir)
    sys.meta_path.append(_Missing)
