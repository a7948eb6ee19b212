"""Paths, contender names and settings, and the runner's one error type."""

from __future__ import annotations

import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
ROOT = BENCH.parent

CONTENDERS = ["direct", "lambda-model", "fixed-80", "shoal-auto", "capped-serial"]
# The queue-throughput scenario's contenders: Shoal's queue and two queues Node developers
# run on their own machines (BullMQ on Redis, twice: fsync before every reply, and once a
# second; a PostgreSQL table read with FOR UPDATE SKIP LOCKED).
QUEUE_CONTENDERS = ["shoal", "bullmq-always", "bullmq-everysec", "pg-skip-locked"]
# The Python scenarios compare fewer: the plain server, Lambda's model and the defaults.
PYTHON_CONTENDERS = ["direct", "lambda-model", "shoal-auto"]
# Manifest settings per Shoal contender.
SETTINGS = {
    "lambda-model": {"concurrency": "1"},
    "fixed-80": {"concurrency": "80"},
    "shoal-auto": {"concurrency": '"auto"'},
    "capped-serial": {"concurrency": "1", "max_instances": "4"},
}
SEED_REFERENCE = (
    "The seed's own figures, for reference (2018, AWS us-east-1 and a VM): Lambda, "
    "10 concurrent calls: 10 instances, 2.7–3.4 s; direct Node on a VM: 1 instance, "
    "2.3–3.1 s; other clouds with 4 instances: 3.4–8.9 s; Lambda, 100 concurrent: "
    "100 instances, 3–5 s."
)
OHA_VERSION = "1.16.0"
# A range rather than one version: every release in it draws these plots, and from 3.8 on
# Axes.ecdf exists (the CDFs use it). The upper bound keeps an unseen release's layout
# changes from redrawing the committed SVGs on whichever machine re-runs a scenario.
MATPLOTLIB = "matplotlib>=3.8,<3.12"


class BenchError(Exception):
    """A missing tool or a contender that did not work: stops the run with a clear line."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)
