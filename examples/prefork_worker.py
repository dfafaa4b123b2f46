"""A gunicorn/celery-style pre-fork worker pool: one client made in the parent, used after fork.

    python examples/prefork_worker.py [workers] [jobs-per-worker]

The parent creates the client (as an app imported before forking does) and tracks a
"Pool Started" event; then it forks workers that each process jobs and track one event per
job. After a fork the client notices it is in a new process: the child gets its own queue
and delivery thread and nothing of the parent's queue is sent twice. Each worker flushes
before it exits (os._exit skips the atexit hooks, as worker pools do), and the parent
shuts down last. Without ANALYTICS_SDK_DATA_PLANE_URL it runs against the dev server.
"""

from __future__ import annotations

import os
import sys

from analytics_sdk import Client
from analytics_sdk.devserver import DevServer


def work(client: Client, worker: int, jobs: int) -> int:
    for job in range(jobs):
        client.track(f"worker-{worker}", "Job Processed", {"job": job, "pid": os.getpid()})
    delivered = client.flush(timeout=10)  # a worker that exits with os._exit must flush itself
    return 0 if delivered else 1


def main(workers: int = 4, jobs: int = 25) -> int:
    url = os.environ.get("ANALYTICS_SDK_DATA_PLANE_URL")
    server = None if url else DevServer().start()
    key = os.environ.get("ANALYTICS_SDK_WRITE_KEY") or (server.write_key if server else None)
    client = Client(key, url or (server.url if server else None))
    client.track("pool", "Pool Started", {"workers": workers})

    children = []
    for worker in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                code = work(client, worker, jobs)
            finally:
                os._exit(code)
        children.append(pid)
    failed = sum(os.waitpid(pid, 0)[1] != 0 for pid in children)
    client.shutdown()
    if server is not None:
        stored = server.events(limit=100_000)
        print(f"{workers} workers x {jobs} jobs: the dev server stored {len(stored)} events "
              f"({len({e['messageId'] for e in stored})} distinct), {failed} workers failed")
        server.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*(int(arg) for arg in sys.argv[1:3])))
