"""Journal lines kept on the database host while the control database cannot be reached (see ``control``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from pgupgrade.commands import Host
from pgupgrade.state import safe_name


@dataclass(frozen=True)
class Spool:
    """A run's journal lines kept on the database host while the control database cannot be reached."""

    host: Host
    user: str
    path: str

    @classmethod
    def beside(cls, host: Host, user: str, datadir: str, dag_id: str, run_id: str) -> Spool:
        where = os.path.join(os.path.dirname(datadir.rstrip("/")) or "/", "pgupgrade-spool")
        return cls(host, user, f"{where}/{safe_name(dag_id)}--{safe_name(run_id)}.jsonl")

    def append(self, line: dict[str, Any]) -> None:
        self.host.run(["mkdir", "-p", "-m", "0700", os.path.dirname(self.path)], user=self.user)
        self.host.run(["tee", "-a", self.path], user=self.user, stdin=json.dumps(line, default=str) + "\n")
        self.host.run(["sync", self.path], user=self.user)

    def lines(self) -> list[dict[str, Any]]:
        res = self.host.run(["cat", self.path], user=self.user, check=False)
        return [json.loads(x) for x in res.stdout.splitlines() if x.strip()] if res.exit_code == 0 else []

    def clear(self) -> None:
        self.host.run(["rm", "-f", "--", self.path], user=self.user)
