"""Work-arounds for defects of the installed Airflow, each installed by ``install()`` (called from
``plugins/airflow_local_settings.py``, so every Airflow process has them) and each a no-op where the defect is
absent.

``airflow dags test`` / ``dag.test()`` of a DAG with ``deadline=`` (Airflow 3.3.2): ``dag.test`` builds its
scheduler-side copy of the DAG in-process (``deserialize_dag(serialize_dag(dag))``), so that copy's ``deadline``
holds the *encoded* alerts (dicts: name, reference, interval, callback). The copy the scheduler reads from the
metadata database holds the alerts' ids instead (``SerializedDagModel`` swaps them in when it writes the DAG).
When the run succeeds, ``DagRun.update_state`` looks each entry up with ``DeadlineAlert.get_by_id`` to decide
whether the run's pending deadlines can be pruned; given a dict it crashes (``'dict' object has no attribute
'hex'``) after the run was marked successful, and the CLI exits 1. No DAG-side construction avoids it: any
``DeadlineAlert`` serialises to that dict. ``get_by_id`` is wrapped so that an encoded alert is answered with an
unsaved ``DeadlineAlert`` row built from the encoding — the caller reads only its reference — while ids (the
scheduler's path, and ``dag.test`` once upstream hands it ids) go to the original unchanged.
"""

from __future__ import annotations

from typing import Any

_MARK = "_pgupgrade_accepts_encoded_alert"
_ENCODED = ("reference", "interval", "callback")


def encoded_alert(value: object) -> dict[str, Any] | None:
    """The encoded deadline alert (``encode_deadline_alert``'s dict, bare or wrapped in ``__var``) that value is,
    or None."""
    if not isinstance(value, dict):
        return None
    data = value.get("__var", value)
    if isinstance(data, dict) and all(key in data for key in _ENCODED):
        return data
    return None


def install() -> None:
    """Installs the work-arounds (idempotent)."""
    _deadline_alert_by_encoding()


def _deadline_alert_by_encoding() -> None:
    from airflow.models.deadline_alert import DeadlineAlert

    original = DeadlineAlert.get_by_id  # bound to DeadlineAlert; provide_session opens a session when none given
    if getattr(original, _MARK, False):
        return

    def get_by_id(cls: type[DeadlineAlert], /, deadline_alert_id: Any, **kwargs: Any) -> DeadlineAlert:
        data = encoded_alert(deadline_alert_id)
        if data is None:
            return original(deadline_alert_id, **kwargs)
        return cls(
            name=data.get("name"),
            reference=data["reference"],
            interval=data["interval"],
            callback_def=data["callback"],
        )

    setattr(get_by_id, _MARK, True)
    DeadlineAlert.get_by_id = classmethod(get_by_id)  # type: ignore[assignment, method-assign]
