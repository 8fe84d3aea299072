"""The control database: run state every Airflow process reaches, whichever machine it runs on.

A PostgreSQL database (named by an Airflow connection, ``pgupgrade_control`` by default) holds each run's
journal and documents, the per-cluster locks and the outage slots, in schema ``pgupgrade``. The product creates
and migrates that schema itself (``migrate``: versioned SQL files ``control-schema-v<N>.sql``, applied under an
advisory lock so two processes starting at once apply each version once).

Guarantees:
- a journal event is committed (``synchronous_commit = on`` for the session) before ``record`` returns, so the
  step it records acts only once the event is durable; each event carries a client-made id, so a statement
  retried after a lost connection is not recorded twice;
- every lock and slot transition is one statement (an insert that conflicts, or an update guarded by the row's
  version): two contenders can never both win; times are the control database's clock;
- once a run's outage has begun (``old_stop_requested`` recorded) and the control database cannot be reached,
  events and documents are spooled to a file on the database host (``Spool``) so the critical section still ends
  in a state the rollback can decide from; the spool is reconciled into the control database, in order, the next
  time this run's journal (or its rollback's view of it) reaches the database. Before that point an unreachable
  control database makes the step fail before it acts (``ControlUnreachable``).
"""

from __future__ import annotations

import json
import logging
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgupgrade import sql
from pgupgrade.errors import ConfigError, LockHeld, PgUpgradeError
from pgupgrade.state import IsAlive, JournalReading, judge, now_iso, state_root
from pgupgrade.state.spool import Spool

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Once this is journaled, clients are out and the old cluster may be down: journaling must not stop the run.
OUTAGE_BEGUN = "old_stop_requested"


class ControlUnreachable(PgUpgradeError):
    """The control database did not answer: nothing was recorded, so the step that wanted to record must not act."""


class ControlDB:
    """One connection per process to the control database, reopened once when it was lost."""

    def __init__(self, conninfo: dict[str, Any]) -> None:
        self.conninfo = dict(conninfo)
        self._conn: Any = None
        self.where = f"{conninfo.get('host')}:{conninfo.get('port')}/{conninfo.get('dbname')}"

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = sql.psycopg2.connect(
                **{"connect_timeout": 5, **self.conninfo},
                application_name="pgupgrade-control",
                options="-c synchronous_commit=on -c statement_timeout=15000 -c lock_timeout=10000",
            )
            self._conn.autocommit = True
            migrate(self._conn)
        return self._conn

    def rows(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Runs the named SQL file (one statement, committed when it returns) and gives its rows."""
        for attempt in (1, 2):
            try:
                return sql.fetch_named(self._connect(), name, params)
            except (sql.psycopg2.OperationalError, sql.psycopg2.InterfaceError) as exc:
                self.close()
                if attempt == 2:
                    raise ControlUnreachable(
                        f"control database {self.where} cannot be reached: {str(exc).strip()}"
                    ) from None
                log.warning("control database %s: %s; connecting again", self.where, str(exc).strip())
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def migrate(conn: Any) -> int:
    """Brings schema ``pgupgrade`` to SCHEMA_VERSION; returns the version found before. Refuses a newer schema."""
    current = _version(conn)
    if current == SCHEMA_VERSION:
        return current
    if current > SCHEMA_VERSION:
        raise ConfigError(
            "control database",
            f"schema pgupgrade is at version {current}, newer than this product's {SCHEMA_VERSION}: upgrade the "
            "product on every Airflow process",
        )
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('pgupgrade-control-schema'))")
            found = _version(conn)
            for version in range(found + 1, SCHEMA_VERSION + 1):
                cur.execute(sql.load(f"control-schema-v{version}"))
                cur.execute(sql.load("control-schema-version-set"), {"version": version})
                log.info("control database schema pgupgrade migrated to version %s", version)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = True
    return current


def _version(conn: Any) -> int:
    if sql.scalar_named(conn, "control-schema-version") == 0:
        return 0
    return int(sql.scalar_named(conn, "control-schema-version-recorded"))


@dataclass
class ControlJournal(JournalReading):
    db: ControlDB
    dag_id: str
    run_id: str
    spool: Spool | None = None
    _outage_begun: bool = field(default=False, repr=False)
    _spool_unread: bool = field(default=True, repr=False)  # read the spool once, then only after spooling
    _memory: dict[str, Any] | None = field(default=None, repr=False)  # the run as of the outage's start, and since

    @property
    def location(self) -> str:
        return f"control database {self.db.where}, run {self.dag_id}/{self.run_id}"

    def _key(self, **more: Any) -> dict[str, Any]:
        return {"dag_id": self.dag_id, "run_id": self.run_id, **more}

    def _reconcile(self) -> None:
        """Moves spooled lines (written while the control database was away) into it, in their order."""
        if self.spool is None or not self._spool_unread:
            return
        lines = self.spool.lines()
        for line in lines:
            if line["kind"] == "event":
                self.db.rows("control-journal-insert", self._event_row(line["event_id"], line["event"], line, True))
            else:
                self.db.rows("control-document-save", self._key(name=line["name"], body=json.dumps(line["body"])))
        self._spool_unread = False
        if lines:
            log.warning(
                "journal: %d line(s) spooled on the database host reconciled into the control database", len(lines)
            )
            self.spool.clear()

    def _event_row(self, event_id: str, event: str, line: dict[str, Any], spooled: bool) -> dict[str, Any]:
        return self._key(
            event_id=event_id,
            event=event,
            at=line.get("at") if spooled else None,  # the control database's clock, unless it was away
            details=json.dumps(line.get("details", {}), default=str),
            spooled=spooled,
        )

    def _remember(self) -> None:
        """Reads the whole run (events and documents) into memory as the outage begins: while the control database
        is away, this process's steps still see what happened before, plus what they record themselves."""
        try:
            events = self._read_events()
            docs = {r["name"]: r["body"] for r in self.db.rows("control-documents-of-run", self._key())}
        except ControlUnreachable:
            return
        self._memory = {"events": events, "docs": docs}

    def _or_spool(self, line: dict[str, Any], write: Any) -> None:
        if line.get("event") == OUTAGE_BEGUN and self._memory is None:
            self._remember()
        try:
            self._reconcile()
            write()
        except ControlUnreachable as exc:
            if self.spool is None or not (self._outage_begun or line.get("event") == OUTAGE_BEGUN):
                raise
            log.error("%s; spooling to %s on the database host", exc, self.spool.path)
            self.spool.append(line)
            self._spool_unread = True
        if line.get("event") == OUTAGE_BEGUN:
            self._outage_begun = True
        if self._memory is not None:
            if line["kind"] == "event":
                self._memory["events"].append({"event": line["event"], "at": line["at"], **line["details"]})
            else:
                self._memory["docs"][line["name"]] = line["body"]

    def record(self, event: str, **details: Any) -> None:
        line: dict[str, Any] = {
            "kind": "event",
            "event_id": str(uuid.uuid4()),
            "event": event,
            "at": now_iso(),
            "details": details,
        }
        self._or_spool(
            line, lambda: self.db.rows("control-journal-insert", self._event_row(line["event_id"], event, line, False))
        )

    def save(self, name: str, data: Any) -> str:
        body = json.loads(json.dumps(data, default=str))
        line = {"kind": "document", "name": name, "body": body}
        self._or_spool(line, lambda: self.db.rows("control-document-save", self._key(name=name, body=json.dumps(body))))
        return f"{self.location}, document {name}"

    def _read_events(self) -> list[dict[str, Any]]:
        self._reconcile()
        return [
            {"event": r["event"], "at": r["at"], **(r["details"] or {}), **({"spooled": True} if r["spooled"] else {})}
            for r in self.db.rows("control-journal-events", self._key())
        ]

    def events(self) -> list[dict[str, Any]]:
        try:
            out = self._read_events()
            if self._memory is not None:
                self._memory["events"] = list(out)
        except ControlUnreachable:
            if self._memory is not None:  # this process saw the run as the outage began, and recorded since
                return list(self._memory["events"])
            if self.spool is None:
                raise
            out = [  # another process's view: what was spooled on the database host is all it can know
                {"event": x["event"], "at": x["at"], **x["details"]} for x in self.spool.lines() if x["kind"] == "event"
            ]
        if any(e["event"] == OUTAGE_BEGUN for e in out):
            self._outage_begun = True
        return out

    def load(self, name: str, default: Any = None) -> Any:
        try:
            rows = self.db.rows("control-document-load", self._key(name=name))
        except ControlUnreachable:
            if self._memory is None:
                raise
            return self._memory["docs"].get(name, default)
        return rows[0]["body"] if rows else default

    def has(self, name: str) -> bool:
        return self.load(name) is not None

    def exists(self) -> bool:
        return bool(self.db.rows("control-run-exists", self._key())[0]["exists"])


@dataclass
class ControlLock:
    db: ControlDB
    key: str
    store: ControlStore

    def holder(self) -> dict[str, Any] | None:
        rows = self.db.rows("control-lock-holder", {"key": self.key})
        if not rows:
            return None
        r = rows[0]
        out = {k: r[k] for k in ("key", "version", "dag_id", "run_id", "at", "since", "needs_attention", "age_s")}
        out["host"] = r["worker"]
        if r["heir_dag_id"]:
            out["heir"] = {"dag_id": r["heir_dag_id"], "run_id": r["heir_run_id"]}
        return out

    def acquire(self, dag_id: str, run_id: str, is_alive: IsAlive, *, heir_of: tuple[str, str] | None = None) -> str:
        me = {"key": self.key, "dag_id": dag_id, "run_id": run_id, "worker": socket.gethostname()}
        for _ in range(5):
            if self.db.rows("control-lock-take", me):
                return f"lock {self.key} acquired (control database {self.db.where})"
            current = self.holder()
            if current is None:
                continue  # released between the two statements
            verdict = judge(
                current,
                dag_id,
                run_id,
                heir_of,
                is_alive,
                self.store.run,
                f"delete its row: DELETE FROM pgupgrade.locks WHERE key = '{self.key}'",
            )
            moved = self.db.rows(
                "control-lock-replace", {**me, "version": current["version"], "keep_since": verdict.kind == "mine"}
            )
            if moved:
                return verdict.line
        raise LockHeld(f"could not acquire lock {self.key}: other runs kept changing it")

    def hand_over(self, dag_id: str, run_id: str, heir_dag_id: str, heir_run_id: str) -> None:
        self.db.rows(
            "control-lock-hand-over",
            {
                "key": self.key,
                "dag_id": dag_id,
                "run_id": run_id,
                "heir_dag_id": heir_dag_id,
                "heir_run_id": heir_run_id,
            },
        )

    def needs_attention(self, dag_id: str, run_id: str, reason: str) -> None:
        self.db.rows(
            "control-lock-needs-attention",
            {"key": self.key, "dag_id": dag_id, "run_id": run_id, "worker": socket.gethostname(), "reason": reason},
        )

    def release(self, dag_id: str, run_id: str) -> bool:
        return bool(self.db.rows("control-lock-release", {"key": self.key, "dag_id": dag_id, "run_id": run_id}))


_DBS: dict[str, ControlDB] = {}


@dataclass(frozen=True)
class ControlStore:
    """Run state in the control database; files that go with runs (backups) default to ``root`` on the
    database host."""

    conninfo: dict[str, Any]
    root: Path = field(default_factory=state_root)

    @property
    def db(self) -> ControlDB:
        ident = json.dumps(self.conninfo, sort_keys=True, default=str)
        if ident not in _DBS:
            _DBS[ident] = ControlDB(self.conninfo)
        return _DBS[ident]

    def run(self, dag_id: str, run_id: str, spool: Spool | None = None) -> ControlJournal:
        return ControlJournal(self.db, dag_id, run_id, spool)

    def cluster_lock(self, key: str) -> ControlLock:
        return ControlLock(self.db, key, self)

    def take_outage_slot(self, key: str, dag_id: str, run_id: str, slots: int) -> int | None:
        run = {"dag_id": dag_id, "run_id": run_id}
        for _ in range(slots + 1):
            mine = self.db.rows("control-slot-of-run", run)
            if mine:
                return int(mine[0]["slot"])
            if self.db.rows("control-slot-take", {**run, "key": key, "slots": slots}):
                continue  # read it back above
            if len(self.outage_slots()) >= slots:
                return None
        return None

    def release_outage_slot(self, dag_id: str, run_id: str) -> int | None:
        rows = self.db.rows("control-slot-release", {"dag_id": dag_id, "run_id": run_id})
        return int(rows[0]["slot"]) if rows else None

    def outage_slots(self) -> list[dict[str, Any]]:
        return self.db.rows("control-slot-holders", {})

    def keeps_state_on(self, system_identifier: str) -> bool:
        return str(self.db.rows("server-identity", {})[0]["system_identifier"]) == system_identifier
