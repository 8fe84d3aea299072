"""Run state: each run's journal and documents (plan, facts, manifests, reports) and the per-cluster lock.

Every destructive step writes a journal event *before* it acts, so a rollback (or a re-run after a worker
crash) reads what may have happened from the store instead of trusting the trigger conf.

The seam: ``RunStore`` (a run's ``RunJournal``, a cluster's ``Lock``, the outage slots). Two implementations:
``control.ControlStore``, a PostgreSQL control database every Airflow process reaches (any executor, any worker),
and ``FileRunStore``, a directory (``PGUPGRADE_STATE_DIR``) for a single-machine deployment where every Airflow
process shares one disk (LocalExecutor). ``judge`` is the one rule for a lock held by another run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pgupgrade.errors import LockHeld, UnsafeState

if TYPE_CHECKING:
    from pgupgrade.state.spool import Spool

DEFAULT_STATE_DIR = "/var/lib/pgupgrade"


def state_root() -> Path:
    return Path(os.environ.get("PGUPGRADE_STATE_DIR", DEFAULT_STATE_DIR))


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def safe_name(text: str) -> str:
    """A file-name-safe, collision-resistant form of a run id or cluster key."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80]
    return f"{clean}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def first_where(journal: RunJournal, event: str, **match: Any) -> dict[str, Any] | None:
    """The first ``event`` of the journal whose fields include ``match`` (e.g. one standby's by its name)."""
    return next((e for e in journal.events() if e["event"] == event and match.items() <= e.items()), None)


class RunJournal(Protocol):
    """One run's journal (events, each recorded before the step it records acts) and its named documents."""

    @property
    def dag_id(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def location(self) -> str: ...
    def exists(self) -> bool: ...
    def save(self, name: str, data: Any) -> object: ...
    def load(self, name: str, default: Any = None) -> Any: ...
    def has(self, name: str) -> bool: ...
    def record(self, event: str, **details: Any) -> None: ...
    def events(self) -> list[dict[str, Any]]: ...
    def side_effects(self) -> list[dict[str, Any]]: ...
    def happened(self, event: str) -> bool: ...
    def first(self, event: str) -> dict[str, Any] | None: ...
    def refuse_if(self, event: str, why: str) -> None: ...


IsAlive = Callable[[str, str], bool]


class Lock(Protocol):
    """The per-cluster lock: taken by one run, handed over to its rollback, stale when both ended, kept with
    "needs attention" after a failed rollback. Each transition is one atomic step of the store."""

    @property
    def key(self) -> str: ...
    def holder(self) -> dict[str, Any] | None: ...
    def acquire(
        self, dag_id: str, run_id: str, is_alive: IsAlive, *, heir_of: tuple[str, str] | None = None
    ) -> str: ...
    def hand_over(self, dag_id: str, run_id: str, heir_dag_id: str, heir_run_id: str) -> None: ...
    def needs_attention(self, dag_id: str, run_id: str, reason: str) -> None: ...
    def release(self, dag_id: str, run_id: str) -> bool: ...


class RunStore(Protocol):
    """Where runs keep their state; every Airflow process that acts for a run must reach the same store."""

    @property
    def root(self) -> Path:
        """Where files that go with runs live by default (backups, reports)."""
        ...

    def run(self, dag_id: str, run_id: str, spool: Spool | None = None) -> RunJournal:
        """A run's journal; ``spool`` (on the database host) keeps what cannot reach the store once the outage
        has begun, where the store can be unreachable (the control database)."""
        ...

    def cluster_lock(self, key: str) -> Lock:
        """The lock of the cluster whose key is ``key`` (``identity.ClusterIdentity.key``)."""
        ...

    def take_outage_slot(self, key: str, dag_id: str, run_id: str, slots: int) -> int | None:
        """One of ``slots`` outage slots for this run (the same one again if it has one), or None when all are
        taken. Two contenders never get the same slot."""
        ...

    def release_outage_slot(self, dag_id: str, run_id: str) -> int | None: ...
    def outage_slots(self) -> list[dict[str, Any]]: ...
    def keeps_state_on(self, system_identifier: str) -> bool:
        """Whether this store lives in the cluster with that system identifier (which must then not be upgraded)."""
        ...


class JournalReading:
    """What a journal answers from its events, whichever store keeps them."""

    def events(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    @property
    def location(self) -> str:
        raise NotImplementedError

    def side_effects(self) -> list[dict[str, Any]]:
        """Journal events that record a change (every destructive step journals before it acts)."""
        return [e for e in self.events() if e["event"] != "step" and not e["event"].startswith("sensor_started:")]

    def happened(self, event: str) -> bool:
        return any(e["event"] == event for e in self.events())

    def first(self, event: str) -> dict[str, Any] | None:
        return next((e for e in self.events() if e["event"] == event), None)

    def refuse_if(self, event: str, why: str) -> None:
        """Destructive steps refuse to run twice on a half-built state."""
        if self.happened(event):
            raise UnsafeState(f"{why} (journal {self.location} already has '{event}')")


@dataclass(frozen=True)
class FileRunStore:
    """Run state as files under one directory: ``runs/<dag>/<run>/`` and ``locks/``."""

    root: Path

    def run(self, dag_id: str, run_id: str, spool: Spool | None = None) -> RunState:
        return RunState.for_run(dag_id, run_id, self.root)  # one disk: nothing to spool

    def cluster_lock(self, key: str) -> ClusterLock:
        return ClusterLock(key, self.root)

    def _slot(self, n: int) -> Path:
        return self.root / "outage-slots" / f"{n}.json"

    def take_outage_slot(self, key: str, dag_id: str, run_id: str, slots: int) -> int | None:
        mine = next((s["slot"] for s in self.outage_slots() if (s["dag_id"], s["run_id"]) == (dag_id, run_id)), None)
        if mine is not None:
            return int(mine)
        self._slot(0).parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, slots + 1):
            try:
                fd = os.open(self._slot(n), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump({"slot": n, "key": key, "dag_id": dag_id, "run_id": run_id, "at": now_iso()}, fh)
            return n
        return None

    def release_outage_slot(self, dag_id: str, run_id: str) -> int | None:
        for s in self.outage_slots():
            if (s["dag_id"], s["run_id"]) == (dag_id, run_id):
                self._slot(int(s["slot"])).unlink(missing_ok=True)
                return int(s["slot"])
        return None

    def keeps_state_on(self, system_identifier: str) -> bool:
        return False

    def outage_slots(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted((self.root / "outage-slots").glob("*.json")):
            try:
                out.append(read_json(path))
            except (FileNotFoundError, json.JSONDecodeError):  # released, or being written, this instant
                continue
        return sorted(out, key=lambda s: int(s["slot"]))


def store() -> RunStore:
    """The file store under ``PGUPGRADE_STATE_DIR``: the default outside Airflow (the Airflow adapter chooses
    the control database when one is configured: ``pgupgrade.airflow.store``)."""
    return FileRunStore(state_root())


@dataclass(frozen=True)
class RunState(JournalReading):
    """The directory of one DAG run: ``<state>/runs/<dag_id>/<run_id>/``."""

    dag_id: str
    run_id: str
    root: Path

    @classmethod
    def for_run(cls, dag_id: str, run_id: str, root: Path | None = None) -> RunState:
        return cls(dag_id, run_id, root or state_root())

    @property
    def dir(self) -> Path:
        return self.root / "runs" / safe_name(self.dag_id) / safe_name(self.run_id)

    @property
    def location(self) -> str:
        return str(self.dir)

    def exists(self) -> bool:
        return self.dir.exists()

    def path(self, name: str) -> Path:
        return self.dir / name

    def save(self, name: str, data: Any) -> Path:
        path = self.path(f"{name}.json")
        write_json(path, data)
        return path

    def load(self, name: str, default: Any = None) -> Any:
        path = self.path(f"{name}.json")
        return read_json(path) if path.exists() else default

    def has(self, name: str) -> bool:
        return self.path(f"{name}.json").exists()

    # -- journal ------------------------------------------------------------------------------------
    def record(self, event: str, **details: Any) -> None:
        """Appends one event (fsync'd) to the journal."""
        self.dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"event": event, "at": now_iso(), **details}, default=str)
        with open(self.path("journal.jsonl"), "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def events(self) -> list[dict[str, Any]]:
        path = self.path("journal.jsonl")
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Journal events that change nothing in the cluster: a run that crashed after only these left nothing to undo.
HARMLESS = frozenset({"backup_started"})


@dataclass(frozen=True)
class Verdict:
    """What a contender may do with a lock someone holds: ``mine`` (this run or its heir holds it), ``heir``
    (this run cleans up after the holder), ``stale`` (every owner finished cleanly); ``line`` is for the log."""

    kind: str
    line: str


def judge(
    current: dict[str, Any],
    dag_id: str,
    run_id: str,
    heir_of: tuple[str, str] | None,
    is_alive: IsAlive,
    journal_of: Callable[[str, str], RunJournal],
    how_to_clear: str,
) -> Verdict:
    """The one rule for a held lock, whatever store keeps it. Raises LockHeld when the contender must wait or a
    person must look: the lock needs attention, an owner run is alive, or an owner ended after changing the cluster
    without releasing it (it crashed mid-way: its rollback must run first)."""
    key = current["key"]
    if current.get("needs_attention"):
        raise LockHeld(
            f"cluster {key} needs attention: {current['needs_attention']} (run "
            f"{current['dag_id']}/{current['run_id']}); check the cluster by hand, then {how_to_clear}"
        )
    owners = [(current["dag_id"], current["run_id"])]
    if current.get("heir"):
        owners.append((current["heir"]["dag_id"], current["heir"]["run_id"]))
    if (dag_id, run_id) in owners:
        return Verdict("mine", f"lock {key} already held by this run")
    if heir_of and heir_of == owners[0]:
        return Verdict("heir", f"lock {key} taken over from {heir_of[0]}/{heir_of[1]} (this run cleans up after it)")
    alive = [o for o in owners if is_alive(*o)]
    if alive:
        raise LockHeld(
            f"cluster {key} is locked by {alive[0][0]} run {alive[0][1]!r} since {current['at']}; "
            "wait for it to finish (or for its rollback)"
        )
    for owner_dag, owner_run in owners:
        changes = [e for e in journal_of(owner_dag, owner_run).side_effects() if e["event"] not in HARMLESS]
        if changes:
            last = changes[-1]
            raise LockHeld(
                f"cluster {key} is locked by {owner_dag} run {owner_run!r}, which ended without releasing the lock "
                f"after changing the cluster (last recorded: {last['event']} at {last['at']}): it crashed mid-way. "
                f"Run its rollback DAG with upgrade_run_id={owner_run!r} (it takes the lock over), or check the "
                f"cluster by hand and {how_to_clear}"
            )
    return Verdict("stale", f"lock {key} was left by finished run {owners[-1][0]}/{owners[-1][1]}; taken over")


@dataclass(frozen=True)
class ClusterLock:
    """One lock per cluster (host + data directory), whatever DAG asks; a file outside the cluster so it
    survives the cluster being stopped or rebuilt.

    A holder may hand the lock over to the run that cleans up after it (the rollback run). A lock whose
    holder and heir runs are both finished is stale and is taken over, with a log line saying so.
    """

    key: str
    root: Path

    @classmethod
    def for_cluster(cls, host: str, datadir: str, root: Path | None = None) -> ClusterLock:
        return cls(f"{host}:{datadir}", root or state_root())

    @property
    def path(self) -> Path:
        return self.root / "locks" / f"{safe_name(self.key)}.json"

    def holder(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = read_json(self.path)
            return data
        except FileNotFoundError:
            return None

    def acquire(self, dag_id: str, run_id: str, is_alive: IsAlive, *, heir_of: tuple[str, str] | None = None) -> str:
        """Takes the lock for (dag_id, run_id). Returns a line for the log. Raises LockHeld."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"dag_id": dag_id, "run_id": run_id, "host": socket.gethostname(), "at": now_iso(), "key": self.key}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                fd = -1
            if fd < 0:
                current = self.holder()
                if current is None:
                    continue
                verdict = judge(
                    current, dag_id, run_id, heir_of, is_alive, FileRunStore(self.root).run, f"delete {self.path}"
                )
                if verdict.kind == "mine":
                    write_json(self.path, {**me, "since": current.get("at")})
                else:
                    os.replace(self._write_tmp(me), self.path)
                return verdict.line
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            return f"lock {self.key} acquired"
        raise LockHeld(f"could not acquire lock {self.key}")

    def _write_tmp(self, data: dict[str, Any]) -> Path:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        return tmp

    def hand_over(self, dag_id: str, run_id: str, heir_dag_id: str, heir_run_id: str) -> None:
        current = self.holder()
        if current and (current["dag_id"], current["run_id"]) == (dag_id, run_id):
            write_json(self.path, {**current, "heir": {"dag_id": heir_dag_id, "run_id": heir_run_id}})

    def needs_attention(self, dag_id: str, run_id: str, reason: str) -> None:
        """Keeps the lock after a failed rollback: no run may touch the cluster until a person looked."""
        current = self.holder() or {"dag_id": dag_id, "run_id": run_id, "at": now_iso(), "key": self.key}
        write_json(self.path, {**current, "needs_attention": reason})

    def release(self, dag_id: str, run_id: str) -> bool:
        current = self.holder()
        if current and (current["dag_id"], current["run_id"]) == (dag_id, run_id):
            self.path.unlink()
            return True
        return False
