#!/usr/bin/env python3
"""Apache Airflow peer benchmark for pipelines: a 10-stage no-op DAG, trigger to done,
in Airflow and in orch, side by side, on 127.0.0.1.

The DAG (both sides): a linear chain of N tasks (default 10), each running the shell
command `true` (Airflow: BashOperator(bash_command="true"); orch: a command stage
`command = ["true"]`), task i depending on task i-1. Per run: the seconds from the
trigger to the run's end; --warmup untimed runs first (default 1), then --runs timed
runs (default 5); median, min and max; per-task overhead = median / N.

Airflow (installed if missing, see INSTALL below) runs as separate components, all from
the virtualenv, in a temp AIRFLOW_HOME (/tmp/af*), with a SQLite metadata DB there:
  * `airflow db migrate` once;
  * `airflow api-server --host 127.0.0.1 --port P` (REST API + the Task Execution API
    that the task processes report to);
  * `airflow scheduler --skip-serve-logs` with the LocalExecutor (the scheduler's
    default `parallelism`; `--skip-serve-logs` so that nothing listens on 0.0.0.0:8793;
    task logs stay local files);
  * `airflow dag-processor` (parses the DAG file).
  No triggerer (the DAG has no deferrable task). Settings changed from Airflow's
  defaults: load_examples=False, the executor, the DB path, the API host/port and the
  execution API URL that points at it, a simple-auth-manager user `bench` (admin) with
  a password file, a fixed JWT secret shared by the components, and the DAG unpaused
  through the API. Everything else (scheduler loop, heartbeats, parallelism, api-server
  workers) is Airflow's default.
  Trigger: POST /api/v2/dags/DAG/dagRuns; done: GET /api/v2/dags/DAG/dagRuns/RUN every
  --airflow-poll-ms (50 ms) until the state is success or failed. Also reported:
  Airflow's own end_date - start_date of the run, and from the task instances the
  median gap between one task's end and the next one's start.

orch: one orch-node from the repo's cluster.toml with data_dir and ports moved (see
orch_dag_bench.py, which does that side and can run alone); trigger POST
/v1/pipelines/NAME/runs, done when GET /v1/runs/RUN (polled every --orch-poll-ms, 10 ms)
is no longer in_progress; also `orchctl pipeline run NAME --wait` timings. The orch side
runs first, and its node is gone before Airflow starts.

INSTALL: a virtualenv at ~/.cache/orch-peers/airflow/venv (made with the python3 that
runs this script), then
    pip install "apache-airflow==VERSION" --constraint CONSTRAINTS
where CONSTRAINTS is, in this order: --constraints PATH|URL; a file cached from an earlier
install (~/.cache/orch-peers/airflow/constraints-VERSION-PY.txt); the URL Airflow documents,
https://raw.githubusercontent.com/apache/airflow/constraints-VERSION/constraints-PY.txt
(downloaded and cached). If none can be had (e.g. no access to that host), it installs
the pinned version without constraints (pip resolves the rest) and says so in
`install.constraints` / `install.constraints_error`. --no-constraints skips them. The
first install's facts (seconds, version, constraints, when) are kept in
~/.cache/orch-peers/airflow/install.json and repeated in every later JSON as
`install.first_install`. Exit 3 if it cannot be installed.

Usage:
    python3 benches/peers/airflow_bench.py                  # 1 warm-up + 5 runs each side
    python3 benches/peers/airflow_bench.py --runs 3 --warmup 0
    python3 benches/peers/airflow_bench.py --install-only   # install, print the JSON
    python3 benches/peers/airflow_bench.py --skip-orch      # Airflow alone
    python3 benches/peers/airflow_bench.py ... | tail -n 1  # the JSON

Contract (peers_common.py): exactly one JSON object on the last line of stdout; all logs on
stderr (the Airflow components' and the node's own logs go to files in their temp dirs,
whose last lines are copied to stderr when something fails); every process and temp dir
it started is removed at the end, also on failure, SIGTERM and Ctrl-C; every wait is
bounded and its error names what it waited for; 127.0.0.1 only (the JSON lists the TCP
listeners each side had, `listeners`). Exit 0 (also when one side failed: its place in the
JSON holds {"error": ...}), 3 install failed, 130 interrupted, 2 bad command line.
"""
import argparse
import datetime
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
import traceback
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers_common as pc  # noqa: E402
import orch_dag_bench as ob  # noqa: E402

DEFAULT_VERSION = "3.3.2"
CACHE_DIR = os.path.expanduser("~/.cache/orch-peers/airflow")
VENV = os.path.join(CACHE_DIR, "venv")
VPY = os.path.join(VENV, "bin", "python")
AIRFLOW = os.path.join(VENV, "bin", "airflow")
INSTALL_RECORD = os.path.join(CACHE_DIR, "install.json")
CONSTRAINTS_URL = "https://raw.githubusercontent.com/apache/airflow/constraints-{v}/constraints-{py}.txt"
DAG_ID = "orch_peer_chain"
USER, PASSWORD = "bench", "bench-" + secrets.token_hex(8)

INSTALL_TIMEOUT = 2400    # pip install of Airflow and its dependencies
CONSTRAINTS_TIMEOUT = 20  # download of the constraints file
MIGRATE_TIMEOUT = 600     # airflow db migrate (a fresh SQLite DB)
START_TIMEOUT = 300       # api-server answering, scheduler and dag-processor heartbeating
PARSE_TIMEOUT = 300       # the DAG parsed and visible through the API
RUN_TIMEOUT = 600         # one DAG run to its end
HTTP_TIMEOUT = 30         # one REST request


def py_tag():
    return "%d.%d" % sys.version_info[:2]


# --- install ---------------------------------------------------------------------------------
def installed_version():
    if not os.access(VPY, os.X_OK):
        return None
    try:
        r = subprocess.run([VPY, "-c", "import importlib.metadata as m; print(m.version('apache-airflow'))"],
                           capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def read_record():
    try:
        with open(INSTALL_RECORD) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def get_constraints(version, explicit, skip):
    """(path or None, where it came from, error or None)."""
    if skip:
        return None, "skipped (--no-constraints)", None
    cached = os.path.join(CACHE_DIR, "constraints-%s-%s.txt" % (version, py_tag()))
    if explicit and not explicit.startswith(("http://", "https://")):
        if not os.path.isfile(explicit):
            raise RuntimeError("--constraints %s: no such file" % explicit)
        return os.path.abspath(explicit), explicit, None
    if not explicit and os.path.isfile(cached) and os.path.getsize(cached) > 0:
        return cached, cached, None
    url = explicit or CONSTRAINTS_URL.format(v=version, py=py_tag())
    pc.log("downloading constraints %s" % url)
    try:
        with urllib.request.urlopen(url, timeout=CONSTRAINTS_TIMEOUT) as r:
            data = r.read()
        if b"==" not in data:
            raise ValueError("not a constraints file (%d bytes)" % len(data))
    except Exception as e:  # noqa: BLE001 - any failure means: no constraints
        err = "could not download %s: %s" % (url, pc.one_line(e))
        pc.log(err)
        if explicit:
            raise RuntimeError(err)
        return None, None, err
    with open(cached + ".tmp", "wb") as f:
        f.write(data)
    os.rename(cached + ".tmp", cached)
    return cached, url, None


def run_logged(cmd, timeout, what, env=None):
    """Run cmd with its output streamed to stderr; keep the last lines for the error."""
    pc.log("run:", " ".join(cmd))
    last = []
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env=env, start_new_session=True)
    end = time.monotonic() + timeout
    try:
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)
        buf = b""
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out after %ds waiting for %s" % (timeout, what))
            if not sel.select(timeout=min(left, 1.0)):
                continue
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                break
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()
            buf = (buf + chunk)[-16384:]
        p.wait(timeout=max(1, end - time.monotonic()))
        last = buf.decode("utf-8", "replace").splitlines()[-15:]
    finally:
        if p.poll() is None:
            pc.kill_pids(pc.pids_in_session(p.pid) | pc.descendants([p.pid]))
            p.wait(timeout=10)
    if p.returncode != 0:
        err = [ln.strip() for ln in last if "error" in ln.lower()] or [ln.strip() for ln in last[-3:]]
        raise RuntimeError("%s failed with exit code %d: %s" % (what, p.returncode, " | ".join(err)[-600:]))


def install(args):
    version = args.airflow_version
    have = installed_version()
    rec = read_record()
    if have == version:
        return {"version": have,
                "install": {"spec": "apache-airflow==%s" % version, "venv": VENV, "installed_now": False,
                            "seconds": 0.0, "first_install": rec}}
    os.makedirs(CACHE_DIR, exist_ok=True)
    t0 = time.monotonic()
    if not os.access(VPY, os.X_OK):
        run_logged([sys.executable, "-m", "venv", VENV], 300, "python3 -m venv %s" % VENV)
    cpath, csrc, cerr = get_constraints(version, args.constraints, args.no_constraints)
    cmd = [VPY, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
           "apache-airflow==%s" % version]
    if cpath:
        cmd += ["--constraint", cpath]
    run_logged(cmd, INSTALL_TIMEOUT, "pip install apache-airflow==%s" % version)
    secs = round(time.monotonic() - t0, 1)
    have = installed_version()
    if have != version or not os.access(AIRFLOW, os.X_OK):
        raise RuntimeError("after pip install, apache-airflow is %r (wanted %s) and %s %s"
                           % (have, version, AIRFLOW, "exists" if os.path.exists(AIRFLOW) else "is missing"))
    rec = {"version": have, "seconds": secs, "python": sys.version.split()[0],
           "constraints": csrc, "constraints_error": cerr,
           "replaced": rec.get("version") if rec else None,
           "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with open(INSTALL_RECORD, "w") as f:
        json.dump(rec, f)
    return {"version": have,
            "install": {"spec": "apache-airflow==%s" % version, "venv": VENV, "installed_now": True,
                        "seconds": secs, "constraints": csrc, "constraints_error": cerr, "first_install": rec}}


# --- the Airflow side ------------------------------------------------------------------------
DAG_FILE = '''# The Airflow side of benches/peers/airflow_bench.py: {n} no-op tasks in a chain.
import datetime

try:
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
try:
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator

with DAG(dag_id="{dag_id}", schedule=None, start_date=datetime.datetime(2024, 1, 1),
         catchup=False, max_active_runs=1) as dag:
    prev = None
    for i in range({n}):
        t = BashOperator(task_id="s%02d" % i, bash_command="true")
        if prev is not None:
            prev >> t
        prev = t
'''


def parse_ts(s):
    if not s:
        return None
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


class AirflowCluster:
    """api-server + scheduler (LocalExecutor) + dag-processor, SQLite, a temp AIRFLOW_HOME."""

    def __init__(self, cleanup, stages):
        self.cleanup = cleanup
        self.stages = stages
        self.home = pc.make_tempdir("af", cleanup)
        self.dags = os.path.join(self.home, "dags")
        os.mkdir(self.dags)
        with open(os.path.join(self.dags, "orch_peer_chain.py"), "w") as f:
            f.write(DAG_FILE.format(n=stages, dag_id=DAG_ID))
        self.port = pc.free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        pw_file = os.path.join(self.home, "passwords.json")
        with open(pw_file, "w") as f:
            json.dump({USER: PASSWORD}, f)
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("AIRFLOW"):
                del env[k]
        env.update({
            "AIRFLOW_HOME": self.home,
            "AIRFLOW__CORE__DAGS_FOLDER": self.dags,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite:///" + os.path.join(self.home, "airflow.db"),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": self.base + "/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "%s:admin" % USER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": pw_file,
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(pc.free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(pc.free_port()),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "SCARF_ANALYTICS": "false",
            "DO_NOT_TRACK": "true",
            "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
            "PYTHONUNBUFFERED": "1",
        })
        self.env = env
        self.logs = {}
        self.procs = {}
        t0 = time.monotonic()
        run_logged([AIRFLOW, "db", "migrate"], MIGRATE_TIMEOUT, "airflow db migrate", env=env)
        self.migrate_s = round(time.monotonic() - t0, 1)
        t1 = time.monotonic()
        self._start("api-server", [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(self.port)])
        self._start("scheduler", [AIRFLOW, "scheduler", "--skip-serve-logs"])
        self._start("dag-processor", [AIRFLOW, "dag-processor"])
        try:
            pc.wait_until(self._api_up, START_TIMEOUT, "the Airflow api-server to answer on %s" % self.base,
                          interval=0.5)
            self.token = self._token()
            pc.wait_until(self._components_healthy, START_TIMEOUT,
                          "the Airflow scheduler and dag-processor to report healthy on %s/api/v2/monitor/health"
                          % self.base, interval=0.5)
            self.start_s = round(time.monotonic() - t1, 1)
            t2 = time.monotonic()
            pc.wait_until(self._dag_parsed, PARSE_TIMEOUT,
                          "the dag-processor to parse DAG %s (GET /api/v2/dags/%s)" % (DAG_ID, DAG_ID), interval=0.5)
            self.parse_s = round(time.monotonic() - t2, 1)
            st, v = self.api("PATCH", "/api/v2/dags/%s" % DAG_ID, {"is_paused": False})
            if st != 200 or not isinstance(v, dict) or v.get("is_paused") is not False:
                raise RuntimeError("unpausing DAG %s answered %s: %s" % (DAG_ID, st, str(v)[:300]))
        except BaseException:
            self.dump_logs()
            raise
        pc.log("airflow up: migrate %.1fs, components %.1fs, DAG parsed after %.1fs more"
               % (self.migrate_s, self.start_s, self.parse_s))

    def _start(self, name, cmd):
        path = os.path.join(self.home, "%s.log" % name)
        f = open(path, "ab")
        self.cleanup.push(f.close, what="close %s log" % name)
        self.logs[name] = path
        self.procs[name] = pc.spawn(cmd, self.cleanup, env=self.env, cwd=self.home, stdout=f,
                                    stderr=subprocess.STDOUT, what="kill airflow %s" % name)

    def dump_logs(self):
        for name, path in self.logs.items():
            ob.dump_tail(path, "airflow %s log" % name, 30)

    def _check_alive(self):
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError("airflow %s exited with code %s (its log: %s)"
                                   % (name, p.returncode, " | ".join(ob.tail(self.logs[name], 5))[-500:]))

    def api(self, method, path, body=None, timeout=HTTP_TIMEOUT):
        h = {"Authorization": "Bearer " + self.token} if getattr(self, "token", None) else {}
        return ob.http_json(method, self.base + path, body=body, headers=h, timeout=timeout)

    def _api_up(self):
        self._check_alive()
        try:
            st, _ = ob.http_json("GET", self.base + "/api/v2/monitor/health", timeout=5)
        except OSError:
            return False
        return st == 200

    def _token(self):
        st, v = ob.http_json("POST", self.base + "/auth/token", body={"username": USER, "password": PASSWORD})
        if st not in (200, 201) or not isinstance(v, dict) or not v.get("access_token"):
            raise RuntimeError("POST /auth/token as %s answered %s: %s" % (USER, st, str(v)[:300]))
        return v["access_token"]

    def _components_healthy(self):
        self._check_alive()
        st, v = self.api("GET", "/api/v2/monitor/health", timeout=5)
        if st != 200 or not isinstance(v, dict):
            return False
        self.health = v
        # dag_processor is in the answer only where the API knows about a separate one.
        wanted = ["metadatabase", "scheduler"] + (["dag_processor"] if "dag_processor" in v else [])
        return all((v.get(c) or {}).get("status") == "healthy" for c in wanted)

    def _dag_parsed(self):
        self._check_alive()
        st, v = self.api("GET", "/api/v2/dags/%s" % DAG_ID, timeout=5)
        if st == 200:
            return True
        st, errs = self.api("GET", "/api/v2/importErrors", timeout=5)
        if st == 200 and isinstance(errs, dict) and errs.get("import_errors"):
            raise RuntimeError("the DAG file did not import: %s"
                               % " ".join(str(errs["import_errors"][0].get("stack_trace", "")).split())[-400:])
        return False

    def trigger_and_wait(self, i, poll_s):
        run_id = "bench-%d-%s" % (i, secrets.token_hex(3))
        t0 = time.perf_counter()
        st, v = self.api("POST", "/api/v2/dags/%s/dagRuns" % DAG_ID, {"dag_run_id": run_id, "logical_date": None})
        t_post = time.perf_counter()
        if st not in (200, 201) or not isinstance(v, dict):
            raise RuntimeError("POST /api/v2/dags/%s/dagRuns answered %s: %s" % (DAG_ID, st, str(v)[:300]))
        end = time.monotonic() + RUN_TIMEOUT
        state = None
        while True:
            st, r = self.api("GET", "/api/v2/dags/%s/dagRuns/%s" % (DAG_ID, run_id))
            state = r.get("state") if st == 200 and isinstance(r, dict) else state
            if state in ("success", "failed"):
                break
            if time.monotonic() > end:
                raise TimeoutError("timed out after %ds waiting for Airflow DAG run %s to end (last state %s)"
                                   % (RUN_TIMEOUT, run_id, state))
            self._check_alive()
            time.sleep(poll_s)
        dt = time.perf_counter() - t0
        st, tis = self.api("GET", "/api/v2/dags/%s/dagRuns/%s/taskInstances?limit=100" % (DAG_ID, run_id))
        tis = sorted((tis or {}).get("task_instances", []) if isinstance(tis, dict) else [],
                     key=lambda t: t.get("task_id", ""))
        if state != "success":
            raise RuntimeError("Airflow DAG run %s ended %s: %s" % (
                run_id, state, [(t.get("task_id"), t.get("state")) for t in tis]))
        if len(tis) != self.stages or any(t.get("state") != "success" for t in tis):
            raise RuntimeError("Airflow DAG run %s: expected %d successful tasks, got %s"
                               % (run_id, self.stages, [(t.get("task_id"), t.get("state")) for t in tis]))
        gaps = [parse_ts(b.get("start_date")) - parse_ts(a.get("end_date")) for a, b in zip(tis, tis[1:])
                if a.get("end_date") and b.get("start_date")]
        durs = [parse_ts(t["end_date"]) - parse_ts(t["start_date"]) for t in tis
                if t.get("start_date") and t.get("end_date")]
        own = None
        if r.get("start_date") and r.get("end_date"):
            own = parse_ts(r["end_date"]) - parse_ts(r["start_date"])
        q2s = None
        if r.get("queued_at") and r.get("start_date"):
            q2s = parse_ts(r["start_date"]) - parse_ts(r["queued_at"])
        return {"run": run_id, "trigger_to_done_s": dt, "post_s": t_post - t0, "own_s": own,
                "queued_to_start_s": q2s,
                "task_gap_median_s": statistics.median(gaps) if gaps else None,
                "task_duration_median_s": statistics.median(durs) if durs else None}

    def all_pids(self):
        pids = set()
        for p in self.procs.values():
            pids |= pc.pids_in_session(p.pid) | pc.descendants([p.pid])
        return pids


CONFIG_KEYS = (("core", "parallelism"), ("core", "max_active_tasks_per_dag"), ("api", "workers"),
               ("scheduler", "scheduler_idle_sleep_time"), ("scheduler", "scheduler_heartbeat_sec"),
               ("scheduler", "task_queued_timeout"))


def read_config(env):
    """The Airflow settings that shape the figures, as the components saw them (one interpreter)."""
    code = ("import json; from airflow.configuration import conf; keys = " + repr(CONFIG_KEYS) + "; "
            "print(json.dumps({s + '.' + k: conf.get(s, k, fallback=None) for s, k in keys}))")
    try:
        r = subprocess.run([VPY, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
        pc.log("could not read the Airflow config: %s" % pc.one_line(e))
        return None


def airflow_side(cleanup, args, version):
    cl = AirflowCluster(cleanup, args.stages)
    poll_s = args.airflow_poll_ms / 1000.0
    try:
        warm = []
        for i in range(args.warmup):
            s = cl.trigger_and_wait(i, poll_s)
            pc.log("airflow warm-up run %s: %.3fs" % (s["run"], s["trigger_to_done_s"]))
            warm.append(round(s["trigger_to_done_s"], 4))
        samples = []
        for i in range(args.runs):
            s = cl.trigger_and_wait(args.warmup + i, poll_s)
            pc.log("airflow run %s: trigger-to-done %.3fs (own %.3fs, median task gap %.3fs, median task %.3fs)"
                   % (s["run"], s["trigger_to_done_s"], s["own_s"] or -1, s["task_gap_median_s"] or -1,
                      s["task_duration_median_s"] or -1))
            samples.append(s)
        listeners = ob.listening_sockets(cl.all_pids())
        cfg = read_config(cl.env)
    except BaseException:
        cl.dump_logs()
        raise
    tt = [s["trigger_to_done_s"] for s in samples]
    med = statistics.median(tt)
    pick = lambda k: [s[k] for s in samples if s[k] is not None]  # noqa: E731
    res = {
        "version": version,
        "executor": "LocalExecutor",
        "database": "sqlite (%s)" % os.path.join("AIRFLOW_HOME", "airflow.db"),
        "stages": args.stages,
        "runs": args.runs,
        "trigger_to_done": ob.summary(tt),
        "median_s": round(med, 4),
        "per_task_s": round(med / args.stages, 4),
        "samples_s": [round(x, 4) for x in tt],
        "warmup_s": warm,
        "own": ob.summary(pick("own_s")),
        "queued_to_start": ob.summary(pick("queued_to_start_s")),
        "task_gap_median_s": round(statistics.median(pick("task_gap_median_s")), 4) if pick("task_gap_median_s") else None,
        "task_duration_median_s": (round(statistics.median(pick("task_duration_median_s")), 4)
                                   if pick("task_duration_median_s") else None),
        "startup": {"db_migrate_s": cl.migrate_s, "components_s": cl.start_s, "dag_parse_s": cl.parse_s},
        "config": cfg,
        "health": getattr(cl, "health", None),
        "listeners": listeners,
        "non_loopback_listeners": ob.non_loopback(listeners),
        "method": ("POST /api/v2/dags/%s/dagRuns, then GET .../dagRuns/RUN every %g ms until success/failed "
                   "(wall clock); `own` = the run's end_date - start_date; task gaps from the task instances' "
                   "start/end dates" % (DAG_ID, args.airflow_poll_ms)),
        "setup": ("airflow api-server + scheduler --skip-serve-logs (LocalExecutor) + dag-processor, SQLite, "
                  "%d BashOperator(bash_command='true') tasks in a chain, load_examples=False" % args.stages),
    }
    return res


# --- driver ----------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Apache Airflow vs orch: a no-op DAG chain, trigger to done "
                                            "(see benches/peers/README.md)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per side (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per side first (default 1)")
    p.add_argument("--stages", type=int, default=10, help="tasks in the chain (default 10)")
    p.add_argument("--airflow-version", default=DEFAULT_VERSION, help="apache-airflow version (default %s)"
                   % DEFAULT_VERSION)
    p.add_argument("--constraints", default=None, help="constraints file or URL for the install")
    p.add_argument("--no-constraints", action="store_true", help="install without a constraints file")
    p.add_argument("--install-only", action="store_true", help="install Airflow if missing, then stop")
    p.add_argument("--skip-orch", action="store_true", help="do not run the orch side")
    p.add_argument("--skip-airflow", action="store_true", help="do not run the Airflow side (still installs)")
    p.add_argument("--airflow-poll-ms", type=float, default=50.0, help="Airflow DAG-run poll interval (default 50)")
    p.add_argument("--orch-poll-ms", type=float, default=10.0, help="orch run poll interval (default 10)")
    p.add_argument("--bin-dir", default=ob.DEFAULT_BIN_DIR, help="where orch-node and orchctl are")
    a = p.parse_args(argv)
    if a.runs < 1 or a.stages < 1 or a.warmup < 0 or a.airflow_poll_ms <= 0 or a.orch_poll_ms <= 0:
        p.error("--runs and --stages must be >= 1, --warmup >= 0, poll intervals > 0")
    return a


def load():
    try:
        return " ".join(str(round(x, 2)) for x in os.getloadavg())
    except OSError:
        return None


def main():
    args = parse_args()
    pc.hijack_stdout()
    pc.install_signal_handlers()
    result = {"peer": "airflow", "version": None, "cores": os.cpu_count(),
              "params": {"runs": args.runs, "warmup": args.warmup, "stages": args.stages,
                         "airflow_poll_ms": args.airflow_poll_ms, "orch_poll_ms": args.orch_poll_ms,
                         "python": sys.version.split()[0]},
              "load_before": load()}
    t_start = time.monotonic()
    try:
        result.update(install(args))
    except pc.Interrupted as e:
        result["error"] = "interrupted during install (%s)" % e
        pc.emit_json(result)
        return 130
    except Exception as e:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        result["error"] = "could not install airflow: %s" % pc.one_line(e)
        result["wall_s"] = round(time.monotonic() - t_start, 1)
        pc.emit_json(result)
        return 3
    if args.install_only:
        result["wall_s"] = round(time.monotonic() - t_start, 1)
        pc.emit_json(result)
        return 0
    rc = 0
    try:
        for side, skip, fn in (
                ("orch", args.skip_orch,
                 lambda c: ob.bench(c, args.runs, args.warmup, args.stages, args.orch_poll_ms, args.bin_dir)),
                ("airflow", args.skip_airflow, lambda c: airflow_side(c, args, result["version"]))):
            if skip:
                continue
            pc.log("=== %s ===" % side)
            sub = pc.Cleanup()
            t0 = time.monotonic()
            try:
                result[side] = fn(sub)
            except pc.Interrupted:
                result[side] = {"error": "interrupted"}
                raise
            except Exception as e:  # noqa: BLE001
                traceback.print_exc(file=sys.stderr)
                result[side] = {"error": pc.one_line(e)}
            finally:
                sub.run()
            pc.log("%s took %.1fs" % (side, time.monotonic() - t0))
        o, a = result.get("orch", {}), result.get("airflow", {})
        if "median_s" in o and "median_s" in a:
            result["ratio"] = {"airflow_over_orch_median": round(a["median_s"] / o["median_s"], 1)
                               if o["median_s"] else None,
                               "airflow_median_s": a["median_s"], "orch_median_s": o["median_s"],
                               "airflow_per_task_s": a["per_task_s"], "orch_per_task_s": o["per_task_s"]}
    except pc.Interrupted as e:
        result["error"] = "interrupted (%s)" % e
        rc = 130
    finally:
        result["load_after"] = load()
        result["wall_s"] = round(time.monotonic() - t_start, 1)
        pc.emit_json(result)
    return rc


if __name__ == "__main__":
    sys.exit(main())
