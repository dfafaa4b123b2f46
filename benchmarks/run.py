"""Benchmark analytics_sdk.Client against segment-analytics-python and rudder-sdk-python.

    python benchmarks/run.py            # the full run (a few minutes)
    python benchmarks/run.py --quick    # a smoke run (well under a minute once set up)

The script creates its own virtualenv (`benchmarks/.env`) with both peer SDKs and this
repository installed editable, starts a sink (a stdlib HTTP data plane on 127.0.0.1) in a
separate process, and measures each SDK in fresh subprocesses of that virtualenv:

1. `track()` cost on the caller's thread (median over rounds of the per-call cost);
2. end-to-end events/s for a burst with gzip on (first `track()` until flush returns and the
   sink holds every messageId);
3. events lost at default options when a burst is produced as fast as possible;
4. peak RSS of the process for the burst (queues big enough that nothing is dropped);
5. import + construct wall time in a fresh interpreter, and the `-X importtime` total;
6. ours only: the durable queue (`storage_path`), calls/s accepted (each call commits its
   row to SQLite before it returns) and end to end, at `storage_sync="normal"` (the default)
   and `"full"` (a smaller burst: it fsyncs every call).

It prints a table and the target ratios, and writes everything to
`benchmarks/results/<UTC timestamp>.json`. Every loop is bounded, every wait has a timeout,
and the sink stops by itself when this script goes away.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Only light stdlib modules at the top: the same file runs as the measured child, whose
# peak RSS should be the SDK's, not the harness's. The rest is imported where it is used.

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
ENV_DIR = BENCH_DIR / ".env"
RESULTS_DIR = BENCH_DIR / "results"
PEER_PACKAGES = ("segment-analytics-python", "rudder-sdk-python")
SDKS = ("ours", "segment", "rudder")
SDK_TITLES = {"ours": "analytics-sdk", "segment": "segment", "rudder": "rudder"}

WRITE_KEY = "bench-write-key"
RESULT_PREFIX = "BENCH-RESULT "
EVENT = "Order Completed"
PROPERTIES: dict[str, Any] = {  # the 7-property track of DESIGN 9
    "order_id": "A-10042",
    "revenue": 25.0,
    "currency": "USD",
    "quantity": 3,
    "coupon": "SPRING",
    "in_stock": True,
    "category": "books",
}
USER_IDS = [f"user-{n}" for n in range(1000)]
SINK_LIFETIME = 1800.0  # seconds: the sink exits after this even if nobody stops it
WARMUP_CALLS = 1000  # untimed calls before the timed rounds (threads, lazy imports)

# Targets of the project (DESIGN 9 and the benchmark brief), ours relative to a peer.
COST_TARGET = 1 / 3  # track() cost: ours / peer at most this
THROUGHPUT_TARGET = 4.0  # end-to-end events/s: ours / peer at least this
RSS_TARGET = 1 / 2  # peak RSS: ours / peer at most this

JsonDict = dict[str, Any]


# =========================================================================================
# The sink: a separate process, so it never competes for the measured SDK's GIL.
# =========================================================================================


class SinkState:
    """What the sink has received since the last reset; every method takes the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        self._events = 0
        self._requests = 0
        self._bytes = 0
        self._bad = 0
        self._last_new_at = 0.0

    def reset(self) -> None:
        with self._lock:
            self._ids = set()
            self._events = self._requests = self._bytes = self._bad = 0
            self._last_new_at = 0.0

    def add(self, ids: Sequence[object], wire_bytes: int) -> None:
        with self._lock:
            before = len(self._ids)
            self._ids.update(i for i in ids if isinstance(i, str))
            self._events += len(ids)
            self._requests += 1
            self._bytes += wire_bytes
            if len(self._ids) != before:
                self._last_new_at = time.monotonic()  # CLOCK_MONOTONIC: shared by processes

    def bad_request(self) -> None:
        with self._lock:
            self._bad += 1

    def snapshot(self) -> JsonDict:
        with self._lock:
            return {
                "unique": len(self._ids),
                "events": self._events,
                "requests": self._requests,
                "bytes": self._bytes,
                "bad_requests": self._bad,
                "last_new_at": self._last_new_at,
            }


def serve_sink(lifetime: float) -> None:
    """Run the sink until stdin closes (the parent left) or `lifetime` seconds pass.

    POST to any path (the SDKs use /v1/batch) counts the messages of a `{"batch": [...]}`
    body, gunzipped when Content-Encoding says gzip, and answers 200. GET /stats returns
    the counts as JSON; POST /reset clears them. The port goes to stdout as `PORT <n>`.
    """
    import gzip
    import re
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    message_id = re.compile(rb'"messageId"\s*:\s*"([^"]+)"')
    state = SinkState()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' requests sessions expect
        disable_nagle_algorithm = True  # else each response waits ~40 ms on a delayed ACK
        timeout = 120  # an idle keep-alive connection is closed after this (seconds)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path.startswith("/reset"):
                state.reset()
                self._reply(200, b'{"reset":true}')
                return
            try:
                body = raw
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    body = gzip.decompress(raw)
            except (OSError, EOFError, ValueError):
                state.bad_request()
                self._reply(400, b'{"error":"bad body"}')
                return
            # The ids are found by a regex scan, not json.loads: the sink must never be the
            # bottleneck it measures (parsing a 40 KB batch costs it ~0.3 ms per request,
            # which capped every SDK's throughput at the sink's speed). Every SDK writes
            # "messageId" once per message, with or without spaces around the colon.
            if not body.lstrip().startswith(b"{"):
                state.bad_request()
                self._reply(400, b'{"error":"not a JSON object"}')
                return
            ids = [m.decode() for m in message_id.findall(body)]
            state.add(ids or [None], len(raw))
            self._reply(200, b'{"ok":true}')

        def do_GET(self) -> None:
            if self.path.startswith("/stats"):
                self._reply(200, json.dumps(state.snapshot()).encode())
            else:
                self._reply(200, b'{"ok":true}')

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True

    def stop_when_parent_leaves() -> None:
        sys.stdin.read()  # returns at EOF: the parent closed the pipe or died
        server.shutdown()

    threading.Thread(target=stop_when_parent_leaves, daemon=True).start()
    timer = threading.Timer(lifetime, server.shutdown)
    timer.daemon = True
    timer.start()
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        timer.cancel()
        server.server_close()


class Sink:
    """The parent's handle on the sink process."""

    def __init__(self, python: str) -> None:
        import subprocess

        self._process = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--sink", str(SINK_LIFETIME)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.url = f"http://127.0.0.1:{self._read_port()}"

    def _read_port(self) -> int:
        import select

        stdout = self._process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], 15.0)
        line = stdout.readline() if ready else ""
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"the sink did not start (said {line!r})")
        return int(line.split()[1])

    def _call(self, method: str, path: str) -> JsonDict:
        import urllib.request

        request = urllib.request.Request(self.url + path, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=10) as response:
            result: JsonDict = json.loads(response.read())
            return result

    def reset(self) -> None:
        self._call("POST", "/reset")

    def stats(self) -> JsonDict:
        return self._call("GET", "/stats")

    def wait_for(self, unique: int, timeout: float) -> JsonDict:
        """Stats once the sink holds `unique` messageIds, or when `timeout` runs out."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats["unique"] >= unique or time.monotonic() >= deadline:
                return stats
            time.sleep(0.05)

    def stop(self) -> None:
        import subprocess

        if self._process.stdin is not None:
            self._process.stdin.close()  # the sink's watcher sees EOF and shuts down
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)
        if self._process.stdout is not None:
            self._process.stdout.close()


# =========================================================================================
# The measured child: one SDK, one mode, a fresh interpreter of the benchmark virtualenv.
# =========================================================================================


@dataclass
class Adapter:
    """The three SDKs behind one face: the calls differ only in what they return."""

    track: Callable[[str, str, JsonDict], object]
    accepted: Callable[[object], bool]
    flush: Callable[[float], bool]
    close: Callable[[float], object]


def _in_thread(function: Callable[[], object], timeout: float) -> bool:
    """Run `function` in a daemon thread; False when it has not returned within `timeout`."""
    thread = threading.Thread(target=function, daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive()


def make_adapter(
    sdk: str, url: str, config: str, queue_size: int, storage_dir: str | None = None
) -> Adapter:
    """A client of `sdk` aimed at `url`, configured as `config` says.

    "tuned": gzip on and a queue of `queue_size` (nothing dropped); "defaults": the SDK's
    defaults; "nosend": `send=False`, so no delivery thread competes with the caller;
    "durable" / "durable_full" (ours only): "tuned" plus a `storage_path` in `storage_dir`
    with `storage_sync` "normal" / "full".
    """
    choices: dict[str, JsonDict] = {
        "tuned": {"gzip": True, "max_queue_size": queue_size},
        "defaults": {},
        "nosend": {"send": False},
    }
    options = choices.get(config, {})
    if sdk == "ours":
        from analytics_sdk import Client

        if config == "tuned":
            ours = Client(WRITE_KEY, url, gzip=True, max_queue_size=queue_size)
        elif config in ("durable", "durable_full"):
            assert storage_dir is not None
            ours = Client(
                WRITE_KEY,
                url,
                gzip=True,
                max_queue_size=queue_size,
                storage_path=Path(storage_dir) / "queue.sqlite",
                storage_sync="full" if config == "durable_full" else "normal",
            )
        elif config == "nosend":
            ours = Client(WRITE_KEY, url, send=False)
        else:
            ours = Client(WRITE_KEY, url)
        return Adapter(
            track=ours.track,
            accepted=lambda result: result is not None,
            flush=lambda timeout: ours.flush(timeout=timeout),
            close=lambda timeout: ours.shutdown(timeout=timeout),
        )
    if sdk == "segment":
        from segment.analytics import Client as SegmentClient

        peer: Any = SegmentClient(WRITE_KEY, host=url, **options)
    elif sdk == "rudder":
        from rudderstack.analytics import Client as RudderClient

        peer = RudderClient(WRITE_KEY, host=url, **options)
    else:
        raise ValueError(f"unknown sdk {sdk!r}")
    # The peers' flush() is queue.join(), with no timeout: bound it from outside.
    return Adapter(
        track=peer.track,
        accepted=lambda result: bool(result[0]),  # type: ignore[index]  # (success, msg)
        flush=lambda timeout: _in_thread(peer.flush, timeout),
        close=lambda timeout: _in_thread(peer.join, timeout),
    )


def _max_rss_kib() -> int:
    """Peak resident set size of this process so far, in KiB.

    Linux: VmHWM of /proc/self/status. `ru_maxrss` would do on a fresh process, but Linux
    carries it over exec from the process that spawned us: a child of a 200 MiB parent
    reports 200 MiB before it has done anything. Elsewhere: ru_maxrss.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # macOS reports bytes


def child_cost(adapter: Adapter, rounds: int, calls: int, flush_timeout: float) -> JsonDict:
    """Per-call cost of `track()` on this thread: `rounds` x `calls`, flushed between rounds.

    The flush between rounds is not timed; it keeps every round starting from an empty
    queue, while the SDK's own delivery thread competes for the GIL during the round as it
    does in an application.
    """
    track, user_ids, props = adapter.track, USER_IDS, PROPERTIES
    accepted = 0
    for n in range(WARMUP_CALLS):
        accepted += adapter.accepted(track(user_ids[n % 1000], EVENT, props))
    flushed = adapter.flush(flush_timeout)
    per_call_us: list[float] = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for n in range(calls):
            track(user_ids[n % 1000], EVENT, props)
        elapsed = time.perf_counter_ns() - started
        per_call_us.append(elapsed / calls / 1000)
        flushed = adapter.flush(flush_timeout) and flushed
    return {
        "per_call_us": per_call_us,
        "median_us": statistics.median(per_call_us),
        "sent": WARMUP_CALLS + rounds * calls,
        "warmup_accepted": accepted,
        "flushed": flushed,
    }


def child_burst(adapter: Adapter, events: int, flush_timeout: float) -> JsonDict:
    """`events` calls as fast as possible, then flush; times, acceptance and peak RSS."""
    track, accepted, user_ids, props = adapter.track, adapter.accepted, USER_IDS, PROPERTIES
    ok = 0
    started = time.monotonic()
    for n in range(events):
        ok += accepted(track(user_ids[n % 1000], EVENT, props))
    enqueued = time.monotonic()
    flushed = adapter.flush(flush_timeout)
    done = time.monotonic()
    return {
        "sent": events,
        "accepted": ok,
        "started_at": started,
        "enqueue_s": enqueued - started,
        "flush_s": done - enqueued,
        "total_s": done - started,
        "flushed": flushed,
    }


def run_child(spec: JsonDict) -> JsonDict:
    """The child's whole job: build the client, run the mode, report RSS and timings."""
    import shutil
    import tempfile

    rss_start = _max_rss_kib()
    storage_dir = tempfile.mkdtemp(prefix="bench-storage-")
    try:
        adapter = make_adapter(
            spec["sdk"], spec["url"], spec["config"], spec["queue_size"], storage_dir
        )
        rss_ready = _max_rss_kib()
        if spec["mode"] == "cost":
            result = child_cost(adapter, spec["rounds"], spec["calls"], spec["flush_timeout"])
        else:
            result = child_burst(adapter, spec["events"], spec["flush_timeout"])
        result["rss_start_kib"] = rss_start
        result["rss_ready_kib"] = rss_ready
        result["rss_peak_kib"] = _max_rss_kib()
        result["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # see above
        adapter.close(5.0)
    finally:
        shutil.rmtree(storage_dir, ignore_errors=True)
    return result


def child_main(raw_spec: str) -> None:
    result = run_child(json.loads(raw_spec))
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    # Skip the SDKs' exit hooks: delivery is done and verified; nothing may hang here.
    os._exit(0)


# =========================================================================================
# The parent: virtualenv, sink, children, table, JSON.
# =========================================================================================


def env_python() -> Path:
    return ENV_DIR / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


_PROBE = """
import importlib.metadata as m, json, os, platform, sys
import analytics_sdk, segment.analytics, rudderstack.analytics
print(json.dumps({
    "ours_dir": os.path.dirname(os.path.dirname(os.path.abspath(analytics_sdk.__file__))),
    "versions": {name: m.version(name) for name in
                 ("analytics-sdk", "segment-analytics-python", "rudder-sdk-python")},
    "python": sys.version.split()[0], "platform": platform.platform(),
}))
"""


def _probe_env() -> JsonDict | None:
    import subprocess

    if not env_python().exists():
        return None
    try:
        done = subprocess.run(
            [str(env_python()), "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=BENCH_DIR,
        )
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    info: JsonDict = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(info["ours_dir"]).resolve() != REPO_ROOT:
        return None  # installed from another clone: install this one
    return info


def _env_stamp() -> str:
    """Changes when what the virtualenv must hold changes (our dependencies, the peers)."""
    import hashlib

    digest = hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes())
    digest.update(" ".join(PEER_PACKAGES).encode())
    return digest.hexdigest()


def ensure_env(reinstall: bool) -> JsonDict:
    """The benchmark virtualenv with both peers and this repository (editable)."""
    import subprocess

    stamp_file = ENV_DIR / "bench-stamp.txt"
    stamp = _env_stamp()
    fresh = stamp_file.exists() and stamp_file.read_text().strip() == stamp
    info = _probe_env() if fresh and not reinstall else None
    if info is not None:
        return info
    try:
        if not env_python().exists():
            print(f"creating {ENV_DIR} ...", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(ENV_DIR)], check=True, timeout=300)
        print(
            f"installing {', '.join(PEER_PACKAGES)} and -e {REPO_ROOT} ...",
            file=sys.stderr,
            flush=True,
        )
        command = [str(env_python()), "-m", "pip", "install", "--quiet"]
        command += ["--disable-pip-version-check", *(["--upgrade"] if reinstall else [])]
        subprocess.run([*command, *PEER_PACKAGES, "-e", str(REPO_ROOT)], check=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SystemExit(f"cannot set up the benchmark virtualenv {ENV_DIR}: {exc}") from None
    info = _probe_env()
    if info is None:
        raise SystemExit(f"the benchmark virtualenv {ENV_DIR} is not usable; try --reinstall")
    stamp_file.write_text(stamp + "\n")
    return info


def spawn(spec: JsonDict, timeout: float) -> JsonDict:
    """Run one measured child; its result, or {"error": ...} (never raises for the child)."""
    import subprocess

    command = [str(env_python()), str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=BENCH_DIR
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: JsonDict = json.loads(line[len(RESULT_PREFIX) :])
            return result
    return {"error": f"exit {done.returncode}: {done.stderr.strip()[-800:]}"}


_IMPORT_CODE = {
    "ours": "from analytics_sdk import Client\nClient({key!r}, {url!r})",
    "segment": "from segment.analytics import Client\nClient({key!r}, host={url!r})",
    "rudder": "from rudderstack.analytics import Client\nClient({key!r}, host={url!r})",
}
_TIMED_IMPORT = """
import time
_started = time.perf_counter()
{body}
_elapsed = time.perf_counter() - _started
import os, sys
sys.stdout.write(repr(_elapsed) + "\\n")
sys.stdout.flush()
os._exit(0)
"""
_PLAIN_IMPORT = "{body}\nimport os\nos._exit(0)\n"


def _importtime_modules(stderr: str) -> dict[str, int]:
    """`-X importtime` output as {module: self microseconds}."""
    modules: dict[str, int] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue  # the header line
        modules[parts[2].strip()] = modules.get(parts[2].strip(), 0) + int(parts[0])
    return modules


def _python_output(args: list[str]) -> tuple[str, str]:
    """stdout and stderr of the benchmark virtualenv's python with `args` (60 s at most)."""
    import subprocess

    try:
        done = subprocess.run(
            [str(env_python()), *args], capture_output=True, text=True, timeout=60, cwd=BENCH_DIR
        )
    except subprocess.TimeoutExpired:
        return "", "timed out after 60 s"
    return done.stdout, done.stderr


def measure_import(sdk: str, runs: int, url: str) -> JsonDict:
    """Import + construct in fresh interpreters: wall time, and -X importtime's own total.

    The importtime total sums the self time of every module the SDK's import loads beyond
    what a bare interpreter (`-c pass`) has already loaded at startup.
    """
    body = _IMPORT_CODE[sdk].format(key=WRITE_KEY, url=url)
    walls: list[float] = []
    errors: list[str] = []
    for _ in range(runs):
        stdout, stderr = _python_output(["-c", _TIMED_IMPORT.format(body=body)])
        try:
            walls.append(float(stdout.strip().splitlines()[-1]) * 1000)
        except (IndexError, ValueError):
            errors.append(stderr.strip()[-400:])
    totals: list[float] = []
    for _ in range(max(1, runs // 2)):
        startup = _importtime_modules(_python_output(["-X", "importtime", "-c", "pass"])[1])
        code = _PLAIN_IMPORT.format(body=body)
        loaded = _importtime_modules(_python_output(["-X", "importtime", "-c", code])[1])
        if loaded:
            totals.append(sum(us for name, us in loaded.items() if name not in startup) / 1000)
    result: JsonDict = {"wall_ms": walls, "importtime_ms": totals}
    if walls:
        result["median_wall_ms"] = statistics.median(walls)
    if totals:
        result["median_importtime_ms"] = statistics.median(totals)
    if errors:
        result["error"] = errors[0]
    return result


@dataclass(frozen=True)
class Plan:
    sdks: tuple[str, ...]
    events: int
    rounds: int
    calls: int
    import_runs: int
    repeat: int = 3

    @property
    def queue_size(self) -> int:
        return max(self.events, 100_000)

    @property
    def flush_timeout(self) -> float:
        return 60.0 + self.events / 1000  # seconds; generous: 14,600 events/s takes 7 s

    @property
    def child_timeout(self) -> float:
        return 2 * self.flush_timeout + 120.0


# The headline number of each repeated measurement: the median repetition is reported.
MEDIAN_OF = {
    "cost": "median_us",
    "cost_nosend": "median_us",
    "burst": "events_per_s",
    "defaults": "dropped",
    "durable": "accepted_per_s",
    "durable_full": "accepted_per_s",
}


def median_repetition(repetitions: list[JsonDict]) -> JsonDict:
    """One result per metric: the repetition whose headline number is the median.

    The SDKs are measured in turn, several times over, so that a slow spell of the
    (shared) machine falls on all of them alike rather than on whoever ran during it.
    """
    merged: JsonDict = dict(repetitions[0])
    for metric, key in MEDIAN_OF.items():
        runs = [
            r[metric] for r in repetitions if isinstance(r.get(metric, {}).get(key), (int, float))
        ]
        if runs:
            runs.sort(key=lambda run: float(run[key]))
            merged[metric] = runs[(len(runs) - 1) // 2]
    merged["repetitions"] = repetitions
    return merged


def measure_sdk(
    sdk: str, plan: Plan, sink: Sink, log: Callable[[str], None], with_import: bool = True
) -> JsonDict:
    """Every metric for one SDK, each mode in a fresh child process."""
    base = {
        "sdk": sdk,
        "url": sink.url,
        "queue_size": plan.queue_size,
        "flush_timeout": plan.flush_timeout,
    }
    out: JsonDict = {}

    log(f"{sdk}: track() cost, {plan.rounds} rounds x {plan.calls:,} calls")
    rounds = {"mode": "cost", "rounds": plan.rounds, "calls": plan.calls}
    sink.reset()
    cost = spawn({**base, **rounds, "config": "tuned"}, plan.child_timeout)
    if "error" not in cost:
        cost["sink"] = sink.wait_for(cost["sent"], 10.0)
    out["cost"] = cost

    log(f"{sdk}: track() cost with send=False (no delivery thread)")
    out["cost_nosend"] = spawn({**base, **rounds, "config": "nosend"}, plan.child_timeout)

    log(f"{sdk}: end-to-end burst of {plan.events:,} events, gzip on, queue {plan.queue_size:,}")
    sink.reset()
    burst = spawn(
        {**base, "mode": "burst", "config": "tuned", "events": plan.events}, plan.child_timeout
    )
    if "error" not in burst:
        stats = sink.wait_for(plan.events, 10.0)
        burst["sink"] = stats
        burst["complete"] = bool(burst["flushed"]) and stats["unique"] == plan.events
        if burst["complete"]:
            burst["events_per_s"] = plan.events / burst["total_s"]
            # Cross-check: the sink's own clock for the last new messageId.
            burst["sink_total_s"] = stats["last_new_at"] - burst["started_at"]
    out["burst"] = burst

    log(f"{sdk}: burst of {plan.events:,} events at default options")
    sink.reset()
    defaults = spawn(
        {**base, "mode": "burst", "config": "defaults", "events": plan.events}, plan.child_timeout
    )
    if "error" not in defaults:
        # Whatever was accepted is delivered within the flush; wait a little for stragglers.
        stats = sink.wait_for(defaults["accepted"], 5.0)
        defaults["sink"] = stats
        defaults["received"] = stats["unique"]
        defaults["dropped"] = plan.events - stats["unique"]
    out["defaults"] = defaults

    if sdk == "ours":
        for config, events in (("durable", plan.events), ("durable_full", plan.events // 5)):
            sync = "full" if config == "durable_full" else "normal"
            log(f"{sdk}: durable queue, storage_sync={sync}, burst of {events:,} events")
            sink.reset()
            durable = spawn(
                {**base, "mode": "burst", "config": config, "events": events},
                plan.child_timeout,
            )
            if "error" not in durable:
                stats = sink.wait_for(events, 10.0)
                durable["sink"] = stats
                durable["complete"] = bool(durable["flushed"]) and stats["unique"] == events
                durable["accepted_per_s"] = durable["accepted"] / durable["enqueue_s"]
                if durable["complete"]:
                    durable["events_per_s"] = events / durable["total_s"]
            out[config] = durable

    if with_import:
        log(f"{sdk}: import + construct, {plan.import_runs} fresh interpreters")
        out["import"] = measure_import(sdk, plan.import_runs, sink.url)
    return out


# -- the report ------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{suffix}"


def _get(result: JsonDict, *path: str) -> Any:
    current: Any = result
    for key in path:
        if not isinstance(current, dict) or key not in current:
            return None
        current = current[key]
    return current


def table_rows(results: dict[str, JsonDict], plan: Plan) -> list[tuple[str, list[str]]]:
    """(metric, one cell per SDK) rows of the report."""
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, cell: Callable[[JsonDict], str]) -> None:
        cells = []
        for sdk in plan.sdks:
            result = results[sdk]
            cells.append(cell(result))
        rows.append((label, cells))

    def err(part: JsonDict | None) -> str | None:
        if part is None:
            return "n/a"
        return "error" if "error" in part else None

    row(
        "track() per call, median [µs]",
        lambda r: err(r.get("cost")) or _num(_get(r, "cost", "median_us"), 2),
    )
    row(
        "  min .. max of rounds [µs]",
        lambda r: (
            err(r.get("cost"))
            or "{:.2f} .. {:.2f}".format(
                min(r["cost"]["per_call_us"]), max(r["cost"]["per_call_us"])
            )
        ),
    )
    row(
        "  send=False: no delivery thread [µs]",
        lambda r: err(r.get("cost_nosend")) or _num(_get(r, "cost_nosend", "median_us"), 2),
    )
    row(
        f"end-to-end {plan.events:,} events, gzip [ev/s]",
        lambda r: (
            err(r.get("burst"))
            or (
                _num(_get(r, "burst", "events_per_s"), 0)
                if _get(r, "burst", "complete")
                else "incomplete"
            )
        ),
    )
    row(
        "  all calls returned / flushed [s]",
        lambda r: (
            err(r.get("burst"))
            or "{:.2f} / {:.2f}".format(r["burst"]["enqueue_s"], r["burst"]["total_s"])
        ),
    )
    row(
        "  sink: unique messageIds",
        lambda r: err(r.get("burst")) or f"{r['burst']['sink']['unique']:,}",
    )
    row(
        f"dropped at defaults, {plan.events:,} burst",
        lambda r: (
            err(r.get("defaults"))
            or "{:,} ({:.1f}%)".format(
                r["defaults"]["dropped"], 100 * r["defaults"]["dropped"] / plan.events
            )
        ),
    )
    row(
        "  sink received / sent",
        lambda r: (
            err(r.get("defaults"))
            or "{:,} / {:,}".format(r["defaults"]["received"], r["defaults"]["sent"])
        ),
    )
    row(
        f"peak RSS, {plan.events:,} burst [MiB]",
        lambda r: err(r.get("burst")) or _num(r["burst"]["rss_peak_kib"] / 1024, 1),
    )
    row(
        "  after import + construct [MiB]",
        lambda r: err(r.get("burst")) or _num(r["burst"]["rss_ready_kib"] / 1024, 1),
    )

    def durable_rows(config: str, sync: str) -> None:
        row(
            f"storage_path, sync {sync}: calls/s accepted",
            lambda r: err(r.get(config)) or _num(_get(r, config, "accepted_per_s"), 0),
        )
        row(
            "  end to end [ev/s]",
            lambda r: (
                err(r.get(config))
                or (
                    _num(_get(r, config, "events_per_s"), 0)
                    if _get(r, config, "complete")
                    else "incomplete"
                )
            ),
        )

    durable_rows("durable", "normal")
    durable_rows("durable_full", "full")
    row("import + construct, median [ms]", lambda r: _num(_get(r, "import", "median_wall_ms"), 1))
    row("-X importtime total [ms]", lambda r: _num(_get(r, "import", "median_importtime_ms"), 1))
    return rows


def compute_ratios(results: dict[str, JsonDict], plan: Plan) -> JsonDict:
    """The target ratios, ours against each measured peer."""
    ratios: JsonDict = {}
    ours = results.get("ours")
    if ours is None:
        return ratios
    drops = _get(ours, "defaults", "dropped")
    ratios["ours_dropped_at_defaults"] = {
        "value": drops,
        "target": 0,
        "met": drops == 0 if drops is not None else None,
    }
    for peer in ("segment", "rudder"):
        other = results.get(peer)
        if other is None:
            continue

        def ratio(path: tuple[str, ...], target: float, at_most: bool) -> JsonDict:
            mine, theirs = _get(ours, *path), _get(other, *path)  # noqa: B023 - used at once
            if not mine or not theirs:
                return {"value": None, "target": target, "met": None}
            value = mine / theirs
            return {
                "value": value,
                "target": target,
                "met": value <= target if at_most else value >= target,
            }

        ratios[peer] = {
            "track_cost": ratio(("cost", "median_us"), COST_TARGET, at_most=True),
            "throughput": ratio(("burst", "events_per_s"), THROUGHPUT_TARGET, at_most=False),
            "peak_rss": ratio(("burst", "rss_peak_kib"), RSS_TARGET, at_most=True),
            "import_wall": ratio(("import", "median_wall_ms"), 1.0, at_most=True),
            "peer_dropped_at_defaults": _get(other, "defaults", "dropped"),
        }
    return ratios


def render(results: dict[str, JsonDict], ratios: JsonDict, plan: Plan) -> str:
    rows = table_rows(results, plan)
    headers = [SDK_TITLES[sdk] for sdk in plan.sdks]
    label_width = max(len(label) for label, _ in rows)
    widths = [max(len(h), *(len(cells[i]) for _, cells in rows)) for i, h in enumerate(headers)]
    lines = [
        "metric".ljust(label_width)
        + "".join(f"  {h:>{w}}" for h, w in zip(headers, widths, strict=True)),
        "-" * (label_width + sum(w + 2 for w in widths)),
    ]
    for label, cells in rows:
        lines.append(
            label.ljust(label_width)
            + "".join(f"  {c:>{w}}" for c, w in zip(cells, widths, strict=True))
        )

    def verdict(entry: JsonDict) -> str:
        met = entry.get("met")
        return "" if met is None else ("  met" if met else "  MISSED")

    def fmt(entry: JsonDict, kind: str) -> str:
        value = entry.get("value")
        if value is None:
            return "n/a"
        return f"{value:.2f}x" if kind == "x" else f"{value:.3f}"

    if ratios:
        lines += ["", "targets (ours vs peer)"]
        drop = ratios["ours_dropped_at_defaults"]
        lines.append(
            f"  ours dropped at defaults ({plan.events:,} burst): "
            f"{drop['value']} (target 0){verdict(drop)}"
        )
        for peer in ("segment", "rudder"):
            if peer not in ratios:
                continue
            r = ratios[peer]
            lines.append(f"  vs {peer}:")
            lines.append(
                f"    track() cost ours/{peer}: {fmt(r['track_cost'], 'r')} "
                f"(target <= 0.333){verdict(r['track_cost'])}"
            )
            lines.append(
                f"    end-to-end events/s ours/{peer}: {fmt(r['throughput'], 'x')} "
                f"(target >= 4x){verdict(r['throughput'])}"
            )
            lines.append(
                f"    peak RSS ours/{peer}: {fmt(r['peak_rss'], 'r')} "
                f"(target <= 0.5){verdict(r['peak_rss'])}"
            )
            lines.append(
                f"    import + construct ours/{peer}: {fmt(r['import_wall'], 'r')} (no target)"
            )
            lines.append(f"    {peer} dropped at defaults: {r['peer_dropped_at_defaults']}")
    return "\n".join(lines)


def _git_state() -> JsonDict:
    """The repository's commit and whether the measured tree had uncommitted changes."""
    import subprocess

    state: JsonDict = {"commit": None, "dirty": None}
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=REPO_ROOT
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "analytics_sdk"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=REPO_ROOT,
        )
    except (OSError, subprocess.SubprocessError):
        return state
    if head.returncode == 0:
        state["commit"] = head.stdout.strip()
        state["dirty"] = bool(status.stdout.strip())
    return state


def parse_args(argv: Sequence[str]) -> tuple[Plan, bool, bool]:
    """The plan, whether to reinstall the virtualenv, whether to save the JSON."""
    import argparse

    parser = argparse.ArgumentParser(
        description="Benchmark analytics_sdk against segment-analytics-python and "
        "rudder-sdk-python on a local sink (see benchmarks/README.md)."
    )
    parser.add_argument("--events", type=int, help="events per burst (default 100000)")
    parser.add_argument("--rounds", type=int, help="timed rounds of track() (default 20)")
    parser.add_argument("--calls", type=int, help="track() calls per round (default 5000)")
    parser.add_argument("--import-runs", type=int, help="fresh interpreters per SDK (default 7)")
    parser.add_argument(
        "--repeat",
        type=int,
        help="interleaved repetitions of every measurement; the median is reported (default 3)",
    )
    parser.add_argument(
        "--sdk", default=",".join(SDKS), help="comma-separated subset of: ours,segment,rudder"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 20000 events, 5 rounds x 2000 calls, 3 imports",
    )
    parser.add_argument(
        "--reinstall",
        action="store_true",
        help="reinstall (and upgrade) the benchmark virtualenv's packages",
    )
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON file")
    args = parser.parse_args(argv)
    sdks = tuple(s.strip() for s in args.sdk.split(",") if s.strip())
    unknown = [s for s in sdks if s not in SDKS]
    if unknown or not sdks:
        parser.error(f"--sdk takes a subset of {','.join(SDKS)} (got {args.sdk!r})")
    quick = bool(args.quick)
    plan = Plan(
        sdks=sdks,
        events=args.events or (20_000 if quick else 100_000),
        rounds=args.rounds or (5 if quick else 20),
        calls=args.calls or (2_000 if quick else 5_000),
        import_runs=args.import_runs or (3 if quick else 7),
        repeat=args.repeat or (1 if quick else 3),
    )
    if min(plan.events, plan.rounds, plan.calls, plan.import_runs, plan.repeat) < 1:
        parser.error("--events, --rounds, --calls, --import-runs and --repeat must be positive")
    return plan, bool(args.reinstall), not args.no_save


def main(argv: Sequence[str]) -> int:
    plan, reinstall, save = parse_args(argv)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    env = ensure_env(reinstall)
    log(f"benchmark env: Python {env['python']}, {env['versions']}")
    sink = Sink(sys.executable)
    results: dict[str, JsonDict] = {}
    try:
        log(f"sink at {sink.url}")
        repetitions: dict[str, list[JsonDict]] = {sdk: [] for sdk in plan.sdks}
        for repetition in range(plan.repeat):
            log(f"repetition {repetition + 1} of {plan.repeat}")
            for sdk in plan.sdks:  # interleaved: drift of the machine hits every SDK alike
                first = repetition == 0
                repetitions[sdk].append(measure_sdk(sdk, plan, sink, log, with_import=first))
        results = {sdk: median_repetition(runs) for sdk, runs in repetitions.items()}
    finally:
        sink.stop()
    ratios = compute_ratios(results, plan)
    report = render(results, ratios, plan)
    print()
    print(report)

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    document = {
        "timestamp": stamp,
        "command": " ".join([Path(sys.argv[0]).name, *argv]),
        "plan": {
            "sdks": list(plan.sdks),
            "events": plan.events,
            "rounds": plan.rounds,
            "calls": plan.calls,
            "import_runs": plan.import_runs,
            "repeat": plan.repeat,
            "queue_size_tuned": plan.queue_size,
        },
        "environment": {**env, "cpu_count": os.cpu_count(), **_git_state()},
        "results": results,
        "ratios": ratios,
        "table": report,
        "duration_s": time.monotonic() - started,
    }
    if save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{stamp}.json"
        path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nresults: {path.relative_to(REPO_ROOT)}  ({document['duration_s']:.0f} s)")
    return 0


def _dispatch(argv: list[str]) -> int:
    if argv[:1] == ["--sink"]:
        serve_sink(float(argv[1]) if len(argv) > 1 else SINK_LIFETIME)
        return 0
    if argv[:1] == ["--child"]:
        child_main(argv[1])
        return 0  # not reached: the child leaves through os._exit
    return main(argv)


if __name__ == "__main__":
    sys.exit(_dispatch(sys.argv[1:]))
