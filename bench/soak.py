#!/usr/bin/env python3
"""The soak test: `just soak` (10 minutes) and `just soak-quick` (1 minute).

A mixed load over the three languages on Redis + PostgreSQL (throwaway
servers from scripts/test-services.sh): plain executions, cache hits, a
function's own errors, deadlines, session and registry reads, by several
users at once. It reports the host's RSS over time (it should be flat once
warm), every status it did not expect (there should be none), and the
request-log rows written against the requests the host served (equal).
Writes bench/soak.json.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import HOST, ROOT, free_port, fresh_data_dir, host_counters, post, rss_mib, run, wait_for  # noqa: E402

ENDLESS = (ROOT / "host/tests/fixtures/rust/endless_loop.rs").read_text()
USERS = ["soak-ann", "soak-ben", "soak-cat"]


def scenarios(sessions):
    """(name, weight, method, path, body, headers, expected (status, error code))."""
    calculator, text, validator, endless = sessions
    no_cache = {"X-Cache-Control": "no-cache"}
    return [
        ("nodejs execute", 20, "POST", f"/api/v1/execute/{calculator}",
         {"params": {"operation": "add", "a": random.randint(0, 1000), "b": 1}}, no_cache, (200, None)),
        ("python execute", 15, "POST", f"/api/v1/execute/{text}",
         {"params": {"action": "count_words", "text": "the quick brown fox"}}, no_cache, (200, None)),
        ("rust execute", 25, "POST", f"/api/v1/execute/{validator}",
         {"params": {"data": {"age": 25}, "rules": ["required", "numeric"]}}, no_cache, (200, None)),
        ("cache hit", 15, "POST", f"/api/v1/execute/{validator}",
         {"params": {"data": {"age": 1}, "rules": ["required"]}}, {}, (200, None)),
        ("function error", 10, "POST", f"/api/v1/execute/{calculator}",
         {"params": {"operation": "divide", "a": 1, "b": 0}}, no_cache, (500, "RUNTIME_ERROR")),
        ("deadline", 3, "POST", f"/api/v1/execute/{endless}", {"params": {}}, no_cache, (504, "TIMEOUT")),
        ("session read", 7, "GET", f"/api/v1/sessions/{validator}", None, {}, (200, None)),
        ("registry read", 5, "GET", "/api/v1/functions?per_page=5", None, {}, (200, None)),
    ]


def worker(port, token, sessions, stop, tally, unexpected, lock):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    table = scenarios(sessions)
    weights = [s[1] for s in table]
    while not stop.is_set():
        name, _, method, path, body, headers, expected = random.choices(table, weights)[0]
        payload = json.dumps(body).encode() if body is not None else None
        all_headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **headers}
        try:
            connection.request(method, path, payload, all_headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            with lock:
                unexpected[f"{name}: {type(e).__name__}"] += 1
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            continue
        code = None
        if response.status >= 400:
            try:
                code = json.loads(data)["error"]["code"]
            except ValueError:
                code = "not JSON"
        with lock:
            tally[name] += 1
            if (response.status, code) != expected:
                unexpected[f"{name}: {response.status} {code}"] += 1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--threads", type=int, default=8)
    options = parser.parse_args()

    run("cargo", "build", "--release", "--locked", "-q")
    services = ROOT / "target/soak-services"
    run("scripts/test-services.sh", "start", str(services))
    service_env = dict(line.removeprefix("export ").split("=", 1) for line in (services / "env").read_text().splitlines())
    psql = [str(Path(service_env["LAMBDA_TEST_PG_BIN"]) / "psql"), "-At"]
    run(*psql, service_env["LAMBDA_TEST_DATABASE_URL"], "-c", "DROP DATABASE IF EXISTS soak")
    run(*psql, service_env["LAMBDA_TEST_DATABASE_URL"], "-c", "CREATE DATABASE soak")
    work, data = fresh_data_dir()
    database = service_env["LAMBDA_TEST_DATABASE_URL"].rsplit("/", 1)[0] + "/soak"
    env = dict(os.environ, LAMBDA_DATA_DIR=str(data), LAMBDA_RUST_TARGET_DIR=str(ROOT / "target/guest-rust"),
               LAMBDA_DATABASE_URL=database, LAMBDA_REDIS_URL=service_env["LAMBDA_TEST_REDIS_URL"])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    host = subprocess.Popen([str(HOST), "serve", "--listen", f"127.0.0.1:{port}",
                             "--rate-limit-execute", "1000000000", "--rate-limit-functions", "1000000000",
                             "--rate-limit-initialize", "1000000000"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(work / "host.log", "w"))
    try:
        wait_for(f"{base}/health")
        tokens = [subprocess.run([str(HOST), "token", "--sub", user], cwd=ROOT, env=env, capture_output=True,
                                 text=True, check=True).stdout.strip() for user in USERS]
        sessions_by_user = []
        for token in tokens:
            auth = {"Authorization": f"Bearer {token}"}
            ids = [post(f"{base}/api/v1/initialize", {}, {**auth, "Language-Title": name})["request_id"]
                   for name in ("nodejs-calculator", "python-text_processor", "rust-data_validator")]
            # The first user registers the never-ending function, the others start it.
            body = {"context": {"timeout_ms": 200}}
            if token == tokens[0]:
                body["script_content"] = ENDLESS
            ids.append(post(f"{base}/api/v1/initialize", body, {**auth, "Language-Title": "rust-soak_endless"})["request_id"])
            sessions_by_user.append(ids)

        stop = threading.Event()
        tally, unexpected, lock = Counter(), Counter(), threading.Lock()
        threads = [threading.Thread(target=worker, args=(port, tokens[i % len(tokens)], sessions_by_user[i % len(tokens)],
                                                         stop, tally, unexpected, lock))
                   for i in range(options.threads)]
        started = time.time()
        for thread in threads:
            thread.start()
        samples = []
        while time.time() - started < options.seconds:
            samples.append((round(time.time() - started), round(rss_mib(host.pid), 1)))
            time.sleep(min(5, options.seconds / 12))
        stop.set()
        for thread in threads:
            thread.join()
        elapsed = time.time() - started
        samples.append((round(elapsed), round(rss_mib(host.pid), 1)))
        served, dropped, quarantined = host_counters(base)
        host.terminate()
        host.wait(timeout=120)
        rows = int(subprocess.run([*psql, database, "-c", "SELECT COUNT(*) FROM public.request_logs WHERE endpoint <> '/metrics'"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    finally:
        if host.poll() is None:
            host.kill()
        run("scripts/test-services.sh", "stop", str(services))
        shutil.rmtree(work, ignore_errors=True)

    warm = next((rss for t, rss in samples if t >= elapsed / 10), samples[0][1])
    report = {
        "seconds": round(elapsed),
        "threads": options.threads,
        "requests_sent": sum(tally.values()),
        "by_scenario": dict(tally),
        "unexpected": dict(unexpected),
        "rss_mib": {"start": samples[0][1], "after_warm_up": warm, "end": samples[-1][1],
                    "max": max(rss for _, rss in samples), "samples": samples},
        "log": {"requests_served": served, "rows_written": rows, "dropped": dropped, "quarantined": quarantined},
    }
    (ROOT / "bench/soak.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['requests_sent']} requests in {report['seconds']} s over {options.threads} connections: "
          f"{dict(tally)}")
    print(f"unexpected statuses: {sum(unexpected.values())} {dict(unexpected)}")
    rss = report["rss_mib"]
    print(f"RSS MiB: start {rss['start']}, after warm-up {warm}, end {rss['end']}, max {rss['max']}")
    print(f"request log: {served} requests served, {rows} rows written, {dropped} dropped, {quarantined} quarantined")
    if unexpected or rows != served:
        sys.exit("the soak found unexpected statuses or missing log rows")


if __name__ == "__main__":
    main()
