#!/usr/bin/env python3
"""A short load against lambda-host replicas that moves every dashboard panel.

    python3 deploy/stack-load.py --url http://127.0.0.1:8080 [--url http://127.0.0.1:8081] \
        --token TOKEN [--seconds 30] [--threads 4]

What it does, spread round-robin over every --url (a session initialized on
one replica is first executed on another):

* builds a new dynamic function per language (nodejs, python, rust), each
  with a unique marker in its source so the toolchain really runs, in
  parallel threads at the start, then executes them (with --rebuild-after S,
  a second one per language S seconds later, on the same replica);
* initializes the three predefined functions and executes them over and over,
  some with `X-Cache-Control: no-cache`, some twice with the same params (a
  result-cache hit), some with fresh params (a miss);
* initializes new sessions now and then, reads sessions, lists and reads
  functions, asks /health;
* produces errors on purpose: a bad token (401), an unknown session (404), a
  function that fails at run time (500 RUNTIME_ERROR), a bad Language-Title
  (400), a path that is no route (404, endpoint "unmatched").

A 429 is counted and answered by waiting for its Retry-After. Connection
failures and timeouts are counted apart from HTTP statuses. Exit status: 0
when the load ran, 1 when nothing succeeded (or, with --strict, when some
answer was not the expected one), 2 when no replica answered /health.

Standard library only.
"""

import argparse
import collections
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

PREDEFINED = [
    ("nodejs-calculator", {"operation": "add", "a": 5, "b": 3}),
    ("python-text_processor", {"action": "count_words", "text": "Hello world"}),
    ("rust-data_validator", {"data": {"age": 25}, "rules": ["required", "numeric"]}),
]


def fresh_params(language_title, n):
    """Params the result cache has not seen (in this run): a cache miss."""
    if language_title == "nodejs-calculator":
        return {"operation": "multiply", "a": n, "b": 7}
    if language_title == "python-text_processor":
        return {"action": "count_words", "text": "load " * (n % 50 + 1)}
    return {"data": {"age": n % 100}, "rules": ["required", "numeric"]}


def dynamic_sources(marker):
    """One handler per language, its first line a comment carrying `marker`."""
    return {
        "nodejs": (
            f"// stack-load build marker {marker}\n"
            "export default function (event) { return {hello: event.params.name}; }\n"
        ),
        "python": (
            f"# stack-load build marker {marker}\n"
            "def handler(event):\n"
            "    return {\"hello\": event[\"params\"].get(\"name\")}\n"
        ),
        "rust": (
            f"// stack-load build marker {marker}\n"
            "use serde_json::{json, Value};\n"
            "pub fn handler(event: Value) -> Result<Value, String> "
            "{ Ok(json!({\"hello\": event[\"params\"][\"name\"]})) }\n"
        ),
    }


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_endpoint = collections.Counter()      # (endpoint, status) -> n
        self.transport = collections.Counter()        # (endpoint, error) -> n
        self.unexpected = collections.Counter()       # (endpoint, status, expected) -> n
        self.cache_hits = 0
        self.cross_replica = 0
        self.rate_limited = 0
        self.builds = {}                              # language -> [(status, seconds, title)]
        self.dynamic_ok = collections.Counter()       # language -> successful executes

    def add(self, endpoint, status, expected):
        with self.lock:
            self.by_endpoint[(endpoint, status)] += 1
            if status == 429:
                self.rate_limited += 1
            elif status not in expected:
                self.unexpected[(endpoint, status, "/".join(map(str, expected)))] += 1

    def failed(self, endpoint, error):
        with self.lock:
            self.transport[(endpoint, error)] += 1


class Client:
    def __init__(self, urls, token, stats, deadline, timeout, rate=0.0):
        self.urls = [u.rstrip("/") for u in urls]
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._slot = time.monotonic()
        self.token = token
        self.stats = stats
        self.deadline = deadline
        self.timeout = timeout
        self._next = 0
        self._lock = threading.Lock()

    def pick(self):
        with self._lock:
            i = self._next % len(self.urls)
            self._next += 1
            return i

    def pace(self):
        """Spread requests evenly: at most --rate per second over all threads."""
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            self._slot = max(self._slot + self.interval, now)
            wait = self._slot - now
        if wait > 0:
            time.sleep(wait)

    def call(self, method, path, endpoint, *, body=None, headers=None, token=True,
             replica=None, expect=(200,), timeout=None):
        """One request; returns (status, json body or None, replica index).

        status is None when the request never got an HTTP answer.
        """
        self.pace()
        index = self.pick() if replica is None else replica % len(self.urls)
        url = self.urls[index] + path
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {self.token if token is True else token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        label = f"{method} {endpoint}"
        retry_after = None
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
            retry_after = e.headers.get("Retry-After")
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            self.stats.failed(label, type(reason).__name__ + ": " + str(reason)[:80])
            time.sleep(0.2)
            return None, None, index
        self.stats.add(label, status, expect)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        if status == 429:
            try:
                wait = float(retry_after) if retry_after is not None else 1.0
            except ValueError:
                wait = 1.0
            wait = max(0.1, min(wait, 60.0, self.deadline - time.monotonic()))
            time.sleep(wait)
        return status, parsed, index

    # -- API helpers ----------------------------------------------------
    def initialize(self, language_title, *, request_id=None, script=None, replica=None,
                   expect=(200,), token=True, timeout=None):
        headers = {"Language-Title": language_title}
        if request_id:
            headers["X-Request-ID"] = request_id
        body = {"script_content": script} if script is not None else {}
        status, data, index = self.call("POST", "/api/v1/initialize", "/api/v1/initialize",
                                        body=body, headers=headers, replica=replica,
                                        expect=expect, token=token, timeout=timeout)
        sid = data.get("request_id") if status == 200 and isinstance(data, dict) else None
        return status, sid, index

    def execute(self, session, params, *, no_cache=False, replica=None, expect=(200,)):
        headers = {"X-Cache-Control": "no-cache"} if no_cache else {}
        status, data, index = self.call("POST", f"/api/v1/execute/{session}",
                                        "/api/v1/execute/{request_id}",
                                        body={"params": params}, headers=headers,
                                        replica=replica, expect=expect)
        if status == 200 and isinstance(data, dict) and data.get("cached"):
            with self.stats.lock:
                self.stats.cache_hits += 1
        return status, data, index


class Session:
    """A session id and the replica that created it."""

    def __init__(self, sid, replica):
        self.id, self.replica = sid, replica


def new_session(client, language_title, tag):
    """Initialize on the next replica; execute first on a different one."""
    rid = f"stack-load-{tag}-{uuid.uuid4().hex[:12]}"
    status, sid, index = client.initialize(language_title, request_id=rid)
    return Session(sid, index) if sid else None


def execute_elsewhere(client, session, params, **kw):
    """An execute on a replica other than the session's (when there are several)."""
    replica = session.replica + 1 if len(client.urls) > 1 else None
    status, data, index = client.execute(session.id, params, replica=replica, **kw)
    if status is not None and len(client.urls) > 1 and index != session.replica:
        with client.stats.lock:
            client.stats.cross_replica += 1
    return status, data


def build_and_run(client, language, sources, suffix, build_timeout, rebuild_after, stop):
    """Build a new function (a real toolchain run), execute it; with
    `rebuild_after` > 0, a second build (new source) on the same replica that
    many seconds after the first: more samples for the build panels.
    """
    replica = client.pick()
    rounds = [(f"{language}-stackload_{suffix}", sources[0])]
    if rebuild_after > 0:
        rounds.append((f"{language}-stackload_{suffix}_b", sources[1]))
    sessions = []
    next_build = time.monotonic()
    n = 0
    while True:
        if rounds and time.monotonic() >= next_build:
            title, source = rounds.pop(0)
            started = time.monotonic()
            status, sid, index = client.initialize(
                title, script=source, timeout=build_timeout, replica=replica,
                request_id=f"stack-load-build-{uuid.uuid4().hex[:12]}")
            elapsed = time.monotonic() - started
            with client.stats.lock:
                client.stats.builds.setdefault(language, []).append((status, elapsed, title))
            next_build = time.monotonic() + rebuild_after
            if sid:
                session = Session(sid, index)
                sessions.append(session)
                # A no-cache run on another replica, a miss, then a hit.
                name = {"name": f"load-{language}-{len(sessions)}"}
                for k, no_cache in enumerate((True, False, False)):
                    if k == 0:
                        status, _ = execute_elsewhere(client, session, name, no_cache=no_cache)
                    else:
                        status, _, _ = client.execute(session.id, name, no_cache=no_cache)
                    if status == 200:
                        with client.stats.lock:
                            client.stats.dynamic_ok[language] += 1
            continue
        if not rounds and stop.is_set():
            return
        if sessions:
            session = sessions[n % len(sessions)]
            status, _, _ = client.execute(session.id, {"name": f"n{n % 5}"}, no_cache=n % 3 == 0)
            if status == 200:
                with client.stats.lock:
                    client.stats.dynamic_ok[language] += 1
            n += 1
        if stop.is_set():
            time.sleep(0.5)       # the load is over: only waiting for the second build
        else:
            stop.wait(0.5)


def error_request(client, kind, rust_session):
    if kind == 0:
        client.initialize("nodejs-calculator", token="not-a-valid-token", expect=(401,))
    elif kind == 1:
        client.execute(f"stack-load-missing-{uuid.uuid4().hex[:12]}", {"x": 1}, expect=(404,))
    elif kind == 2 and rust_session:
        client.execute(rust_session.id, {"data": 1}, no_cache=True, expect=(500,))
    elif kind == 3:
        title = random.choice(["cobol-ledger", "nodejs-Bad Title!"])
        client.initialize(title, expect=(400,))
    else:
        client.call("GET", "/api/v1/no-such-route", "unmatched", expect=(404,))


def worker(client, wid, sessions, deadline):
    rust_session = sessions.get("rust-data_validator")
    i = 0
    while time.monotonic() < deadline:
        i += 1
        lt, params = PREDEFINED[(wid + i) % len(PREDEFINED)]
        session = sessions.get(lt)
        if session:
            mode = i % 4
            if mode == 0:
                client.execute(session.id, params, no_cache=True)
            elif mode in (1, 2):
                client.execute(session.id, params)          # hit after the first
            else:
                fresh = fresh_params(lt, wid * 100000 + i)
                client.execute(session.id, fresh)           # miss
                client.execute(session.id, fresh)           # hit
        if i % 5 == 0:
            error_request(client, (i // 5 + wid) % 5, rust_session)
        if i % 7 == 0 and session:
            client.call("GET", f"/api/v1/sessions/{session.id}", "/api/v1/sessions/{request_id}")
        if i % 10 == 0:
            client.call("GET", "/api/v1/functions", "/api/v1/functions")
            client.call("GET", f"/api/v1/functions/{lt}", "/api/v1/functions/{language_title}")
            client.call("GET", "/health", "/health", token=False)
        if i % 15 == 0:
            s = new_session(client, lt, f"w{wid}")
            if s:
                execute_elsewhere(client, s, params, no_cache=True)


def print_summary(stats, urls, seconds):
    print()
    print(f"== stack-load summary ({seconds:.1f} s against {len(urls)} replica(s): {', '.join(urls)})")
    width = max([len(e) for e, _ in stats.by_endpoint] + [len(e) for e, _ in stats.transport] + [8])
    endpoints = sorted({e for e, _ in stats.by_endpoint})
    total = sum(stats.by_endpoint.values())
    ok = sum(n for (_, s), n in stats.by_endpoint.items() if 200 <= s < 300)
    print(f"{'endpoint':<{width}}  statuses")
    for e in endpoints:
        parts = ", ".join(f"{s}: {n}" for (ee, s), n in sorted(stats.by_endpoint.items()) if ee == e)
        print(f"{e:<{width}}  {parts}")
    print(f"HTTP answers: {total} ({ok} 2xx, {total - ok} other), "
          f"{total / max(seconds, 0.001):.1f} req/s")
    print(f"cache hits seen: {stats.cache_hits}; rate limited (429): {stats.rate_limited}; "
          f"executes on a replica other than the session's: {stats.cross_replica}")
    for language in ("nodejs", "python", "rust"):
        builds = stats.builds.get(language)
        if not builds:
            print(f"dynamic {language}: no answer")
            continue
        done = "; ".join(f"{title} {status if status is not None else 'no answer'} "
                         f"in {secs:.1f} s" for status, secs, title in builds)
        # JavaScript and Python start on their interpreter (tier 0) and
        # build in the background; Rust builds before initialize answers.
        what = "initialize (tier 0)" if language != "rust" else "initialize+build"
        print(f"dynamic {language}: {what} {done}; "
              f"{stats.dynamic_ok[language]} successful executes")
    if stats.unexpected:
        print("unexpected statuses:")
        for (e, s, exp), n in sorted(stats.unexpected.items()):
            print(f"  {e}: {s} x{n} (expected {exp})")
    else:
        print("unexpected statuses: none")
    if stats.transport:
        print("connection errors (no HTTP answer):")
        for (e, err), n in sorted(stats.transport.items()):
            print(f"  {e}: {err} x{n}")
    else:
        print("connection errors: none")
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", action="append", dest="urls",
                        help="a replica's base URL; repeat for several (default http://127.0.0.1:8080)")
    parser.add_argument("--token", required=True, help="a bearer token with execute:all read:functions")
    parser.add_argument("--seconds", type=float, default=30, help="length of the load once the sessions exist, s (default %(default)s)")
    parser.add_argument("--threads", type=int, default=4, help="worker threads (default %(default)s)")
    parser.add_argument("--rate", type=float, default=100,
                        help="requests per second at most, over all threads; 0: unpaced "
                             "(default %(default)s)")
    parser.add_argument("--timeout", type=float, default=60, help="per-request timeout, s (default %(default)s)")
    parser.add_argument("--build-timeout", type=float, default=300,
                        help="timeout of an initialize that builds, s (default %(default)s)")
    parser.add_argument("--rebuild-after", type=float, default=20,
                        help="seconds between a language's first build and its second, on the "
                             "same replica; more than the scrape interval; 0: one build "
                             "(default %(default)s)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when any answer was not the expected status")
    args = parser.parse_args()
    urls = args.urls or ["http://127.0.0.1:8080"]

    stats = Stats()
    started = time.monotonic()
    # The load proper starts once the predefined sessions exist (a replica
    # with a cold AOT cache compiles a component on its first initialize).
    client = Client(urls, args.token, stats, started + args.build_timeout, args.timeout,
                    args.rate)

    reachable = 0
    for i, url in enumerate(client.urls):
        status, body, _ = client.call("GET", "/health", "/health", token=False, replica=i,
                                      expect=(200, 503), timeout=10)
        state = body.get("status") if isinstance(body, dict) else None
        print(f"{url}/health: {status if status is not None else 'unreachable'}"
              + (f" ({state})" if state else ""), flush=True)
        reachable += status is not None
    if not reachable:
        print("no replica answered /health: is the host running?")
        print_summary(stats, client.urls, time.monotonic() - started)
        return 2

    # Builds first, in parallel: they take seconds each.
    stop = threading.Event()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    suffix = f"{int(time.time())}_{uuid.uuid4().hex[:6]}"
    first = dynamic_sources(f"{stamp} {uuid.uuid4().hex}")
    second = dynamic_sources(f"{stamp} {uuid.uuid4().hex}")
    builders = []
    for language in first:
        t = threading.Thread(target=build_and_run, name=f"build-{language}", daemon=True,
                             args=(client, language, (first[language], second[language]),
                                   suffix, args.build_timeout, args.rebuild_after, stop))
        t.start()
        builders.append(t)
    print(f"building new functions: {', '.join(first)}"
          + (f" (and once more after {args.rebuild_after:g} s)" if args.rebuild_after > 0 else ""),
          flush=True)

    # The predefined sessions, in parallel too.
    sessions = {}

    def init_predefined(lt, params):
        for _ in range(3):
            s = new_session(client, lt, "pre")
            if s:
                sessions[lt] = s
                execute_elsewhere(client, s, params)      # a miss (or a hit from an earlier run)
                return
        print(f"initialize {lt} failed", flush=True)

    inits = [threading.Thread(target=init_predefined, args=p, daemon=True) for p in PREDEFINED]
    for t in inits:
        t.start()
    for t in inits:
        t.join(timeout=args.build_timeout + 30)
    print(f"predefined sessions ready after {time.monotonic() - started:.1f} s: "
          f"{', '.join(sorted(sessions)) or 'none'}; load for {args.seconds:g} s "
          f"with {args.threads} threads", flush=True)

    deadline = time.monotonic() + args.seconds
    client.deadline = deadline
    workers = []
    for wid in range(args.threads):
        t = threading.Thread(target=worker, name=f"worker-{wid}", daemon=True,
                             args=(client, wid, sessions, deadline))
        t.start()
        workers.append(t)
    for t in workers:
        t.join(timeout=args.seconds + args.timeout + 30)
    stop.set()
    for t in builders:
        # Builds may outlive the load; never wait past their own timeouts.
        left = 2 * args.build_timeout + args.rebuild_after + 30 - (time.monotonic() - started)
        t.join(timeout=max(1.0, left))

    ok = print_summary(stats, client.urls, time.monotonic() - started)
    if not ok:
        print("nothing succeeded")
        return 1
    if args.strict and (stats.unexpected or stats.transport):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
