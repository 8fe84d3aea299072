"""The main job, end to end on a throwaway cluster: a real PostgreSQL 15 cluster with data and the pg_tviews
stand-in extension is upgraded by the `pg_major_upgrade` DAG, run through Airflow (`airflow dags test`), to the
newest major installed here; the run's Markdown report is printed. Everything lives under one temp directory
and is stopped afterwards (the report is kept)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # the harness that builds throwaway clusters with the stand-in extension

work = Path(tempfile.mkdtemp(prefix="pgupgrade-demo-"))
work.chmod(0o755)  # the postgres OS user creates the clusters below it
os.environ.setdefault("PGUPGRADE_TEST_DIR", str(work / "clusters"))

from pgupgrade import versions  # noqa: E402
from pgupgrade.sql import connect, scalar  # noqa: E402

from pgharness import Pool, installation  # noqa: E402


def prepare() -> int | None:
    """The newest installed major, with the stand-in extension installed into the old and the new installation;
    None (after saying what is missing) when this machine cannot run the demo."""
    found = versions.discover()
    newest = max((i.major for i in found), default=0)
    if newest <= 15:
        have = ", ".join(f"{i.version} ({i.bindir})" for i in found) or "none"
        print(f"demo: needs PostgreSQL 15.18 and a newer major; found: {have}. Run include/scripts/install.sh.")
        return None
    try:
        for version in ("15.18", str(newest)):
            inst = installation(version)  # copies the stand-in pg_tviews into its share/extension
            print(f"demo: PostgreSQL {inst.version} in {inst.bindir} (stand-in pg_tviews in {inst.extension_dir})")
    except LookupError as exc:
        print(f"demo: {exc}")
        return None
    return newest


def main() -> int:
    newest = prepare()
    if newest is None:
        return 1
    pool = Pool()
    try:
        old = pool.new("15.18", "demo15")
        print(f"throwaway cluster: PostgreSQL {installation('15.18').version} in {old.datadir} (port {old.port})")
        home = Path(old.datadir).parent
        conf = {
            "postgres_conn_id": "demo15",
            "target_major": newest,
            "transfer_mode": "link",
            "new_datadir": str(home / f"data{newest}"),
            "backup_dir": str(home / "backup"),
        }
        airflow_home = work / "airflow"
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PGUPGRADE_STATE_DIR": str(work / "state"),
            "AIRFLOW_CONN_DEMO15": json.dumps(
                {
                    "conn_type": "postgres",
                    "host": old.host,
                    "port": old.port,
                    "login": "postgres",
                    "schema": "postgres",
                    "extra": old.to_extra(),
                }
            ),
        }
        airflow = [sys.executable, "-m", "airflow"]
        subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True)
        print(f"running pg_major_upgrade 15 → {newest} through Airflow (log: {work / 'dag-test.log'}) …")
        with open(work / "dag-test.log", "w") as log:
            rc = subprocess.run(
                [*airflow, "dags", "test", "pg_major_upgrade", "--conf", json.dumps(conf)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            ).returncode
        runs = sorted((work / "state" / "reports").glob("*/*.md"), key=lambda p: p.stat().st_mtime)
        if not runs:
            print(f"no report written; see {work / 'dag-test.log'}")
            return 1
        print(runs[-1].read_text())
        new = old.with_installation(installation(str(newest)).bindir, conf["new_datadir"])
        pool.track(new)
        with connect(old, "app") as conn:
            print(f"cluster now answers on port {old.port}: {scalar(conn, 'SELECT version()')}")
            print(
                f"orders rows: {scalar(conn, 'SELECT count(*) FROM orders')}, "
                f"pg_tviews {scalar(conn, 'SELECT pg_tviews_version()')}"
            )
        print(f"report: {runs[-1]} (JSON beside it); run state under {work / 'state'}")
        return rc
    finally:
        pool.close()


if __name__ == "__main__":
    sys.exit(main())
