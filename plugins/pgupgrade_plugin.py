"""Registers pgupgrade's custom timetable so DAGs using it serialize (Airflow looks custom timetables up in the
plugins' ``timetables`` lists). Nothing else happens at import."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from pgupgrade.airflow.windows import MaintenanceWindowTimetable


class PgUpgradePlugin(AirflowPlugin):
    name = "pgupgrade"
    timetables = [MaintenanceWindowTimetable]  # noqa: RUF012 (AirflowPlugin declares it as a class attribute)
