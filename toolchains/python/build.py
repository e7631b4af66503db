"""Builds a Python function into a `lambda:function` component.

    python build.py <workdir>
    python build.py <workdir> --interpreter

Reads <workdir>/source.py and the WIT in <workdir>/wit, writes
<workdir>/component.wasm. With --interpreter it builds the language's
interpreter (tier 0, interpreter.py) instead, which runs a source given at
run time; <workdir>/source.py is not read. A source that does not compile, or whose
top-level code fails while componentize-py pre-initialises it, exits with
code 2 and prints {"message", "diagnostics": [{message, line, column}]} on
stdout: the user's mistake. Any other failure exits with code 1.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tzdata

HERE = Path(__file__).resolve().parent


# The host keeps the last 64 KiB of what a build prints: the report must fit.
MAX_MESSAGE = 16 * 1024


def user_error(message, line=None, column=None):
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "\n... (cut)"
    diagnostic = {"message": message}
    if line is not None:
        diagnostic.update(line=line, column=column)
    sys.stdout.write(json.dumps({"message": message, "diagnostics": [diagnostic]}))
    sys.exit(2)


def main():
    args = sys.argv[1:]
    if len(args) not in (1, 2) or args[1:] not in ([], ["--interpreter"]):
        sys.stderr.write("usage: python build.py <workdir> [--interpreter]\n")
        sys.exit(1)
    workdir = Path(args[0])
    if args[1:] == ["--interpreter"]:
        src = prepare_sources(workdir, "interpreter.py")
        result = componentize(workdir, src, "interpreter")
        if result.returncode != 0:
            sys.stderr.write(guest_traceback((result.stderr or result.stdout).strip()))
            sys.exit(1)
        return

    source = (workdir / "source.py").read_text(encoding="utf-8")
    try:
        compile(source, "handler.py", "exec")
    except SyntaxError as error:
        user_error(f"SyntaxError: {error.msg}", error.lineno, error.offset)

    # The module's top-level code runs during pre-initialisation with its
    # Python path preopened read-write: that is src/, never the directory
    # the component is written to, so the code cannot replace the output.
    src = prepare_sources(workdir, "glue.py")
    shutil.copyfile(workdir / "source.py", src / "handler.py")
    result = componentize(workdir, src, "function")
    if result.returncode != 0:
        # Top-level code of the user's module runs during pre-initialisation;
        # its traceback names handler.py.
        text = guest_traceback((result.stderr or result.stdout).strip())
        lines = re.findall(r'File "[^"]*handler\.py", line (\d+)', text)
        if lines or "Traceback" in text:
            user_error(text, int(lines[-1]) if lines else None, None)
        sys.stderr.write(text)
        sys.exit(1)


def prepare_sources(workdir, entry):
    """<workdir>/src with our entry point as app.py and what it imports."""
    src = workdir / "src"
    src.mkdir()
    shutil.copyfile(HERE / entry, src / "app.py")
    shutil.copyfile(HERE / "call.py", src / "_lambda_call.py")
    shutil.copyfile(HERE / "stdlib.py", src / "_lambda_stdlib.py")
    # The IANA time zones for zoneinfo, from the pinned tzdata package:
    # read into the snapshot by stdlib.py.
    shutil.copytree(Path(tzdata.__file__).parent / "zoneinfo", src / "_lambda_tzdata" / "zoneinfo")
    return src


def componentize(workdir, src, world):
    componentize_py = Path(sys.executable).parent / "componentize-py"
    return subprocess.run(
        [
            str(componentize_py),
            "--wit-path", str(workdir / "wit"),
            "--world", world,
            "componentize", "app",
            "--python-path", str(src),
            "--output", str(workdir / "component.wasm"),
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
    )


def guest_traceback(text):
    """The user's traceback out of componentize-py's report of it.

    componentize-py raises the guest's traceback as the message of an
    AssertionError of its own (whose traceback names the toolchain's files),
    followed by a "Caused by:" summary. The guest's file names are those of
    its preopened build directory ("/0/handler.py"): shown as "handler.py".
    """
    marker = "AssertionError: "
    if marker in text:
        text = text[text.index(marker) + len(marker):]
    text = text.split("\n\n\nCaused by:")[0]
    return re.sub(r'File "/\d+/', 'File "', text).strip()


if __name__ == "__main__":
    main()
