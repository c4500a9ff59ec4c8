#!/usr/bin/env python3
"""Dask distributed peer benchmark: throughput, latency and failover shapes on 127.0.0.1.

Cluster for every shape: one `dask scheduler` process and two `dask worker` processes
(--nthreads 1 --nworkers 1 --no-nanny), all bound to 127.0.0.1.
Prints exactly one JSON object on the last line of stdout; everything else goes to stderr.
See benches/peers/README.md.
"""
import glob
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers_common as pc  # noqa: E402

DASK_SPEC = "dask[distributed]>=2024.1,<2027"

WARMUP_TASKS = 500
LATENCY_WARMUP = 20
START_TIMEOUT = 60        # scheduler + workers up and registered
THROUGHPUT_TIMEOUT = 300  # the whole batch of no-op tasks
LATENCY_TIMEOUT = 30      # one round trip
TASK_START_TIMEOUT = 60   # long task reporting that it started on the victim
FAILOVER_TIMEOUT = 120    # detection + re-run after the kill
POLL = 0.01               # failover polling interval (s)


def install():
    def check():
        import dask  # noqa: F401
        import distributed  # noqa: F401
    installed, secs = pc.pip_install(DASK_SPEC, check)
    import dask
    import distributed
    return {"version": distributed.__version__, "dask_version": dask.__version__,
            "install": {"spec": DASK_SPEC, "installed_now": installed, "seconds": secs}}


def dask_cli():
    exe = os.path.join(os.path.dirname(sys.executable), "dask")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "dask"]


class DaskCluster:
    """scheduler + named workers as separate OS processes on 127.0.0.1, and a Client."""

    def __init__(self, cleanup, worker_names):
        from distributed import Client
        self.tmp = pc.make_tempdir("db", cleanup)
        self.port = pc.free_port()
        self.address = "tcp://127.0.0.1:%d" % self.port
        env = dict(os.environ)
        env["DASK_DISTRIBUTED__LOGGING__DISTRIBUTED"] = "warning"
        # Scratch space (the scheduler makes one too) inside our temp dir, not /tmp/dask-scratch-space.
        env["DASK_TEMPORARY_DIRECTORY"] = self.tmp
        cli = dask_cli()
        t0 = time.monotonic()
        self.scheduler = pc.spawn(cli + ["scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                         "--no-dashboard"],
                                  cleanup, env=env, what="kill dask scheduler")
        self.workers = {}
        for name in worker_names:
            self.workers[name] = pc.spawn(
                cli + ["worker", self.address, "--name", name, "--host", "127.0.0.1", "--nthreads", "1",
                       "--nworkers", "1", "--no-nanny", "--no-dashboard",
                       "--local-directory", os.path.join(self.tmp, name)],
                cleanup, env=env, what="kill dask worker %s" % name)
        deadline = time.monotonic() + START_TIMEOUT
        self.client = None
        while self.client is None:
            try:
                self.client = Client(self.address, timeout=5)
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("timed out after %ds waiting for the dask scheduler at %s"
                                       % (START_TIMEOUT, self.address))
                time.sleep(0.2)
        cleanup.push(self.client.close, what="close dask client")
        try:
            self.client.wait_for_workers(len(worker_names), timeout=max(1, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - dask raises its own TimeoutError flavours
            raise TimeoutError("timed out after %ds waiting for %d dask workers to register"
                               % (START_TIMEOUT, len(worker_names)))
        pc.log("dask cluster (%s) up in %.1fs" % (", ".join(worker_names), time.monotonic() - t0))

    def worker_addresses(self):
        """{name: address} straight from the scheduler (an RPC, not the client's cache)."""
        return self.client.run_on_scheduler(
            lambda dask_scheduler: {ws.name: addr for addr, ws in dask_scheduler.workers.items()})


def noop(i=None):
    return None


def shape_throughput(cl, n):
    from distributed import wait
    c = cl.client
    w = min(WARMUP_TASKS, n)
    futs = c.map(noop, range(w), pure=False)
    wait(futs, timeout=THROUGHPUT_TIMEOUT)
    del futs
    t0 = time.perf_counter()
    futs = c.map(noop, range(n))
    wait(futs, timeout=THROUGHPUT_TIMEOUT)
    c.gather(futs)
    dt = time.perf_counter() - t0
    errs = sum(1 for f in futs if f.status != "finished")
    del futs
    if errs:
        raise RuntimeError("%d of %d tasks did not finish" % (errs, n))
    return pc.throughput_summary(n, dt, warmup_tasks=w,
                                 method="client.map(noop, range(N)) + wait + client.gather; "
                                        "2 workers x 1 thread, no nanny")


def shape_latency(cl, k):
    c = cl.client
    for i in range(LATENCY_WARMUP):
        c.submit(noop, i, pure=False).result(timeout=LATENCY_TIMEOUT)
    samples = []
    for i in range(k):
        t0 = time.perf_counter()
        c.submit(noop, i, pure=False).result(timeout=LATENCY_TIMEOUT)
        samples.append(time.perf_counter() - t0)
    d = pc.latency_summary(samples)
    d["method"] = "client.submit(noop, i, pure=False).result() sequentially, after %d warm-up calls" % LATENCY_WARMUP
    return d


# ----------------------------------------------------------------------------------------
def long_task(marker_dir, seconds):
    import json as _j
    import os as _o
    import time as _t
    from distributed import get_worker
    m = {"t": _t.time(), "pid": _o.getpid(), "worker": get_worker().name}
    p = _o.path.join(marker_dir, "start-%d-%d.json" % (m["pid"], int(m["t"] * 1e6)))
    with open(p + ".tmp", "w") as f:
        _j.dump(m, f)
    _o.rename(p + ".tmp", p)
    _t.sleep(seconds)
    return m["worker"]


def read_markers(d):
    out = []
    for p in glob.glob(os.path.join(d, "start-*.json")):
        try:
            with open(p) as f:
                out.append(json.load(f))
        except (OSError, ValueError):
            pass
    return sorted(out, key=lambda m: m["t"])


def dask_failure_defaults():
    import dask
    keys = ["distributed.scheduler.worker-ttl", "distributed.scheduler.allowed-failures",
            "distributed.comm.timeouts.connect", "distributed.comm.timeouts.tcp",
            "distributed.comm.tcp.keepalive" if dask.config.get("distributed.comm.tcp.keepalive", None) else None]
    out = {k: dask.config.get(k, None) for k in keys if k}
    out["worker_heartbeat"] = "adaptive (distributed default)"
    out["nanny"] = "not used (--no-nanny)"
    return out


def shape_failover(cleanup, task_s):
    cl = DaskCluster(cleanup, ["survivor", "victim"])
    c = cl.client
    marker_dir = os.path.join(cl.tmp, "markers")
    os.mkdir(marker_dir)
    addrs = cl.worker_addresses()
    victim_addr = addrs["victim"]
    fut = c.submit(long_task, marker_dir, task_s, workers=[victim_addr], allow_other_workers=True, pure=False)
    cleanup.push(lambda: c.cancel([fut]), what="cancel long task")
    first = pc.wait_until(lambda: read_markers(marker_dir), TASK_START_TIMEOUT,
                          "the long task to start on the victim worker")[0]
    if first["worker"] != "victim":
        raise RuntimeError("long task started on worker %r, not on the victim" % first["worker"])

    vproc = cl.workers["victim"]
    table = pc.proc_table()
    pids = pc.pids_in_session(vproc.pid, table) | pc.descendants([vproc.pid], table)
    if first["pid"] not in pids:
        raise RuntimeError("the task's process %d is not among the victim worker's processes" % first["pid"])
    pc.log("kill -9 of victim worker processes %s" % sorted(pids))
    t_kill = time.time()
    m_kill = time.monotonic()
    pc.kill_pids(pids)

    detect_ms = rerun_ms = None
    rerun = None
    end = m_kill + FAILOVER_TIMEOUT
    while (detect_ms is None or rerun_ms is None) and time.monotonic() < end:
        if detect_ms is None:
            try:
                names = cl.worker_addresses()
            except Exception as e:  # noqa: BLE001
                pc.log("scheduler query failed: %s" % e)
                names = {"victim": victim_addr}
            if "victim" not in names:
                detect_ms = (time.monotonic() - m_kill) * 1000.0
                pc.log("scheduler dropped the victim after %.1f ms" % detect_ms)
        if rerun_ms is None:
            ms = [m for m in read_markers(marker_dir) if m["pid"] != first["pid"]]
            if ms:
                rerun = ms[0]
                rerun_ms = (rerun["t"] - t_kill) * 1000.0
                pc.log("task re-ran on worker %s after %.1f ms" % (rerun["worker"], rerun_ms))
        time.sleep(POLL)
    # The poll above costs an RPC per round (tens of ms on a busy box); the scheduler's own
    # event log stamps the moment it removed the worker, so prefer that figure.
    detect_poll_ms, detect_via = detect_ms, None
    if detect_ms is not None:
        try:
            for ts, msg in c.get_events(victim_addr):
                if isinstance(msg, dict) and msg.get("action") == "remove-worker":
                    detect_ms = (ts - t_kill) * 1000.0
                    detect_via = ("timestamp of the scheduler's 'remove-worker' event for the victim "
                                  "(client.get_events)")
                    break
        except Exception as e:  # noqa: BLE001
            pc.log("could not read scheduler events: %s" % e)
    res = {"detect_ms": round(detect_ms, 1) if detect_ms is not None else None,
           "rerun_ms": round(rerun_ms, 1) if rerun_ms is not None else None,
           "detect_via": detect_via or ("scheduler's worker list (client.run_on_scheduler) no longer has the "
                                        "victim (polled every %d ms)" % (POLL * 1000)),
           "detect_poll_ms": round(detect_poll_ms, 1) if detect_poll_ms is not None else None,
           "rerun_via": "timestamp written by the task when the scheduler re-ran it (loose worker "
                        "restriction: workers=[victim], allow_other_workers=True)",
           "rerun_worker": rerun["worker"] if rerun else None,
           "killed_processes": len(pids),
           "defaults": dask_failure_defaults(),
           "cluster": "dask scheduler + 2 x dask worker --nthreads 1 --nworkers 1 --no-nanny"}
    if detect_ms is None or rerun_ms is None:
        missing = [w for w, v in (("the scheduler to drop the worker", detect_ms), ("the task to re-run", rerun_ms))
                   if v is None]
        res["error"] = "timed out after %ds waiting for %s" % (FAILOVER_TIMEOUT, " and ".join(missing))
    return res


def body(result, cleanup, args):
    pc.run_shapes(result, args, 'dask cluster', lambda sub: DaskCluster(sub, ["w1", "w2"]),
                  shape_throughput, shape_latency, shape_failover)


def main():
    args = pc.parse_args("dask")
    return pc.main_wrapper("dask", install, lambda r, c: body(r, c, args), args)


if __name__ == "__main__":
    sys.exit(main())
