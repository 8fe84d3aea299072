"""A worker process for the fault matrix: runs one DAG run with dag.test (so that it can be SIGKILLed).

python tests/reliability/fault_driver.py <dag_id> '<conf as JSON>'
"""

from __future__ import annotations

import json
import sys

import fault_matrix  # noqa: F401  (paths and environment as the parent has them)

from airflow_helpers import run

if __name__ == "__main__":
    dr, states = run(sys.argv[1], json.loads(sys.argv[2]))
    print(json.dumps({"run_id": dr.run_id, "state": str(dr.state), "tasks": states}))
