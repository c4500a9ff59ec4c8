#!/usr/bin/env python3
"""One stage of the example pipelines (docs/pipelines.md).

    stage.py NAME [--items N] [--sleep S] [--fail-first N] [--fail]

Prints what it does, item by item, with the run and correlation id the
pipeline gives it (ORCH_RUN, ORCH_CORRELATION_ID). `--fail-first N` fails
the first N attempts of this stage in a run (ORCH_STAGE_ATTEMPT) (a flaky dependency: the retry
policy absorbs it); `--fail` always fails (a broken dependency: its circuit
breaker opens).
"""

import argparse
import os
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("--items", type=int, default=5)
    p.add_argument("--sleep", type=float, default=0.05)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--fail", action="store_true")
    a = p.parse_args()
    run = os.environ.get("ORCH_RUN", "manual")
    cid = os.environ.get("ORCH_CORRELATION_ID", "-")
    print(f"{a.name}: run {run}, correlation id {cid}", flush=True)
    if a.fail:
        print(f"{a.name}: cannot reach the endpoint (connection refused)", file=sys.stderr)
        return 1
    attempt = int(os.environ.get("ORCH_STAGE_ATTEMPT", "1"))
    if attempt <= a.fail_first:
        print(f"{a.name}: attempt {attempt} failed (the service answered 503)", file=sys.stderr)
        return 1
    for i in range(a.items):
        print(f"{a.name}: processed {i + 1}/{a.items}", flush=True)
        time.sleep(a.sleep)
    print(f"{a.name}: done", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
