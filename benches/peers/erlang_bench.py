#!/usr/bin/env python3
"""Erlang/OTP peer benchmark: throughput, latency and failover shapes on 127.0.0.1.

Drives the Erlang module erlang/orch_peer.erl (compiled with erlc into a temp dir) on two
distributed nodes, A (driver) and B (remote side / victim), both `-name ...@127.0.0.1`, with a
private epmd on a free loopback port and a per-run cookie.
Prints exactly one JSON object on the last line of stdout; everything else goes to stderr.
See benches/peers/README.md.
"""
import glob
import os
import queue
import secrets
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import peers_common as pc  # noqa: E402

ERL_SRC = os.path.join(HERE, "erlang", "orch_peer.erl")
APT_PKG = "erlang-nox"

NODE_START_TIMEOUT = 30   # B registered with epmd / A connected to B
THROUGHPUT_TIMEOUT = 300  # whole shape
LATENCY_TIMEOUT = 120     # whole shape
REPLY_TIMEOUT_MS = 30000  # one reply inside Erlang
FAILOVER_TIMEOUT_MS = 120000  # > net_ticktime (60 s) * 1.25, in case the socket close is missed


def _erl_tools():
    return shutil.which("erl"), shutil.which("erlc")


def install():
    info = {"install": {"package": APT_PKG, "installed_now": False, "seconds": 0.0}}
    erl, erlc = _erl_tools()
    if not (erl and erlc):
        if os.geteuid() != 0:
            raise RuntimeError("erl/erlc missing and not root, cannot apt-get install %s" % APT_PKG)
        t0 = time.monotonic()
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", APT_PKG]
        try:
            pc.run(cmd, 900, "apt-get install %s" % APT_PKG, env=env)
        except RuntimeError:
            pc.log("apt-get install failed; running apt-get update once and retrying")
            pc.run(["apt-get", "update"], 300, "apt-get update", env=env)
            pc.run(cmd, 900, "apt-get install %s" % APT_PKG, env=env)
        info["install"].update(installed_now=True, seconds=round(time.monotonic() - t0, 1))
        erl, erlc = _erl_tools()
        if not (erl and erlc):
            raise RuntimeError("%s installed but erl/erlc still not on PATH" % APT_PKG)
    try:
        out = subprocess.run(
            [erl, "-noshell", "-eval",
             'R = erlang:system_info(otp_release), '
             'F = filename:join([code:root_dir(), "releases", R, "OTP_VERSION"]), '
             'V = case file:read_file(F) of {ok, B} -> string:trim(binary_to_list(B)); _ -> R end, '
             'io:format("~s ~s~n", [V, erlang:system_info(version)]), halt().'],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60).stdout.split()
        info["version"], info["erts"] = out[0], out[1]
    except Exception as e:  # noqa: BLE001
        raise RuntimeError("erl does not run: %s" % pc.one_line(e))
    return info


def find_epmd():
    p = shutil.which("epmd")
    if p:
        return p
    c = sorted(glob.glob("/usr/lib/erlang/erts-*/bin/epmd"))
    if c:
        return c[-1]
    raise RuntimeError("epmd not found")


class ErlEnv:
    """Compiled module, private epmd on 127.0.0.1, cookie, env for erl processes."""

    def __init__(self, cleanup):
        self.cleanup = cleanup
        self.tmp = pc.make_tempdir("eb", cleanup)
        self.ebin = os.path.join(self.tmp, "ebin")
        os.mkdir(self.ebin)
        pc.run(["erlc", "-o", self.ebin, ERL_SRC], 120, "erlc %s" % ERL_SRC)
        self.epmd_port = pc.free_port()
        self.cookie = "orchpeer" + secrets.token_hex(8)
        # HOME in the temp dir: no ~/.erlang.cookie or other files left behind.
        self.env = dict(os.environ, ERL_EPMD_PORT=str(self.epmd_port), ERL_EPMD_ADDRESS="127.0.0.1",
                        HOME=self.tmp)
        pc.spawn([find_epmd(), "-port", str(self.epmd_port), "-address", "127.0.0.1"], cleanup,
                 env=self.env, what="kill epmd", cwd=self.tmp)
        import socket

        def epmd_up():
            try:
                socket.create_connection(("127.0.0.1", self.epmd_port), timeout=0.5).close()
                return True
            except OSError:
                return False
        pc.wait_until(epmd_up, NODE_START_TIMEOUT, "epmd to listen on 127.0.0.1:%d" % self.epmd_port, 0.05)
        self.seq = 0

    def erl_cmd(self, name, extra=()):
        return ["erl", "-noshell", "-name", "%s@127.0.0.1" % name, "-setcookie", self.cookie,
                "-pa", self.ebin, "-start_epmd", "false",  # our own epmd is already running
                "-kernel", "inet_dist_use_interface", "{127,0,0,1}"] + list(extra)

    def start_b(self, cleanup):
        self.seq += 1
        name = "orchpeer_b%d_%d" % (self.seq, os.getpid())
        p = pc.spawn(self.erl_cmd(name), cleanup, env=self.env, what="kill erlang node B", cwd=self.tmp)
        return name + "@127.0.0.1", p

    def start_a(self, cleanup, args):
        self.seq += 1
        name = "orchpeer_a%d_%d" % (self.seq, os.getpid())
        p = pc.spawn(self.erl_cmd(name, ["-s", "orch_peer", "main", "-extra"] + [str(a) for a in args]),
                     cleanup, env=self.env, what="kill erlang node A", cwd=self.tmp, stdout=subprocess.PIPE)
        return LineReader(p)


class LineReader:
    """Lines of node A's stdout through a thread, so every read can time out."""

    def __init__(self, proc):
        self.proc = proc
        self.q = queue.Queue()
        self.info = {}
        t = threading.Thread(target=self._pump, daemon=True)
        t.start()

    def _pump(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            print("[erl A] " + (line if len(line) < 300 else line[:300] + "..."), file=sys.stderr, flush=True)
            self.q.put(line)
        self.q.put(None)

    def expect(self, keys, deadline, what):
        """Next line whose first word is in keys -> (key, {k: v}); ERROR / EOF / timeout raise."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out waiting for %s" % what)
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                raise TimeoutError("timed out waiting for %s" % what)
            if line is None:
                raise RuntimeError("erlang node A exited (code %s) while waiting for %s"
                                   % (self.proc.poll(), what))
            word, _, rest = line.partition(" ")
            if word == "ERROR":
                raise RuntimeError("erlang: " + rest[:400])
            kv = dict(p.split("=", 1) for p in rest.split() if "=" in p)
            if word == "INFO":
                self.info = kv
            if word in keys:
                return word, kv


def shape_throughput(ee, n):
    sub = pc.Cleanup()
    try:
        peer, _ = ee.start_b(sub)
        a = ee.start_a(sub, ["throughput", peer, n, REPLY_TIMEOUT_MS])
        deadline = time.monotonic() + THROUGHPUT_TIMEOUT
        res = {}
        for _ in range(2):
            _, kv = a.expect({"THROUGHPUT"}, deadline, "throughput results from erlang node A")
            res[kv["where"]] = pc.throughput_summary(int(kv["tasks"]), int(kv["us"]) / 1e6)
        a.expect({"DONE"}, deadline, "erlang node A to finish")
        out = dict(res["local"])
        out["method"] = ("spawn N processes on the local node, each sends one reply; collect all "
                         "(one VM, no OS-process or network hop)")
        out["remote"] = dict(res["remote"], method="spawn(NodeB, M, F, A) N times over Erlang distribution "
                                                   "on 127.0.0.1; each process replies; collect all")
        return out
    finally:
        sub.run()


def shape_latency(ee, k):
    sub = pc.Cleanup()
    try:
        peer, _ = ee.start_b(sub)
        a = ee.start_a(sub, ["latency", peer, k, REPLY_TIMEOUT_MS])
        deadline = time.monotonic() + LATENCY_TIMEOUT
        res = {}
        for _ in range(2):
            _, kv = a.expect({"LATENCY"}, deadline, "latency results from erlang node A")
            res[kv["where"]] = pc.latency_summary([int(x) / 1e9 for x in kv["ns"].split(",")])
        a.expect({"DONE"}, deadline, "erlang node A to finish")
        out = dict(res["local"])
        out["method"] = "spawn one no-op process on the local node and wait for its reply, sequentially"
        out["remote"] = dict(res["remote"], method="spawn one no-op process on node B over distribution "
                                                   "and wait for its reply, sequentially")
        return out
    finally:
        sub.run()


def shape_failover(ee, task_s):
    sub = pc.Cleanup()
    try:
        peer, bproc = ee.start_b(sub)
        a = ee.start_a(sub, ["failover", peer, int(task_s * 1000), FAILOVER_TIMEOUT_MS])
        deadline = time.monotonic() + NODE_START_TIMEOUT + FAILOVER_TIMEOUT_MS / 1000 + 10
        _, st = a.expect({"STARTED"}, time.monotonic() + NODE_START_TIMEOUT + 10,
                         "the long task to start on node B")
        table = pc.proc_table()
        pids = pc.pids_in_session(bproc.pid, table) | pc.descendants([bproc.pid], table)
        if int(st["ospid"]) not in pids:
            raise RuntimeError("node B's OS pid %s is not among the processes we started for it" % st["ospid"])
        pc.log("kill -9 of node B processes: %s" % ", ".join("%d %s" % (p, table[p][2][:40]) for p in sorted(pids)))
        t_kill = time.time()
        pc.kill_pids(pids)
        ev = {}
        while not {"NODEDOWN", "DOWN", "RERUN"} <= set(ev):
            k, kv = a.expect({"NODEDOWN", "DOWN", "RERUN"}, deadline,
                             "nodedown / DOWN / re-run after the kill (seen so far: %s)" % sorted(ev))
            ev[k] = kv
        a.expect({"DONE"}, deadline, "erlang node A to finish")

        def ms(k):
            return round((int(ev[k]["t_us"]) / 1e6 - t_kill) * 1000.0, 2)
        return {"detect_ms": ms("NODEDOWN"), "rerun_ms": ms("RERUN"),
                "down_ms": ms("DOWN"), "down_reason": ev["DOWN"].get("reason"),
                "rerun_node": ev["RERUN"].get("node"),
                "detect_via": "erlang:monitor_node/2 {nodedown, B} arriving at node A (os:system_time)",
                "rerun_via": "node A respawns the task locally on nodedown; the task reports its start time",
                "killed_processes": len(pids),
                "defaults": {"net_ticktime_s": int(a.info.get("net_ticktime", "0")) or None,
                             "note": "kill -9 closes B's TCP connection, so nodedown comes from the socket "
                                     "close, not from the tick timeout (45-75 s with the 60 s default)"},
                "cluster": "2 nodes: erl -name A/B@127.0.0.1, shared cookie, private epmd on 127.0.0.1"}
    finally:
        sub.run()


def body(result, cleanup, args):
    ee = ErlEnv(cleanup)
    if "throughput" in args.shapes:
        pc.run_shape(result, "throughput", shape_throughput, ee, args.tasks)
    if "latency" in args.shapes:
        pc.run_shape(result, "latency", shape_latency, ee, args.samples)
    if "failover" in args.shapes:
        pc.run_shape(result, "failover", shape_failover, ee, args.failover_task_s)


def main():
    args = pc.parse_args("erlang")
    return pc.main_wrapper("erlang", install, lambda r, c: body(r, c, args), args)


if __name__ == "__main__":
    sys.exit(main())
