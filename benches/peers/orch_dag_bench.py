#!/usr/bin/env python3
"""orch side of the pipeline (DAG) peer benchmark: a linear chain of no-op stages.

What it measures: one orch node (master + worker, the repo's cluster.toml with its
data_dir and its three ports moved to a temp dir / free ports on 127.0.0.1) runs a
pipeline of N stages (default 10), each `command = ["true"]`, stage i depending on
stage i-1. Per run, trigger-to-done seconds:

  * `http`: POST /v1/pipelines/NAME/runs, then GET /v1/runs/RUN every --poll-ms (10 ms)
    until its state is no longer `in_progress` (wall clock of this script);
  * `orch_own`: the run's own `finished_ms - started_ms` (the master's clock);
  * `orchctl_wait`: the wall time of `orchctl --node ... pipeline run NAME --wait` (a
    process start, the POST, and orchctl's own poll of GET /v1/runs every 250 ms, so it
    is quantised to 250 ms).

Used two ways:
  * imported by airflow_bench.py (`bench(cleanup, ...)`), which puts the figures next to
    Airflow's;
  * on its own: `python3 benches/peers/orch_dag_bench.py [--runs 5] [--warmup 1]
    [--stages 10] [--poll-ms 10] [--bin-dir target/release]`, which prints exactly one
    JSON object on the last line of stdout (everything else on stderr).

Needs the release binaries `target/release/orch-node` and `target/release/orchctl`
(it never builds them). The node's log goes to a file in the temp dir; its last lines
are copied to stderr when something fails. Every process and the temp dir are removed
at the end, also on failure and Ctrl-C (peers_common.Cleanup).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers_common as pc  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEFAULT_BIN_DIR = os.path.join(REPO, "target", "release")
PIPELINE_NAME = "peer-chain"
START_TIMEOUT = 60      # node up, its worker healthy
RUN_TIMEOUT = 120       # one run of the chain to its end
HTTP_TIMEOUT = 30       # one admin API request


# --- small helpers shared with airflow_bench.py ------------------------------------------------
def summary(vals, digits=4):
    """median / min / max / mean of a list of seconds."""
    if not vals:
        return None
    r = lambda x: round(x, digits)  # noqa: E731
    return {"n": len(vals), "median_s": r(statistics.median(vals)), "min_s": r(min(vals)),
            "max_s": r(max(vals)), "mean_s": r(sum(vals) / len(vals))}


def tail(path, n=40):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()
        return lines[-n:]
    except OSError:
        return []


def dump_tail(path, label, n=40):
    lines = tail(path, n)
    if lines:
        pc.log("--- last %d lines of %s (%s) ---" % (len(lines), label, path))
        for ln in lines:
            print("    " + ln, file=sys.stderr)
        sys.stderr.flush()


def listening_sockets(pids):
    """['host:port', ...] of the TCP sockets in LISTEN state that `pids` hold open."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir("/proc/%d/fd" % pid):
                try:
                    t = os.readlink("/proc/%d/fd/%s" % (pid, fd))
                except OSError:
                    continue
                if t.startswith("socket:["):
                    inodes.add(t[8:-1])
        except OSError:
            continue
    out = set()
    for name, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            with open(name) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            c = row.split()
            if len(c) < 10 or c[3] != "0A" or c[9] not in inodes:  # 0A = LISTEN
                continue
            hexaddr, hexport = c[1].split(":")
            port = int(hexport, 16)
            if not v6:
                b = bytes.fromhex(hexaddr)[::-1]
                host = ".".join(str(x) for x in b)
            else:
                words = [bytes.fromhex(hexaddr[i:i + 8])[::-1].hex() for i in range(0, 32, 8)]
                h = "".join(words)
                if h == "0" * 32:
                    host = "[::]"
                elif h == "0" * 31 + "1":
                    host = "[::1]"
                elif h.startswith("0" * 20 + "ffff"):
                    host = ".".join(str(x) for x in bytes.fromhex(h[24:]))
                else:
                    host = "[%s]" % h
            out.add("%s:%d" % (host, port))
    return sorted(out)


def non_loopback(listeners):
    return [x for x in listeners if not (x.startswith("127.") or x.startswith("[::1]"))]


def http_json(method, url, body=None, headers=None, timeout=HTTP_TIMEOUT):
    """(status, parsed JSON or text). Never raises for an HTTP status; raises OSError when
    the server cannot be reached."""
    data = None
    h = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw.decode("utf-8", "replace")) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


# --- orch ------------------------------------------------------------------------------------
def pipeline_toml(name, stages):
    lines = ["# %d no-op stages in a chain: the orch side of benches/peers/airflow_bench.py" % stages,
             'name = "%s"' % name, ""]
    for i in range(stages):
        lines += ["[[stage]]", 'name = "s%02d"' % i, 'command = ["true"]']
        if i:
            lines.append('depends_on = ["s%02d"]' % (i - 1))
        lines.append("")
    return "\n".join(lines)


def cluster_toml(src, data_dir, listen, admin, metrics):
    """The repo's cluster.toml with data_dir and the three ports replaced (each must be
    found exactly once, so a changed file fails loudly instead of colliding)."""
    with open(src) as f:
        text = f.read()
    subs = [(r'(?m)^(\s*data_dir\s*=\s*)"[^"]*"', r'\g<1>"%s"' % data_dir, "data_dir"),
            (r'(?m)^(\s*listen\s*=\s*)"127\.0\.0\.1:7700"', r'\g<1>"127.0.0.1:%d"' % listen, "listen 7700"),
            (r'(?m)^(\s*listen\s*=\s*)"127\.0\.0\.1:7701"', r'\g<1>"127.0.0.1:%d"' % admin, "admin listen 7701"),
            (r'(?m)^(\s*listen\s*=\s*)"127\.0\.0\.1:9100"', r'\g<1>"127.0.0.1:%d"' % metrics, "metrics listen 9100")]
    for pat, rep, what in subs:
        text, n = re.subn(pat, rep, text)
        if n != 1:
            raise RuntimeError("%s: expected one `%s` line to rewrite, found %d" % (src, what, n))
    return text


class OrchNode:
    """One orch-node (master + worker) on free 127.0.0.1 ports, in its own temp dir."""

    def __init__(self, cleanup, bin_dir=DEFAULT_BIN_DIR):
        self.node_bin = os.path.join(bin_dir, "orch-node")
        self.ctl_bin = os.path.join(bin_dir, "orchctl")
        for b in (self.node_bin, self.ctl_bin):
            if not os.access(b, os.X_OK):
                raise RuntimeError("missing release binary %s (build it with cargo build --release; "
                                   "this script never builds)" % b)
        self.tmp = pc.make_tempdir("ob", cleanup)
        ports = set()
        while len(ports) < 3:
            ports.add(pc.free_port())
        self.listen, self.admin, self.metrics = sorted(ports)
        self.admin_addr = "127.0.0.1:%d" % self.admin
        self.base = "http://" + self.admin_addr
        self.cluster = os.path.join(self.tmp, "cluster.toml")
        with open(self.cluster, "w") as f:
            f.write(cluster_toml(os.path.join(REPO, "cluster.toml"), os.path.join(self.tmp, "orch-data"),
                                 self.listen, self.admin, self.metrics))
        self.log_path = os.path.join(self.tmp, "orch-node.log")
        self.logf = open(self.log_path, "ab")
        cleanup.push(self.logf.close, what="close orch-node log")
        t0 = time.monotonic()
        self.proc = pc.spawn([self.node_bin, "--cluster", self.cluster], cleanup, cwd=self.tmp,
                             stdout=self.logf, stderr=subprocess.STDOUT, what="kill orch-node")
        try:
            pc.wait_until(self._healthy, START_TIMEOUT,
                          "orch-node's admin API at %s to show worker `local` healthy" % self.admin_addr,
                          interval=0.05)
        except BaseException:
            dump_tail(self.log_path, "orch-node log")
            raise
        self.start_s = round(time.monotonic() - t0, 3)
        self.version = subprocess.run([self.node_bin, "--version"], capture_output=True, text=True,
                                      timeout=10).stdout.strip()
        pc.log("orch-node %s up in %.2fs, admin %s" % (self.version, self.start_s, self.admin_addr))

    def _healthy(self):
        if self.proc.poll() is not None:
            raise RuntimeError("orch-node exited with code %s during start-up" % self.proc.returncode)
        try:
            st, ws = http_json("GET", self.base + "/v1/workers", timeout=2)
        except OSError:
            return False
        return st == 200 and isinstance(ws, list) and any(
            w.get("node") == "local" and w.get("state") == "healthy" for w in ws)

    def ctl(self, *a, timeout=HTTP_TIMEOUT, what=None):
        cmd = [self.ctl_bin, "--node", self.admin_addr] + list(a)
        try:
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError("timed out after %ds waiting for %s" % (timeout, what or " ".join(cmd)))
        if r.returncode != 0:
            raise RuntimeError("%s exited %d: %s" % (" ".join(cmd), r.returncode,
                                                   " ".join((r.stderr or r.stdout).split())[:300]))
        return r.stdout

    def add_pipeline(self, stages, name=PIPELINE_NAME):
        path = os.path.join(self.tmp, "%s.toml" % name)
        with open(path, "w") as f:
            f.write(pipeline_toml(name, stages))
        pc.log("run: orchctl --node %s pipeline add %s" % (self.admin_addr, path))
        out = self.ctl("pipeline", "add", path, what="orchctl pipeline add")
        pc.log(out.strip())
        return path

    def run_http(self, name, poll_s, stages):
        """POST a run, poll GET /v1/runs/RUN; returns the sample dict."""
        t0 = time.perf_counter()
        st, v = http_json("POST", "%s/v1/pipelines/%s/runs" % (self.base, name), body={})
        t_post = time.perf_counter()
        if st != 200 or not isinstance(v, dict) or not v.get("run"):
            raise RuntimeError("POST /v1/pipelines/%s/runs answered %s: %s" % (name, st, str(v)[:300]))
        run = v["run"]
        end = time.monotonic() + RUN_TIMEOUT
        while True:
            st, r = http_json("GET", "%s/v1/runs/%s" % (self.base, run))
            if st == 200 and isinstance(r, dict) and r.get("state") not in (None, "in_progress"):
                break
            if time.monotonic() > end:
                raise TimeoutError("timed out after %ds waiting for orch run %s to end (last state %s)"
                                   % (RUN_TIMEOUT, run, r.get("state") if isinstance(r, dict) else st))
            time.sleep(poll_s)
        dt = time.perf_counter() - t0
        if r["state"] != "completed":
            raise RuntimeError("orch run %s ended %s: %s" % (run, r["state"], json.dumps(r.get("stages"))[:400]))
        stg = r.get("stages") or []
        if len(stg) != stages or any(s.get("state") != "completed" for s in stg):
            raise RuntimeError("orch run %s: expected %d completed stages, got %s"
                               % (run, stages, [(s.get("name"), s.get("state")) for s in stg]))
        gaps = [(b["started_ms"] - a["finished_ms"]) / 1000.0 for a, b in zip(stg, stg[1:])
                if a.get("finished_ms") is not None and b.get("started_ms") is not None]
        own = ((r["finished_ms"] - r["started_ms"]) / 1000.0) if r.get("finished_ms") else None
        return {"run": run, "trigger_to_done_s": dt, "post_s": t_post - t0, "own_s": own,
                "stage_gap_median_s": statistics.median(gaps) if gaps else None}

    def run_orchctl(self, name):
        t0 = time.perf_counter()
        self.ctl("pipeline", "run", name, "--wait", timeout=RUN_TIMEOUT,
                 what="orchctl pipeline run %s --wait" % name)
        return time.perf_counter() - t0


def bench(cleanup, runs=5, warmup=1, stages=10, poll_ms=10.0, bin_dir=DEFAULT_BIN_DIR, orchctl_runs=None):
    """Start a node, add the chain, do `warmup` + `runs` HTTP runs and `orchctl_runs`
    (default: runs) orchctl --wait runs. Returns the `orch` dict of the JSON."""
    node = OrchNode(cleanup, bin_dir)
    try:
        node.add_pipeline(stages)
        poll_s = poll_ms / 1000.0
        warm = []
        for i in range(warmup):
            s = node.run_http(PIPELINE_NAME, poll_s, stages)
            pc.log("orch warm-up run %s: %.3fs" % (s["run"], s["trigger_to_done_s"]))
            warm.append(round(s["trigger_to_done_s"], 4))
        samples = []
        for i in range(runs):
            s = node.run_http(PIPELINE_NAME, poll_s, stages)
            pc.log("orch run %s: trigger-to-done %.3fs (own %.3fs, median stage gap %s s)"
                   % (s["run"], s["trigger_to_done_s"], s["own_s"] or -1, s["stage_gap_median_s"]))
            samples.append(s)
        ctl = []
        for i in range(runs if orchctl_runs is None else orchctl_runs):
            dt = node.run_orchctl(PIPELINE_NAME)
            pc.log("orch orchctl --wait run: %.3fs" % dt)
            ctl.append(dt)
        listeners = listening_sockets(pc.pids_in_session(node.proc.pid) | pc.descendants([node.proc.pid]))
    except BaseException:
        dump_tail(node.log_path, "orch-node log")
        raise
    tt = [s["trigger_to_done_s"] for s in samples]
    med = statistics.median(tt)
    own = [s["own_s"] for s in samples if s["own_s"] is not None]
    gaps = [s["stage_gap_median_s"] for s in samples if s["stage_gap_median_s"] is not None]
    return {
        "version": node.version,
        "stages": stages,
        "runs": runs,
        "trigger_to_done": summary(tt),
        "median_s": round(med, 4),
        "per_task_s": round(med / stages, 5),
        "samples_s": [round(x, 4) for x in tt],
        "warmup_s": warm,
        "own": summary(own),
        "stage_gap_median_s": round(statistics.median(gaps), 4) if gaps else None,
        "orchctl_wait": summary(ctl),
        "node_start_s": node.start_s,
        "listeners": listeners,
        "method": ("POST /v1/pipelines/%s/runs, then GET /v1/runs/RUN every %g ms until state != in_progress "
                   "(wall clock); `own` = the run's finished_ms - started_ms; `orchctl_wait` = "
                   "`orchctl pipeline run NAME --wait` (polls every 250 ms)" % (PIPELINE_NAME, poll_ms)),
        "setup": ("one orch-node (master + worker, 4 cpu devices, max_concurrency 4, store durability "
                  "`process`) from the repo's cluster.toml with data_dir and ports moved; %d command "
                  "stages [\"true\"], each depending on the one before" % stages),
    }


def main():
    p = argparse.ArgumentParser(description="orch pipeline chain benchmark (see benches/peers/README.md)")
    p.add_argument("--runs", type=int, default=5, help="timed runs (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--stages", type=int, default=10, help="stages in the chain (default 10)")
    p.add_argument("--poll-ms", type=float, default=10.0, help="GET /v1/runs/RUN interval (default 10)")
    p.add_argument("--bin-dir", default=DEFAULT_BIN_DIR, help="where orch-node and orchctl are")
    a = p.parse_args()
    if a.runs < 1 or a.stages < 1 or a.warmup < 0 or a.poll_ms <= 0:
        p.error("--runs and --stages must be >= 1, --warmup >= 0, --poll-ms > 0")
    pc.hijack_stdout()
    pc.install_signal_handlers()
    result = {"peer": "orch", "version": None, "cores": os.cpu_count(),
              "params": {"runs": a.runs, "warmup": a.warmup, "stages": a.stages, "poll_ms": a.poll_ms}}
    t0 = time.monotonic()
    cleanup = pc.Cleanup()
    rc = 0
    try:
        result["orch"] = bench(cleanup, a.runs, a.warmup, a.stages, a.poll_ms, a.bin_dir)
        result["version"] = result["orch"]["version"]
    except pc.Interrupted as e:
        result["error"] = "interrupted (%s)" % e
        rc = 130
    except Exception as e:  # noqa: BLE001
        import traceback
        traceback.print_exc(file=sys.stderr)
        result["error"] = pc.one_line(e)
        rc = 1
    finally:
        try:
            cleanup.run()
        except pc.Interrupted:
            pass
        result["wall_s"] = round(time.monotonic() - t0, 1)
        pc.emit_json(result)
    return rc


if __name__ == "__main__":
    sys.exit(main())
