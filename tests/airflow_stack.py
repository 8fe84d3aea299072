"""A real Airflow 3.3 deployment for end-to-end tests: api-server, scheduler (LocalExecutor), dag-processor and
triggerer (deferred work and DeadlineAlert callbacks), with its metadata database in a PostgreSQL cluster of the
test pool. Talks to it over the REST API; ``chrome`` and ``ui_login`` drive its UI in headless Debian chromium.

``executor="CeleryExecutor"`` (with ``broker_url``) configures the same processes for celery workers started
elsewhere (tests/topology.py ``DistributedAirflow``): result backend in the metadata database, late acks, a
short task heartbeat timeout so a lost worker's task fails within about ``heartbeat_timeout_s``."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from pgupgrade.cluster import Cluster
from pgupgrade.sql import connect

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "e2e-admin-password"


def chrome() -> Any:
    """Headless Debian chromium through selenium (chromium + chromium-driver from include/scripts/install.sh)."""
    import pytest
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.fail("Debian chromium + chromium-driver missing: run include/scripts/install.sh")
    opts = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1600",
    ):
        opts.add_argument(arg)
    opts.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))


def ui_login(driver: Any, base: str, timeout: float = 30) -> None:
    """Logs the browser into the stack's UI (simple auth manager) as ``admin``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    driver.get(f"{base}/auth/login")
    wait.until(ec.presence_of_element_located((By.NAME, "username"))).send_keys("admin")
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda d: "/auth/login" not in d.current_url)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sqlalchemy_url(cluster: Cluster, driver: str = "postgresql+psycopg2") -> str:
    if cluster.host.startswith("/"):  # a Unix socket directory
        return f"{driver}://postgres@/airflow?host={cluster.host}&port={cluster.port}"
    return f"{driver}://postgres@{cluster.host}:{cluster.port}/airflow"


def celery_env(metadata_cluster: Cluster, broker_url: str, heartbeat_timeout_s: int) -> dict[str, str]:
    """What the CeleryExecutor needs, the same for the scheduler and every worker."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + _sqlalchemy_url(metadata_cluster, "postgresql"),
        # a message is acknowledged when its task ends: a worker that dies leaves it unacknowledged, and the
        # broker gives it again after the visibility timeout (longer than any test task, or a still running
        # task would be handed out twice; Airflow refuses to run a task instance that is not queued anyway)
        "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "1800",
        # a task whose worker died (no heartbeat through the api-server) is failed by the scheduler after this
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(heartbeat_timeout_s),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        # one set of secrets for every process, wherever its AIRFLOW_HOME (a worker's is its own)
        "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
    }


class AirflowStack:
    def __init__(
        self,
        metadata_cluster: Cluster,
        extra_env: dict[str, str] | None = None,
        *,
        executor: str = "LocalExecutor",
        broker_url: str | None = None,
        heartbeat_timeout_s: int = 30,
    ) -> None:
        """extra_env goes to every Airflow process (connections, variables, PGUPGRADE_* settings)."""
        if executor not in ("LocalExecutor", "CeleryExecutor"):
            raise ValueError(f"unsupported executor {executor!r}")
        if executor == "CeleryExecutor" and not broker_url:
            raise ValueError("the CeleryExecutor needs broker_url")
        self.executor = executor
        self.home = Path(tempfile.mkdtemp(prefix="pgupgrade-e2e-airflow-"))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        with connect(metadata_cluster) as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE airflow")
        (self.home / "passwords.json").write_text(json.dumps({"admin": PASSWORD}))
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _sqlalchemy_url(metadata_cluster),
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base}/execution/",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW_CONN_PGUPGRADE_AIRFLOW_API": json.dumps(
                {"conn_type": "http", "host": self.base, "login": "admin", "password": PASSWORD}
            ),
            **(
                celery_env(metadata_cluster, broker_url, heartbeat_timeout_s)
                if executor == "CeleryExecutor" and broker_url
                else {}
            ),
            **(extra_env or {}),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self._token: str | None = None

    def airflow(self, *args: str) -> str:
        res = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        return res.stdout

    def start(self) -> AirflowStack:
        """Migrated, launched and healthy; on any failure what was launched is stopped (by PID) before raising:
        the caller never got the stack to stop."""
        try:
            self.airflow("db", "migrate")
            self.launch()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def launch(self) -> None:
        """Starts api-server, scheduler, dag-processor and triggerer (the metadata database migrated)."""
        for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
            log = open(self.home / f"{name}.log", "wb")
            argv = [sys.executable, "-m", "airflow", name] + (
                ["--port", str(self.port)] if name == "api-server" else []
            )
            self.procs.append(
                subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )

    def wait_healthy(self, timeout: float = 90) -> None:
        self._wait(lambda: requests.get(f"{self.base}/api/v2/monitor/health", timeout=2).ok, timeout, "api-server")

    def _wait(self, ok: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ok():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{what} not ready after {timeout}s; logs in {self.home}")

    @property
    def headers(self) -> dict[str, str]:
        if self._token is None:
            resp = requests.post(
                f"{self.base}/auth/token", json={"username": "admin", "password": PASSWORD}, timeout=10
            )
            resp.raise_for_status()
            self._token = resp.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def api(self, method: str, path: str, **kw: Any) -> Any:
        resp = requests.request(method, f"{self.base}/api/v2{path}", headers=self.headers, timeout=30, **kw)
        resp.raise_for_status()
        return resp.json() if resp.content else None  # e.g. DELETE: 204, no body

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 120) -> None:
        def ok() -> bool:
            have = {d["dag_id"] for d in self.api("GET", "/dags", params={"limit": 100})["dags"]}
            return set(dag_ids) <= have

        self._wait(ok, timeout, f"DAGs {dag_ids}")

    def add_connection(self, conn_id: str, conn: dict[str, Any]) -> None:
        """Creates (or replaces) an Airflow connection in the metadata database through REST: every process sees
        it, including workers started before (environment-variable connections win over it)."""
        body = {"connection_id": conn_id, **conn}
        if isinstance(body.get("extra"), dict):
            body["extra"] = json.dumps(body["extra"])
        resp = requests.post(f"{self.base}/api/v2/connections", headers=self.headers, json=body, timeout=30)
        if resp.status_code == 409:
            resp = requests.patch(
                f"{self.base}/api/v2/connections/{conn_id}", headers=self.headers, json=body, timeout=30
            )
        resp.raise_for_status()

    def unpause(self, dag_id: str) -> None:
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def pause(self, dag_id: str) -> None:
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": True})

    def trigger(self, dag_id: str, conf: dict[str, Any], run_id: str) -> str:
        self.api("POST", f"/dags/{dag_id}/dagRuns", json={"dag_run_id": run_id, "logical_date": None, "conf": conf})
        return run_id

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        try:
            return str(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"])
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code == 404:
                return None
            raise

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if state in ("success", "failed"):
                return state
            time.sleep(1)
        raise TimeoutError(f"{dag_id}/{run_id} did not finish in {timeout}s; logs in {self.home}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 200})
        return {t["task_id"]: t["state"] for t in tis["task_instances"]}

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run as the REST API gives it (state, hostname, try_number, map_index...)."""
        tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 200})
        return list(tis["task_instances"])

    def task_hostnames(self, dag_id: str, run_id: str) -> dict[str, str]:
        """Which host ran each task instance ("task_id" or "task_id[map_index]" → hostname, "" if it never ran)."""
        return {
            t["task_id"] + (f"[{t['map_index']}]" if t.get("map_index", -1) >= 0 else ""): t.get("hostname") or ""
            for t in self.task_instances(dag_id, run_id)
        }

    def stop(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
