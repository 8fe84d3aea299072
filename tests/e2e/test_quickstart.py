"""The README's quickstart (include/scripts/quickstart.sh): ``up`` leaves a whole distributed deployment running
after the script ended, the upgrade DAG runs from the conf it prints, ``up`` again starts nothing, ``down`` leaves
no process and no listening port behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from pgupgrade.cluster import Cluster
from pgupgrade.sql import connect, scalar

from airflow_stack import ROOT
from pgharness import data_checks_out
from topology import port_open

pytestmark = pytest.mark.distributed
SCRIPT = ROOT / "include" / "scripts" / "quickstart.sh"
UPGRADE = "pg15_to_pg16_upgrade"


def quickstart(work: Path, *args: str, timeout: float = 900) -> tuple[subprocess.CompletedProcess[str], float]:
    # as from a shell: none of this session's Airflow settings (tests/conftest.py sets AIRFLOW_HOME, ...)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PGUPGRADE_"))}
    env["PGUPGRADE_QUICKSTART_DIR"] = str(work)
    started = time.monotonic()
    res = subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    return res, time.monotonic() - started


def alive(pid: int, start: int | None) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return stat[0] not in ("Z", "X") and int(stat[19]) == start


def test_quickstart_up_trigger_down() -> None:
    # not below pytest's tmp_path (mode 700 above it): the postgres and airflow OS users work in this directory
    work = Path(tempfile.mkdtemp(prefix="pgupgrade-quickstart-test-")) / "qs"
    work.parent.chmod(0o755)
    up, up_s = quickstart(work, "up")
    print(up.stdout[-6000:], up.stderr[-3000:], f"up: {up_s:.0f}s", sep="\n")
    state: dict[str, Any] = json.loads((work / "state.json").read_text()) if (work / "state.json").exists() else {}
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        url, password = state["airflow"]["url"], state["airflow"]["password"]
        # what the user reads: the UI, the login, the conf (with the SSH-hosted cluster's paths)
        assert f"Airflow UI:  {url}    login: admin   password: {password}" in up.stdout
        printed = re.search(r"Trigger → paste this conf.*\n\s+(\{.*\})\n", up.stdout)
        assert printed, up.stdout
        conf = json.loads(printed.group(1))
        assert conf["postgres_conn_id"] == "quickstart_pg15" and conf["terminate_after_s"] == 0

        # the processes outlived the script; the api-server answers and has the DAGs, unpaused where needed
        assert requests.get(f"{url}/api/v2/monitor/health", timeout=10).ok
        token = requests.post(f"{url}/auth/token", json={"username": "admin", "password": password}, timeout=10)
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}

        def api(method: str, path: str, **kw: Any) -> Any:
            resp = requests.request(method, f"{url}/api/v2{path}", headers=headers, timeout=30, **kw)
            resp.raise_for_status()
            return resp.json()

        dags = {d["dag_id"]: d["is_paused"] for d in api("GET", "/dags", params={"limit": 100})["dags"]}
        assert dags[UPGRADE] is False and dags["pg_major_upgrade_rollback"] is False, dags
        assert {c["connection_id"] for c in api("GET", "/connections")["connections"]} >= {
            "quickstart_pg15",
            "quickstart_ssh",
        }

        # the cluster answers on the second host over TCP
        db = state["dbhost"]
        cluster = Cluster(
            name="quickstart_pg15",
            dbname="postgres",
            user="postgres",
            bindir="/nonexistent",
            datadir=db["cluster"]["datadir"],
            port=db["cluster"]["port"],
            host=db["address"],
        )
        with connect(cluster) as conn:
            assert scalar(conn, "SELECT inet_server_addr()::text") == "127.0.0.2/32"
            assert int(scalar(conn, "SHOW server_version_num")) // 10000 == 15
        data_checks_out(cluster)

        again, again_s = quickstart(work, "up")
        assert again.returncode == 0 and "already up" in again.stdout, again.stdout + again.stderr
        assert json.loads((work / "state.json").read_text())["sessions"] == state["sessions"]  # nothing new
        status, _ = quickstart(work, "status")
        assert status.returncode == 0 and "healthy" in status.stdout, status.stdout

        # the upgrade from the printed conf, by REST, on the celery workers
        run_id = f"quickstart-{uuid.uuid4().hex[:6]}"
        api("POST", f"/dags/{UPGRADE}/dagRuns", json={"dag_run_id": run_id, "logical_date": None, "conf": conf})
        started, state_ = time.monotonic(), None
        while time.monotonic() - started < 900 and state_ not in ("success", "failed"):
            time.sleep(2)
            state_ = api("GET", f"/dags/{UPGRADE}/dagRuns/{run_id}")["state"]
        tis = api("GET", f"/dags/{UPGRADE}/dagRuns/{run_id}/taskInstances", params={"limit": 200})["task_instances"]
        print(f"{UPGRADE} {run_id}: {state_} in {time.monotonic() - started:.0f}s; up again: {again_s:.1f}s")
        assert state_ == "success", {t["task_id"]: t["state"] for t in tis}
        assert {t["hostname"] for t in tis if t["hostname"]} == {"worker-a", "worker-b"}
        assert int(_served(cluster)) // 10000 == 16  # the old port, on that host
        data_checks_out(cluster)
    finally:
        down, down_s = quickstart(work, "down", timeout=300)
        print(down.stdout, down.stderr[-3000:], f"down: {down_s:.0f}s", sep="\n")
        if not work.exists():
            shutil.rmtree(work.parent, ignore_errors=True)
    assert down.returncode == 0, down.stdout + down.stderr
    for rec in state.get("sessions", []):
        assert not alive(rec["pid"], rec["start"]), rec
    for ns in state.get("namespaces", []):
        assert not alive(ns["pid1"]["pid"], ns["pid1"]["start"]), ns
        assert not alive(ns["unshare"]["pid"], ns["unshare"]["start"]), ns
        in_ns = [p for p in os.listdir("/proc") if p.isdigit() and _ns(p) == ns["inode"]]
        assert not in_ns, (ns, in_ns)
    for address, port in state.get("ports", []):
        assert not port_open("127.0.0.1" if address in ("0.0.0.0", "::") else address, port), (address, port)
    assert state.get("ports"), state  # up recorded what it listened on
    assert not work.exists()
    assert not (work.parent / f".{work.name}.lock").exists()


def _served(cluster: Cluster) -> int:
    with connect(cluster) as conn:
        return int(scalar(conn, "SHOW server_version_num"))


def _ns(pid: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
