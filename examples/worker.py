"""An example backend worker: runs a fake analysis and a refactoring job, publishing progress.

    pip install ./clients/python     # the publisher package, forge-realtime-publisher (redis only)
    REDIS_URL=redis://127.0.0.1:6379/0 python examples/worker.py org_123 a1 j1

Open a client first (README "Try it") on channels analysis:a1 and job:j1 to watch it move; a
client that connects half-way sees the latest progress and status at once (live state).
"""

from __future__ import annotations

import os
import sys
import time

from forge_publisher import Publisher


def main(tenant: str, analysis_id: str, job_id: str) -> None:
    events = Publisher.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), tenant,
                                prefix=os.environ.get("REDIS_PREFIX", "rt"))
    events.job_status(job_id, "queued")
    events.job_status(job_id, "running")
    for progress in range(0, 101, 10):
        events.progress(analysis_id, progress, stage="scanning" if progress < 50 else "scoring")
        time.sleep(0.5)
    events.job_status(job_id, "completed", pullRequest=f"https://git.example/pr/{job_id}")
    events.alert("info", f"Analysis {analysis_id} finished")


if __name__ == "__main__":
    main(*(sys.argv[1:4] or ["demo-tenant", "a1", "j1"]))
