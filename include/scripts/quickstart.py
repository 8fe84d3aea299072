"""A local deployment to try the DAGs from the Airflow UI: the distributed test topology (tests/topology.py), started
and left running.

``up``: a PostgreSQL 17 on 127.0.0.1 holds Airflow's metadata database and the control database
(``pgupgrade_control``); a second database host ``quickstart-db`` (own mount/UTS/PID namespace, ``sshd`` as postgres
on 127.0.0.2) runs a PostgreSQL 15.18 cluster with sample data on 127.0.0.2; Airflow (api-server, scheduler,
dag-processor, triggerer as root here; two Celery workers in namespaces of their own as the ``airflow`` user; redis
broker) has the connections ``quickstart_pg15`` (postgres) and ``quickstart_ssh`` (ssh), the upgrade and rollback
DAGs unpaused, and a generated admin password. What was started (PIDs with their start times, namespaces, ports,
directories) goes to ``state.json`` in the quickstart directory; the processes run in sessions of their own and
outlive this script.

``down`` stops exactly those processes (a PID counts only when its start time matches, or it is in a recorded
session or PID namespace), servers with a fast shutdown first, and removes the directory. ``status`` says what
runs. ``up`` on a running deployment prints its instructions again and starts nothing; on a partly running one it
refuses (run ``down``). ``airflow ARGS`` runs the airflow CLI with the deployment's environment.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("PGUPGRADE_QUICKSTART_DIR", "/tmp/pgupgrade-quickstart"))
STATE = WORK / "state.json"
CONN_ID, SSH_CONN_ID, HOSTNAME = "quickstart_pg15", "quickstart_ssh", "quickstart-db"
UPGRADE_DAG = "pg15_to_pg16_upgrade"
UNPAUSE = [
    "pg15_to_pg16_upgrade",
    "pg16_to_pg17_upgrade",
    "pg17_to_pg18_upgrade",
    "pg_major_upgrade",
    "pg_minor_upgrade",
    "pg_tviews_0_1_to_0_2_migration",
    "pg_tviews_minor_update",
    "pg_major_upgrade_cleanup",
    "pg_major_upgrade_rollback",
    "pg_minor_upgrade_rollback",
    "pg_tviews_extension_rollback",
]  # not pg_preflight_checks: daily, it would run at once against include/config/clusters.json


def say(msg: str) -> None:
    print(f"quickstart: {msg}", flush=True)


# -- processes, by PID and start time (never by name) ---------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def started_at(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): with the PID, it names one process."""
    st = _stat(pid)
    return int(st[19]) if st else None


def running(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def record(name: str, pid: int) -> dict[str, Any]:
    return {"name": name, "pid": pid, "start": started_at(pid)}


def is_same(rec: dict[str, Any]) -> bool:
    """The recorded process still runs (same PID, same start time)."""
    return rec.get("start") is not None and started_at(rec["pid"]) == rec["start"] and running(rec["pid"])


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def ours(state: dict[str, Any]) -> dict[int, str]:
    """Every running process the deployment started: in one of its sessions (each component was started in a
    session of its own; servers that daemonize make sessions of their own, recorded too) or in one of its PID
    namespaces. PID → "component: command"."""
    sessions: dict[int, str] = {}
    namespaces: dict[str, str] = {}
    for rec in state.get("sessions", []):
        if rec.get("start") is not None:
            sessions[rec["pid"]] = rec["name"]
    for ns in state.get("namespaces", []):
        sessions[ns["unshare"]["pid"]] = ns["name"]
        if ns.get("inode"):
            namespaces[ns["inode"]] = ns["name"]
    stats = {pid: st for pid in all_pids() if (st := _stat(pid)) and st[0] not in ("Z", "X") and pid != os.getpid()}
    found = {}
    for pid, st in stats.items():
        owner = sessions.get(int(st[3])) or namespaces.get(pid_ns(pid) or "")
        if owner:
            found[pid] = f"{owner}: {comm(pid)}"
    # and their descendants in sessions of their own (every PostgreSQL backend calls setsid)
    for pid in tree(list(found), stats):
        if pid not in found:
            found[pid] = f"{found.get(int(stats[pid][1]), '?').split(':')[0]}: {comm(pid)}"
    return found


def tree(roots: list[int], stats: dict[int, list[str]] | None = None) -> list[int]:
    """roots and every running descendant of theirs, parents before children."""
    if stats is None:
        stats = {pid: st for pid in all_pids() if (st := _stat(pid)) and st[0] not in ("Z", "X")}
    children: dict[int, list[int]] = {}
    for pid, st in stats.items():
        children.setdefault(int(st[1]), []).append(pid)
    out, todo, seen = [], list(roots), set(roots)
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        for child in children.get(pid, []):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return out


def listening(pids: set[int]) -> set[tuple[str, int]]:
    """TCP ports these processes listen on: (address, port)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    link = os.readlink(fd)
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                addr, port = f[1].split(":")
                found.add((_address(addr), int(port, 16)))
    return found


def _address(hexaddr: str) -> str:
    if len(hexaddr) == 8:
        return ".".join(str(b) for b in reversed(bytes.fromhex(hexaddr)))
    return "::" if set(hexaddr) == {"0"} else hexaddr


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if running(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def signal_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def in_session(sid: int) -> list[int]:
    return [p for p in all_pids() if (st := _stat(p)) and int(st[3]) == sid and st[0] not in ("Z", "X")]


def in_namespace(inode: str) -> list[int]:
    return [p for p in all_pids() if pid_ns(p) == inode and running(p)]


# -- state ----------------------------------------------------------------------------------------------------------


def load() -> dict[str, Any] | None:
    try:
        return dict(json.loads(STATE.read_text()))
    except (OSError, ValueError):
        return None


def save(state: dict[str, Any]) -> None:
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.chmod(0o600)  # the admin password
    tmp.rename(STATE)


@contextmanager
def locked() -> Iterator[None]:
    """One up/down/status at a time (a lock file beside the directory, which down removes)."""
    WORK.parent.mkdir(parents=True, exist_ok=True)
    lock = WORK.parent / f".{WORK.name}.lock"
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
        if not WORK.exists():  # down (or a failed up) removed everything else
            lock.unlink(missing_ok=True)


# -- up ---------------------------------------------------------------------------------------------------------------


def up() -> int:
    state = load()
    if state is not None:
        alive = ours(state)
        if alive and healthy(state) and all(is_same(r) for r in state.get("sessions", [])):
            say(f"already up (started {state['started']}); nothing started. `status` for details, `down` to stop.")
            instructions(state)
            return 0
        if alive:
            say(f"partly up ({len(alive)} processes of an earlier `up` run, not all of it): run `down` first")
            return 1
        say(f"an earlier quickstart left {WORK} but nothing runs: removing it")
        shutil.rmtree(WORK, ignore_errors=True)
    for d in reversed(WORK.parents):
        if d.exists() and not d.stat().st_mode & 0o001:
            say(f"{d} is closed to other users: the postgres and airflow OS users could not work in {WORK}")
            return 2
    WORK.mkdir(mode=0o755, parents=True, exist_ok=True)
    WORK.chmod(0o755)  # the postgres and airflow OS users work below it
    state = {"work": str(WORK), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "sessions": [], "namespaces": []}
    save(state)
    t0 = time.monotonic()
    try:
        start(state, t0)
    except BaseException as exc:
        say(f"up failed ({type(exc).__name__}: {exc}); stopping what started")
        teardown(state)
        raise
    say(f"up in {time.monotonic() - t0:.0f}s")
    instructions(state)
    return 0


def start(state: dict[str, Any], t0: float) -> None:
    # everything under WORK: the harness makes its directories with tempfile, the clusters under PGUPGRADE_TEST_DIR
    tempfile.tempdir = str(WORK)
    os.environ["PGUPGRADE_TEST_DIR"] = str(WORK / "clusters")
    for name in ("AIRFLOW_HOME", "PGUPGRADE_STATE_DIR"):  # a caller's own Airflow is not this deployment's
        os.environ.pop(name, None)
    sys.path.insert(0, str(ROOT / "tests"))
    import pgharness
    from airflow_stack import free_port
    from pgharness import Pool, installation
    from topology import DistributedAirflow, SecondHost

    pgharness._ports = iter(free_port, None)  # the pool's ports: free ones (the tests count from a PID-based base)

    def took() -> str:
        return f"{time.monotonic() - t0:.0f}s"

    pool = Pool()
    state["pool_root"] = str(pool.root)
    save(state)
    meta = pool.new("17", "quickstart_meta", seed=False, settings={"listen_addresses": "'127.0.0.1'"})
    meta = replace(meta, host="127.0.0.1")
    state["meta"] = {"bindir": meta.bindir, "datadir": meta.datadir, "port": meta.port}
    state["sessions"].append(record("metadata postgres", postmaster(meta.datadir)))
    save(state)
    say(f"[{took()}] metadata + control database: PostgreSQL 17 on 127.0.0.1:{meta.port}")

    host = SecondHost(hostname=HOSTNAME, ssh_conn_id=SSH_CONN_ID)
    host.start()
    assert host.ns is not None and host.ns.proc is not None and host.keydir is not None
    ns = host.ns
    state["namespaces"].append(
        {"name": HOSTNAME, "unshare": record(HOSTNAME, ns.proc.pid), "pid1": record(HOSTNAME, ns.pid)}
    )
    state["namespaces"][-1]["inode"] = pid_ns(ns.pid)
    state["dbhost"] = {"address": host.address, "ssh_port": host.ssh_port, "key_file": str(host.key_file)}
    save(state)
    cluster = host.new_cluster("15.18", CONN_ID)
    home = os.path.dirname(cluster.datadir)
    new_bindir = installation("16").bindir
    state["dbhost"]["cluster"] = {"conn_id": CONN_ID, "port": cluster.port, "datadir": cluster.datadir}
    state["conf"] = {
        "postgres_conn_id": CONN_ID,
        "transfer_mode": "link",
        "terminate_after_s": 0,
        "new_bindir": new_bindir,
        "new_datadir": f"{home}/data16",
        "backup_dir": f"{home}/backup",
    }
    save(state)
    say(f"[{took()}] database host {HOSTNAME}: sshd on {host.address}:{host.ssh_port}, PostgreSQL 15.18 with sample")
    say(f"    data on {host.address}:{cluster.port} (data directory {cluster.datadir} on that host)")

    password = secrets.token_urlsafe(12)

    class Quickstart(DistributedAirflow):  # type: ignore[misc]
        """The distributed stack with a password of its own and patient start-up timeouts."""

        @property
        def headers(self) -> dict[str, str]:
            if getattr(self, "_token", None) is None:
                self._token = token(self.base, password)
            return {"Authorization": f"Bearer {self._token}"}

        def start(self) -> Quickstart:
            try:
                self.airflow("db", "migrate")
                self.launch()
                for name in self.worker_names:
                    self.start_worker(name)
                self.wait_healthy(300)
                self.wait_workers_ready(300)
            except BaseException:
                self.stop()
                raise
            return self

    say(f"[{took()}] starting Airflow (migrating its database, then 4 processes and 2 Celery workers, ~1-2 min)")
    stack = Quickstart(meta, {}, shared=[host.keydir], heartbeat_timeout_s=120)
    (stack.home / "passwords.json").write_text(json.dumps({"admin": password}))
    (stack.home / "passwords.json").chmod(0o600)
    api_conn = {"conn_type": "http", "host": stack.base, "login": "admin", "password": password}
    stack.env["AIRFLOW_CONN_PGUPGRADE_AIRFLOW_API"] = json.dumps(api_conn)
    stack.env["AIRFLOW__API__HOST"] = "127.0.0.1"  # the UI on loopback only (the harness binds every address)
    state["redis"] = {"port": stack.redis.port}
    assert stack.redis.proc is not None
    state["sessions"].append(record("redis", stack.redis.proc.pid))
    save(state)
    try:
        stack.start()
    finally:  # recorded even when it failed half-way (stop() ran; down then finds nothing of it)
        for name, proc in zip(("api-server", "scheduler", "dag-processor", "triggerer"), stack.procs, strict=False):
            state["sessions"].append(record(name, proc.pid))
        for w in stack.workers.values():
            state["sessions"].append(record(w.name, w.proc.pid))
            state["namespaces"].append(
                {
                    "name": w.name,
                    "unshare": record(w.name, w.ns.proc.pid if w.ns.proc else 0),
                    "pid1": record(w.name, w.ns.pid),
                    "inode": pid_ns(w.ns.pid),
                }
            )
        state["airflow"] = {"home": str(stack.home), "url": stack.base, "port": stack.port, "password": password}
        save(state)
    env_file = WORK / "airflow-env.json"  # for `quickstart.sh airflow ...`
    env_file.write_text(json.dumps({k: v for k, v in stack.env.items() if k not in os.environ or os.environ[k] != v}))
    env_file.chmod(0o600)
    say(f"[{took()}] Airflow answers on {stack.base}; workers ready")

    stack.wait_for_dags(UNPAUSE, timeout=300)
    _, value = pgharness.connection_env(cluster, CONN_ID)
    stack.add_connection(CONN_ID, json.loads(value))
    stack.add_connection(SSH_CONN_ID, host.ssh_connection())
    for dag_id in UNPAUSE:
        stack.unpause(dag_id)
    say(f"[{took()}] connections {CONN_ID}, {SSH_CONN_ID} registered; upgrade and rollback DAGs unpaused")
    state["ports"] = sorted([list(p) for p in listening(set(ours(state)))])
    save(state)


def postmaster(datadir: str) -> int:
    return int(Path(datadir, "postmaster.pid").read_text().split()[0])


def token(base: str, password: str) -> str:
    req = urllib.request.Request(
        f"{base}/auth/token",
        data=json.dumps({"username": "admin", "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(json.load(resp)["access_token"])


def healthy(state: dict[str, Any]) -> bool:
    url = state.get("airflow", {}).get("url")
    if not url:
        return False
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def instructions(state: dict[str, Any]) -> None:
    af, db, conf = state["airflow"], state["dbhost"], state["conf"]
    url, password = af["url"], af["password"]
    c = json.dumps(conf)
    body = json.dumps({"logical_date": None, "conf": conf})
    token_cmd = (
        f"curl -s -X POST {url}/auth/token -H 'Content-Type: application/json' "
        f"-d '{json.dumps({'username': 'admin', 'password': password})}' | python3 -c "
        "'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'"
    )
    print(
        f"""
Airflow UI:  {url}    login: admin   password: {password}
Database host {HOSTNAME}: PostgreSQL 15.18 on {db["address"]}:{db["cluster"]["port"]} (databases app, reporting;
    connection {CONN_ID}); ssh: ssh -i {db["key_file"]} -p {db["ssh_port"]} postgres@{db["address"]}
    (connection {SSH_CONN_ID})
    psql:  psql -h {db["address"]} -p {db["cluster"]["port"]} -U postgres app

Upgrade it to 16: DAG {UPGRADE_DAG} → Trigger → paste this conf (the rollback DAG starts by itself on a failure):
    {c}
or by REST:
    TOKEN=$({token_cmd})
    curl -s -X POST {url}/api/v2/dags/{UPGRADE_DAG}/dagRuns -H "Authorization: Bearer $TOKEN" \\
      -H 'Content-Type: application/json' -d '{body}'
or the CLI:  bash include/scripts/quickstart.sh airflow dags trigger {UPGRADE_DAG} --conf '{c}'
Add "dry_run": true for the plan only. Logs: {af["home"]}/logs. Stop everything: bash include/scripts/quickstart.sh down
""",
        flush=True,
    )


# -- down -------------------------------------------------------------------------------------------------------------


def down() -> int:
    state = load()
    if state is None:
        if WORK.exists():
            say(f"no state file in {WORK}: nothing recorded to stop; {WORK} left as it is")
            return 1
        say("not up")
        return 0
    t0 = time.monotonic()
    left = teardown(state)
    if left:
        say(f"still running after down: {left}; {WORK} kept (run down again)")
        return 1
    say(f"down in {time.monotonic() - t0:.0f}s: every process stopped, {WORK} removed")
    return 0


def teardown(state: dict[str, Any]) -> dict[int, str]:
    """Stops what state names, gently first; removes WORK when nothing is left. What still runs, if anything."""
    sessions = {r["name"]: r for r in state.get("sessions", []) if r.get("start") is not None}
    namespaces = {n["name"]: n for n in state.get("namespaces", [])}

    def stop_sessions(names: list[str], timeout: float) -> None:
        pids = tree([p for n in names if n in sessions for p in in_session(sessions[n]["pid"])])
        signal_pids(pids, signal.SIGTERM)
        signal_pids(wait_gone(pids, timeout), signal.SIGKILL)
        wait_gone(pids, 10)

    def kill_namespace(name: str) -> None:
        ns = namespaces.get(name)
        if ns is None:
            return
        pid1 = ns["pid1"]
        if is_same(pid1) and pid_ns(pid1["pid"]) == ns.get("inode"):
            os.kill(pid1["pid"], signal.SIGKILL)  # the kernel kills every process of the namespace
        wait_gone(in_namespace(ns["inode"]) if ns.get("inode") else [], 20)
        if is_same(ns["unshare"]):
            wait_gone([ns["unshare"]["pid"]], 10)

    workers = [n for n in namespaces if n != HOSTNAME]
    # the Celery workers: a warm shutdown, then their hosts end
    stop_sessions(workers, 20)
    for name in workers:
        kill_namespace(name)
    stop_sessions(["api-server", "scheduler", "dag-processor", "triggerer"], 30)
    # the database host: its servers shut down fast (postmasters are the ns PID 1's children), then the host ends
    host = namespaces.get(HOSTNAME)
    if host and host.get("inode") and is_same(host["pid1"]):
        pid1 = host["pid1"]["pid"]
        masters = [
            p for p in in_namespace(host["inode"]) if comm(p) == "postgres" and (_stat(p) or ["", "0"])[1] == str(pid1)
        ]
        signal_pids(masters, signal.SIGINT)
        wait_gone(masters, 30)
    kill_namespace(HOSTNAME)
    stop_sessions(["redis"], 10)
    meta = state.get("meta")
    if meta and Path(meta["datadir"], "postmaster.pid").exists():
        pg_ctl = [f"{meta['bindir']}/pg_ctl", "-D", meta["datadir"], "-m", "fast", "-w", "-t", "60", "stop"]
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *pg_ctl],
            cwd="/",
            capture_output=True,
            check=False,
        )
    stop_sessions(["metadata postgres"], 10)
    left = ours(state)
    if left:  # anything else in a recorded session or namespace
        signal_pids(list(left), signal.SIGKILL)
        wait_gone(list(left), 10)
        left = ours(state)
    if not left:
        shutil.rmtree(WORK, ignore_errors=True)
    return left


# -- status, airflow --------------------------------------------------------------------------------------------------


def status() -> int:
    state = load()
    if state is None:
        say("not up")
        return 3
    alive = ours(state)
    say(f"started {state['started']}; directory {WORK}")
    for rec in state.get("sessions", []):
        n = sum(1 for v in alive.values() if v.startswith(rec["name"] + ":"))
        print(f"  {rec['name']:<18} pid {rec['pid']:<8} {'running' if is_same(rec) else 'NOT running'} ({n} processes)")
    for ns in state.get("namespaces", []):
        n = len(in_namespace(ns["inode"])) if ns.get("inode") else 0
        up_ = "up" if is_same(ns["pid1"]) else "DOWN"
        print(f"  {ns['name'] + ' (host)':<18} pid {ns['pid1']['pid']:<8} {up_} ({n} processes in its PID namespace)")
    ports = sorted(listening(set(alive)))
    print("  listening: " + ", ".join(f"{a}:{p}" for a, p in ports))
    ok = healthy(state)
    if "airflow" in state:
        print(f"  api-server {state['airflow']['url']}: {'healthy' if ok else 'NOT answering'}")
    complete = ok and all(is_same(r) for r in state.get("sessions", []))
    say("up" if complete else "partly up: run down (then up)")
    return 0 if complete else 1


def airflow_cli(args: list[str]) -> int:
    try:
        extra = json.loads((WORK / "airflow-env.json").read_text())
    except OSError:
        say("not up")
        return 3
    return subprocess.run([sys.executable, "-m", "airflow", *args], env={**os.environ, **extra}, check=False).returncode


def main(argv: list[str]) -> int:
    if os.geteuid() != 0:
        say("run as root (it starts servers as the postgres and airflow OS users and makes namespaces)")
        return 2
    cmd = argv[0] if argv else "up"
    if cmd == "airflow":
        return airflow_cli(argv[1:])
    actions = {"up": up, "down": down, "status": status}
    if cmd not in actions:
        print("usage: quickstart.sh up | status | down | airflow ARGS...", file=sys.stderr)
        return 2
    with locked():
        return actions[cmd]()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
