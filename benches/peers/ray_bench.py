#!/usr/bin/env python3
"""Ray peer benchmark: throughput, latency and failover shapes on 127.0.0.1.

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

RAY_SPEC = "ray>=2,<3"

# Never send usage statistics anywhere: this benchmark talks to 127.0.0.1 only.
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")
# On Linux Ray rewrites 127.0.0.1 (for --node-ip-address, --address and ray.init) to the
# machine's routable address. With this switch off, Ray's own "which IP am I" helper returns
# 127.0.0.1, so every Ray process (GCS, raylets, agents, workers, drivers) stays on loopback.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

# The same switch makes `ray start --address` refuse to add a second node, so the victim node's
# `ray start` goes through this wrapper: allow the worker node, keep the answer on loopback.
JOIN_WRAPPER = """
import sys
import ray._private.ray_constants as rc
import ray._private.services as sv
rc.ENABLE_RAY_CLUSTER = True
sv.node_ip_address_from_perspective = lambda *a, **k: "127.0.0.1"
from ray.scripts.scripts import main
sys.exit(main())
"""

WARMUP_TASKS = 500
LATENCY_WARMUP = 20
START_TIMEOUT = 90        # ray start / ray.init
THROUGHPUT_TIMEOUT = 300  # the whole batch of no-op tasks
LATENCY_TIMEOUT = 30      # one round trip
TASK_START_TIMEOUT = 90   # long task reporting that it started on the victim
FAILOVER_TIMEOUT = 120    # detection + re-run after the kill
POLL = 0.01               # failover polling interval of ray.nodes() and the marker dir (s)


def install():
    def check():
        import ray  # noqa: F401
    installed, secs = pc.pip_install(RAY_SPEC, check)
    import ray
    return {"version": ray.__version__, "install": {"spec": RAY_SPEC, "installed_now": installed,
                                                    "seconds": secs}}


def ray_cli():
    exe = os.path.join(os.path.dirname(sys.executable), "ray")
    if os.path.exists(exe):
        return [exe]
    return [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]


def kill_ray_processes_under(tmpdir):
    """Kill every process whose command line mentions our private Ray temp dir, plus its
    descendants (worker processes rename themselves to ray::IDLE, so match by tree)."""
    table = pc.proc_table()
    roots = [pid for pid, (_, _, cmd) in table.items() if tmpdir in cmd and pid != os.getpid()]
    pids = pc.descendants(roots, table) - {os.getpid()}
    if pids:
        pc.log("killing %d leftover Ray processes under %s" % (len(pids), tmpdir))
        pc.kill_pids(pids)
        pc.wait_pids_gone(pids, 5)


def forget_token_if_new(cleanup):
    """Ray >= 2.5x writes ~/.ray/auth_token on a fresh ray.init(); remove it again if we made it."""
    path = os.path.expanduser("~/.ray/auth_token")
    existed_dir = os.path.isdir(os.path.dirname(path))
    if os.path.exists(path):
        return

    def _rm():
        if os.path.exists(path):
            os.unlink(path)
        if not existed_dir and os.path.isdir(os.path.dirname(path)) and not os.listdir(os.path.dirname(path)):
            os.rmdir(os.path.dirname(path))
    cleanup.push(_rm, what="remove ~/.ray/auth_token created by this run")


def restore_auth_mode(saved):
    """A fresh local ray.init() turns token auth on *for this process and its children* by
    setting os.environ["RAY_AUTH_MODE"] = "token" (and refreshing the cached RayConfig); it is
    not undone by ray.shutdown(). Once forget_token_if_new() has deleted ~/.ray/auth_token
    again, a later `ray start --head` (which inherits our environment) or ray.init(address=)
    then fails with "Token authentication is enabled but no authentication token was found".
    Put RAY_AUTH_MODE back as it was before ray.init() and refresh Ray's cached config."""
    if saved is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = saved
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except Exception as e:  # noqa: BLE001  (older Ray without token auth)
        pc.log("could not refresh Ray's auth config: %s" % pc.one_line(e))


def ray_start(cmd, cleanup, env, tmp, name, label):
    """Run a (non-blocking) `ray start ...`; its stdout/stderr go to a file in `tmp`, which is
    copied to our stderr afterwards. On failure the error names the last line of that output."""
    log_path = os.path.join(tmp, "%s.log" % name)
    with open(log_path, "wb") as out:
        p = pc.spawn(cmd, cleanup, env=env, what="kill Ray %s" % name, stdout=out, stderr=out)
    try:
        rc = p.wait(timeout=START_TIMEOUT)
    except Exception:
        rc = None
    with open(log_path, errors="replace") as f:
        text = f.read()
    sys.stderr.write(text)
    sys.stderr.flush()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = (": " + lines[-1][:400]) if lines else ""
    if rc is None:
        raise TimeoutError("timed out after %ds waiting for `%s`%s" % (START_TIMEOUT, label, last))
    if rc != 0:
        raise RuntimeError("`%s` exited %d%s" % (label, rc, last))
    return p


def kill_my_descendants():
    pids = pc.descendants([os.getpid()]) - {os.getpid()}
    if pids:
        pc.kill_pids(pids)
        pc.wait_pids_gone(pids, 5)


# ----------------------------------------------------------------------------------------
def local_cluster(cleanup):
    """One local Ray node with as many CPUs as the machine (ray.init starts it)."""
    import ray
    tmp = pc.make_tempdir("rb", cleanup)
    # Pushed first, so it runs last: after ray.shutdown() and the removal of the token.
    cleanup.push(restore_auth_mode, os.environ.get("RAY_AUTH_MODE"), what="restore RAY_AUTH_MODE")
    forget_token_if_new(cleanup)
    cleanup.push(kill_my_descendants, what="kill Ray processes started by ray.init")
    cleanup.push(kill_ray_processes_under, tmp, what="kill Ray processes under temp dir")
    cleanup.push(ray.shutdown, what="ray.shutdown")
    t0 = time.monotonic()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=tmp,
             _node_ip_address="127.0.0.1", logging_level="WARNING", log_to_driver=True)
    pc.log("ray.init took %.1fs" % (time.monotonic() - t0))


def shape_throughput(n):
    import ray

    @ray.remote
    def noop(i=None):
        return None

    # Warm up: start the worker processes so their start-up is not in the figure.
    ray.get([noop.remote() for _ in range(min(WARMUP_TASKS, n))], timeout=THROUGHPUT_TIMEOUT)
    t0 = time.perf_counter()
    refs = [noop.remote() for _ in range(n)]
    ray.get(refs, timeout=THROUGHPUT_TIMEOUT)
    dt = time.perf_counter() - t0
    return pc.throughput_summary(n, dt, warmup_tasks=min(WARMUP_TASKS, n),
                                 method="ray.get([noop.remote() for _ in range(N)]), 1 node, num_cpus=%d"
                                 % os.cpu_count())


def shape_latency(k):
    import ray

    @ray.remote
    def noop():
        return None

    for _ in range(LATENCY_WARMUP):
        ray.get(noop.remote(), timeout=LATENCY_TIMEOUT)
    samples = []
    for _ in range(k):
        t0 = time.perf_counter()
        ray.get(noop.remote(), timeout=LATENCY_TIMEOUT)
        samples.append(time.perf_counter() - t0)
    d = pc.latency_summary(samples)
    d["method"] = "ray.get(noop.remote()) sequentially, 1 node, after %d warm-up calls" % LATENCY_WARMUP
    return d


# ----------------------------------------------------------------------------------------
def ray_health_defaults():
    """Failure-detection settings in force (Ray's defaults unless RAY_* env overrides)."""
    names = ["health_check_initial_delay_ms", "health_check_period_ms", "health_check_timeout_ms",
             "health_check_failure_threshold"]
    out = {}
    try:
        from ray._raylet import Config  # exposes some RayConfig values
        for nm in names:
            if hasattr(Config, nm):
                out[nm] = getattr(Config, nm)()
    except Exception:  # noqa: BLE001
        pass
    for nm in names:
        env = os.environ.get("RAY_" + nm)
        if env is not None:
            out[nm] = "%s (env override)" % env
    return out


def read_markers(d):
    out = []
    for p in glob.glob(os.path.join(d, "start-*.json")):
        try:
            with open(p) as f:
                out.append(json.load(f))
        except (OSError, ValueError):
            pass
    return sorted(out, key=lambda m: m["t"])


def shape_failover(cleanup, task_s):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    tmp = pc.make_tempdir("rf", cleanup)
    forget_token_if_new(cleanup)
    marker_dir = os.path.join(tmp, "markers")
    os.mkdir(marker_dir)
    cli = ray_cli()
    gcs_port = pc.free_port()
    victim_nm_port = pc.free_port()
    env = dict(os.environ)

    cleanup.push(kill_ray_processes_under, tmp, what="kill failover Ray processes")
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats", "--num-cpus=1"]
    t0 = time.monotonic()
    head = ray_start(cli + ["start", "--head", "--port=%d" % gcs_port, "--include-dashboard=false",
                            "--temp-dir=%s" % tmp] + common,
                     cleanup, env, tmp, "head", "ray start --head")
    head_sid = head.pid
    victim = ray_start([sys.executable, "-c", JOIN_WRAPPER, "start", "--address=127.0.0.1:%d" % gcs_port,
                        "--resources={\"victim\": 1}", "--node-manager-port=%d" % victim_nm_port] + common,
                       cleanup, env, tmp, "victim", "ray start --address (victim node)")
    victim_sid = victim.pid
    pc.log("two-node cluster started in %.1fs" % (time.monotonic() - t0))

    ray.init(address="127.0.0.1:%d" % gcs_port, logging_level="WARNING")
    cleanup.push(ray.shutdown, what="ray.shutdown (failover driver)")

    def find_victim():
        for nd in ray.nodes():
            if nd.get("Alive") and nd.get("Resources", {}).get("victim"):
                return nd
        return None
    vnode = pc.wait_until(find_victim, 30, "the victim node to register in ray.nodes()", 0.1)
    victim_id = vnode["NodeID"]
    pc.log("victim node %s (node manager port %s)" % (victim_id, vnode.get("NodeManagerPort")))

    @ray.remote(num_cpus=1)  # max_retries left at Ray's default
    def long_task(marker_dir, seconds):
        import json as _j, os as _o, time as _t
        import ray as _r
        m = {"t": _t.time(), "pid": _o.getpid(), "ppid": _o.getppid(),
             "node": _r.get_runtime_context().get_node_id()}
        p = _o.path.join(marker_dir, "start-%d-%d.json" % (m["pid"], int(m["t"] * 1e6)))
        with open(p + ".tmp", "w") as f:
            _j.dump(m, f)
        _o.rename(p + ".tmp", p)
        _t.sleep(seconds)
        return m["node"]

    ref = long_task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(victim_id, soft=True)).remote(
        marker_dir, task_s)
    cleanup.push(lambda: ray.cancel(ref, force=True), what="cancel long task")
    first = pc.wait_until(lambda: read_markers(marker_dir), TASK_START_TIMEOUT,
                          "the long task to start on the victim node")[0]
    if first["node"] != victim_id:
        raise RuntimeError("long task started on node %s, not on the victim %s" % (first["node"], victim_id))

    # Every process of the victim node: those in the session of its `ray start` (raylet,
    # log monitor, agents...) plus the raylet's descendants (workers, incl. the task's).
    table = pc.proc_table()
    raylets = [pid for pid, (_, _, cmd) in table.items()
               if "raylet" in cmd.split(" ")[0] and "--node_manager_port=%d" % victim_nm_port in cmd]
    pids = pc.pids_in_session(victim_sid, table) | pc.descendants(raylets + [first["ppid"]], table)
    head_pids = pc.pids_in_session(head_sid, table)
    if first["pid"] not in pids:
        raise RuntimeError("could not find the task's worker process among the victim node's processes")
    pids -= head_pids | {os.getpid()}
    pc.log("kill -9 of %d victim processes: %s" % (len(pids), sorted(pids)))
    for p in sorted(pids):
        pc.log("  %d %s" % (p, table[p][2][:120]))
    t_kill = time.time()
    m_kill = time.monotonic()
    pc.kill_pids(pids)

    detect_ms = rerun_ms = None
    rerun = None
    end = m_kill + FAILOVER_TIMEOUT
    while (detect_ms is None or rerun_ms is None) and time.monotonic() < end:
        if detect_ms is None:
            for nd in ray.nodes():
                if nd["NodeID"] == victim_id and not nd.get("Alive"):
                    detect_ms = (time.monotonic() - m_kill) * 1000.0
                    pc.log("victim node not Alive after %.0f ms" % detect_ms)
        if rerun_ms is None:
            ms = [m for m in read_markers(marker_dir) if m["pid"] != first["pid"]]
            if ms:
                rerun = ms[0]
                rerun_ms = (rerun["t"] - t_kill) * 1000.0
                pc.log("task re-ran on node %s after %.0f ms" % (rerun["node"], rerun_ms))
        time.sleep(POLL)
    gone = pc.wait_pids_gone(pids, 1)
    res = {"detect_ms": round(detect_ms, 1) if detect_ms is not None else None,
           "rerun_ms": round(rerun_ms, 1) if rerun_ms is not None else None,
           "detect_via": "ray.nodes() shows the victim node Alive=False (polled every %d ms)" % (POLL * 1000),
           "rerun_via": "timestamp written by the retried task when it starts (Ray default max_retries, "
                        "soft NodeAffinity to the victim)",
           "rerun_node_is_survivor": (rerun["node"] != victim_id) if rerun else None,
           "killed_processes": len(pids), "survived_kill": sorted(gone),
           "defaults": ray_health_defaults(),
           "cluster": "ray start --head --num-cpus=1 + ray start --address --num-cpus=1 --resources victim"}
    if detect_ms is None or rerun_ms is None:
        missing = [w for w, v in (("the node to be marked dead", detect_ms), ("the task to re-run", rerun_ms))
                   if v is None]
        res["error"] = "timed out after %ds waiting for %s" % (FAILOVER_TIMEOUT, " and ".join(missing))
    return res


def body(result, cleanup, args):
    pc.run_shapes(result, args, 'local Ray', local_cluster,
                  shape_throughput, shape_latency, shape_failover)


def main():
    args = pc.parse_args("ray")
    return pc.main_wrapper("ray", install, lambda r, c: body(r, c, args), args)


if __name__ == "__main__":
    sys.exit(main())
