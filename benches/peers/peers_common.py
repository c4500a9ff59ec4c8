"""Shared plumbing for the peer benchmark scripts (ray_bench, dask_bench, erlang_bench).

Contract of every script:
  * exactly one JSON object on the last line of the *real* stdout;
  * everything else (our logs, the peer's logs, child processes' output) goes to stderr;
  * every process / temp dir it started is cleaned up, also on failure, SIGTERM and Ctrl-C;
  * every wait is bounded by a timeout whose error says what it waited for.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import shutil

DEFAULT_TASKS = 20000
DEFAULT_SAMPLES = 1000
QUICK_TASKS = 2000
QUICK_SAMPLES = 100
SHAPES = ("throughput", "latency", "failover")

# --- stdout discipline -------------------------------------------------------------------
# Keep a private handle on the real stdout, then point fd 1 at stderr so that anything a
# library or a child process prints cannot land after (or in the middle of) our JSON line.
_REAL_STDOUT = None


def hijack_stdout():
    global _REAL_STDOUT
    if _REAL_STDOUT is None:
        sys.stdout.flush()
        _REAL_STDOUT = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        sys.stdout = sys.stderr


def emit_json(obj):
    out = _REAL_STDOUT if _REAL_STDOUT is not None else sys.stdout
    sys.stderr.flush()
    out.write(json.dumps(obj, sort_keys=False) + "\n")
    out.flush()


def log(*args):
    print("[%s]" % time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


# --- CLI ---------------------------------------------------------------------------------
def parse_args(peer, argv=None, extra=None):
    p = argparse.ArgumentParser(description="%s peer benchmark (see benches/peers/README.md)" % peer)
    p.add_argument("--shape", default="all",
                   help="throughput|latency|failover|all, or a comma list such as throughput,latency")
    p.add_argument("--tasks", type=int, default=None, help="throughput: number of no-op tasks")
    p.add_argument("--samples", type=int, default=None, help="latency: number of sequential round trips")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--failover-task-s", type=float, default=60.0,
                   help="failover: length of the long task that gets killed (s)")
    if extra:
        extra(p)
    a = p.parse_args(argv)
    if a.tasks is None:
        a.tasks = QUICK_TASKS if a.quick else DEFAULT_TASKS
    if a.samples is None:
        a.samples = QUICK_SAMPLES if a.quick else DEFAULT_SAMPLES
    if a.tasks < 1 or a.samples < 1:
        p.error("--tasks and --samples must be >= 1")
    wanted = [x.strip() for x in a.shape.split(",") if x.strip()]
    bad = [x for x in wanted if x not in SHAPES + ("all",)]
    if bad or not wanted:
        p.error("--shape: unknown shape(s) %s; use throughput, latency, failover or all" % ", ".join(bad))
    a.shapes = list(SHAPES) if "all" in wanted else [x for x in SHAPES if x in wanted]
    return a


# --- signals / cleanup -------------------------------------------------------------------
class Interrupted(BaseException):
    pass


def install_signal_handlers():
    def on_term(signum, frame):
        raise Interrupted("signal %d" % signum)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    signal.signal(signal.SIGINT, on_term)


class Cleanup:
    """LIFO stack of cleanup callbacks; each runs once, errors are logged and swallowed."""

    def __init__(self):
        self._stack = []

    def push(self, fn, *args, what=None):
        self._stack.append((fn, args, what or getattr(fn, "__name__", "cleanup")))

    def run(self):
        # Ignore further Ctrl-C while cleaning up, so cleanup itself is not interrupted.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            while self._stack:
                fn, args, what = self._stack.pop()
                try:
                    fn(*args)
                except Exception as e:  # noqa: BLE001
                    log("cleanup step %r failed: %s" % (what, e))
        finally:
            signal.signal(signal.SIGINT, old)


def make_tempdir(prefix, cleanup):
    # Short path under /tmp: Ray and Erlang put unix sockets in here (108-byte limit).
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    cleanup.push(shutil.rmtree, d, True, what="rm -rf %s" % d)
    return d


# --- processes ---------------------------------------------------------------------------
def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def proc_table():
    """{pid: (ppid, sid, cmdline)} for every process we can see."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                stat = f.read().decode("utf-8", "replace")
            rest = stat[stat.rindex(")") + 2:].split()
            ppid, sid = int(rest[1]), int(rest[3])
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
            if rest[0] == "Z":
                continue
            out[pid] = (ppid, sid, cmd)
        except (OSError, ValueError, IndexError):
            continue
    return out


def descendants(roots, table=None):
    table = table or proc_table()
    children = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen, stack = set(), list(roots)
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        stack.extend(children.get(p, []))
    return seen


def pids_in_session(sid, table=None):
    table = table or proc_table()
    return {pid for pid, (_, s, _) in table.items() if s == sid}


def kill_pids(pids, sig=signal.SIGKILL):
    killed = []
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, sig)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def wait_pids_gone(pids, timeout):
    end = time.monotonic() + timeout
    pids = set(pids)
    while pids and time.monotonic() < end:
        pids = {p for p in pids if os.path.exists("/proc/%d" % p) and _not_zombie(p)}
        if pids:
            time.sleep(0.02)
    return pids


def _not_zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
        return s[s.rindex(")") + 2] != "Z"
    except OSError:
        return False


def spawn(cmd, cleanup, env=None, what=None, cwd=None, stdin=None, stdout=None, stderr=None):
    """Start a process in its own session (so we can kill its whole tree) and register
    a kill of that session + the process's descendants in `cleanup`."""
    log("spawn:", " ".join(cmd))
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                         stdout=stdout if stdout is not None else sys.stderr,
                         stderr=stderr if stderr is not None else sys.stderr,
                         start_new_session=True)

    def _kill():
        table = proc_table()
        pids = pids_in_session(p.pid, table) | descendants([p.pid], table)
        kill_pids(pids)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log("process %d did not exit after SIGKILL" % p.pid)
        wait_pids_gone(pids, 5)

    cleanup.push(_kill, what=what or "kill %s" % cmd[0])
    return p


def run(cmd, timeout, what, env=None, check=True):
    """Run a command to completion, output to stderr, bounded by timeout."""
    log("run:", " ".join(cmd))
    try:
        r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr,
                           timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise TimeoutError("timed out after %ds waiting for %s" % (timeout, what))
    if check and r.returncode != 0:
        raise RuntimeError("%s failed with exit code %d" % (what, r.returncode))
    return r.returncode


def wait_until(pred, timeout, what, interval=0.01):
    """Poll pred() until it returns a truthy value; raise TimeoutError naming `what`."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= end:
            raise TimeoutError("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(interval)


# --- stats -------------------------------------------------------------------------------
def percentile(sorted_vals, q):
    """Nearest-rank percentile (q in 0..100) of an already sorted list."""
    if not sorted_vals:
        return None
    import math
    k = max(1, int(math.ceil(q / 100.0 * len(sorted_vals))))
    return sorted_vals[min(k, len(sorted_vals)) - 1]


def latency_summary(samples_s):
    v = sorted(samples_s)
    ms = lambda x: round(x * 1000.0, 4)  # noqa: E731
    return {"samples": len(v), "p50_ms": ms(percentile(v, 50)), "p99_ms": ms(percentile(v, 99)),
            "min_ms": ms(v[0]), "max_ms": ms(v[-1]), "mean_ms": ms(sum(v) / len(v))}


def throughput_summary(n, seconds, **extra):
    d = {"tasks": n, "seconds": round(seconds, 6), "tasks_per_s": round(n / seconds, 1) if seconds > 0 else None}
    d.update(extra)
    return d


def one_line(e):
    s = "%s: %s" % (type(e).__name__, e) if not isinstance(e, (TimeoutError, RuntimeError)) or not str(e) else str(e)
    return " ".join(s.split())[:500]


def pip_install(spec, import_check, timeout=900):
    """Install `spec` with pip if `import_check()` raises ImportError. Returns (installed, seconds)."""
    try:
        import_check()
        return False, 0.0
    except ImportError:
        pass
    log("installing %s with pip ..." % spec)
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", spec]
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError("pip install %s timed out after %ds" % (spec, timeout))
    if r.returncode != 0:
        raise RuntimeError("pip install %s failed with exit code %d" % (spec, r.returncode))
    import importlib
    importlib.invalidate_caches()
    import_check()
    return True, round(time.monotonic() - t0, 1)


def main_wrapper(peer, install, body, args):
    """Common driver: install (exit 3 on failure), run shapes, always print the JSON.

    install() -> dict merged into the result (e.g. version, install info); raises to signal
    the peer cannot be installed. body(result, cleanup) fills result[shape] for each shape.
    """
    hijack_stdout()
    install_signal_handlers()
    result = {"peer": peer, "version": None, "cores": os.cpu_count(), "params": {
        "shapes": args.shapes, "tasks": args.tasks, "samples": args.samples, "quick": args.quick}}
    t_start = time.monotonic()
    try:
        result.update(install())
    except Interrupted as e:
        result["error"] = "interrupted during install (%s)" % e
        emit_json(result)
        return 130
    except Exception as e:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        result["error"] = "could not install %s: %s" % (peer, one_line(e))
        emit_json(result)
        return 3
    rc = 0
    cleanup = Cleanup()
    try:
        body(result, cleanup)
    except Interrupted as e:
        result["error"] = "interrupted (%s)" % e
        rc = 130
    except Exception as e:  # noqa: BLE001 - a broken harness still prints its JSON
        traceback.print_exc(file=sys.stderr)
        result["error"] = one_line(e)
    finally:
        try:
            cleanup.run()
        except Interrupted:
            pass
        for s in args.shapes:
            result.setdefault(s, {"error": "not run (an earlier step failed)"})
        result["wall_s"] = round(time.monotonic() - t_start, 1)
        emit_json(result)
    return rc


def run_shape(result, name, fn, *a, **kw):
    """Run one shape; a failure becomes {"error": "..."} in its place."""
    log("=== shape %s ===" % name)
    t0 = time.monotonic()
    try:
        result[name] = fn(*a, **kw)
    except Interrupted:
        result[name] = {"error": "interrupted"}
        raise
    except Exception as e:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        result[name] = {"error": one_line(e)}
    log("shape %s took %.1fs: %s" % (name, time.monotonic() - t0, json.dumps(result[name])))


def run_shapes(result, args, label, start, throughput, latency, failover):
    """Throughput and latency on one local cluster made by `start(cleanup)`
    (its return value, unless None, is passed to both shapes), then failover,
    which builds its own cluster; each cleaned up before the next."""
    if "throughput" in args.shapes or "latency" in args.shapes:
        sub = Cleanup()
        try:
            try:
                handle = start(sub)
            except Interrupted:
                raise
            except Exception as e:  # noqa: BLE001
                for s in ("throughput", "latency"):
                    if s in args.shapes:
                        result[s] = {"error": "%s did not start: %s" % (label, one_line(e))}
            else:
                first = () if handle is None else (handle,)
                if "throughput" in args.shapes:
                    run_shape(result, "throughput", throughput, *first, args.tasks)
                if "latency" in args.shapes:
                    run_shape(result, "latency", latency, *first, args.samples)
        finally:
            sub.run()
    if "failover" in args.shapes:
        sub = Cleanup()
        try:
            run_shape(result, "failover", failover, sub, args.failover_task_s)
        finally:
            sub.run()
