"""From Airflow's task context to the library's: the trigger form of a field list, the validated params, the
RunContext a step runs with, admin configuration read from Variables."""

from __future__ import annotations

import json
import logging
import types
from collections.abc import Callable
from typing import Any

from airflow.sdk import Param, get_current_context

from pgupgrade import profiles
from pgupgrade.airflow.connections import cluster_from_conn_id, host_for
from pgupgrade.airflow.store import run_store
from pgupgrade.cluster import Cluster
from pgupgrade.commands import Host
from pgupgrade.context import RunContext, journal
from pgupgrade.errors import ConfigError
from pgupgrade.params import Field, validate

log = logging.getLogger(__name__)


def _twin(param: Param, memo: dict[int, Any] | None = None) -> Param:
    twin = object.__new__(Param)
    twin.__dict__.update(param.__dict__)
    twin.__deepcopy__ = types.MethodType(_twin, twin)  # type: ignore[attr-defined]
    return twin


def shared_on_copy(param: Param) -> Param:
    """The Param, whose deep copies share its (never mutated) schema and description: Airflow deep-copies the
    DAG's params into every operator it builds, and that copy was most of the DAG files' parse time. Each copy
    still has its own value (``resolve`` sets it). The class stays ``Param`` (DAG serialization accepts no
    other): ``copy.deepcopy`` looks ``__deepcopy__`` up on the instance."""
    param.__deepcopy__ = types.MethodType(_twin, param)  # type: ignore[attr-defined]
    return param


def airflow_params(fields: list[Field]) -> dict[str, Param]:
    """The trigger form: JSON-schema types, enums, titles, descriptions, sections, valid defaults."""
    out = {}
    for f in fields:
        # an optional text field (default "") must be submittable empty from the trigger form: allow null
        schema: dict[str, Any] = {"type": ["null", "string"] if f.type == "string" and f.default == "" else f.type}
        if f.enum:
            schema["enum"] = list(f.enum)
        if f.minimum is not None:
            schema["minimum"] = f.minimum
        if f.maximum is not None:
            schema["maximum"] = f.maximum
        if f.type == "array":
            schema["items"] = {"type": "string"}
        out[f.name] = shared_on_copy(
            Param(f.default, title=f.title, description=f.description, section=f.section, **schema)
        )
    return out


def _conf_and_params(fields: list[Field]) -> tuple[dict[str, Any], dict[str, Any]]:
    ctx = get_current_context()
    conf = dict(getattr(ctx.get("dag_run"), "conf", None) or {})
    params = {f.name: ctx["params"].get(f.name, f.default) for f in fields}
    return conf, params


def validated(fields: list[Field], extra_check: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """Validates the trigger conf (unknown keys included) and the resolved params."""
    conf, params = _conf_and_params(fields)
    validate(fields, conf)  # unknown keys and bad values as the user typed them
    clean = validate(fields, params)
    if extra_check:
        extra_check(clean)
    return clean


def run_context(
    fields: list[Field],
    spec: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    state_of: tuple[str, str] | None = None,
) -> RunContext:
    ctx = get_current_context()
    clean = params if params is not None else validated(fields)
    cluster = cluster_from_conn_id(clean["postgres_conn_id"])
    dag_id, run_id = state_of or (ctx["dag"].dag_id, ctx["run_id"])
    store = run_store()
    host = host_for(cluster)
    return RunContext(
        dag_id=dag_id,
        run_id=run_id,
        params=clean,
        cluster=cluster,
        host=host,
        state=journal(store, host, cluster, dag_id, run_id),
        profile=profiles.get(clean.get("extension_profile", "pg_tviews")),
        spec=spec or {},
        store=store,
        resolve=_standby,
    )


def _standby(conn_id: str) -> tuple[Cluster, Host]:
    standby = cluster_from_conn_id(conn_id)
    return standby, host_for(standby)


def admin_json_variable(name: str) -> Any:
    """An admin-set Airflow Variable holding JSON, or None when unset: configuration that no trigger conf can
    change (e.g. the argv of an install command)."""
    from airflow.sdk import Variable

    try:
        raw = Variable.get(name, default=None)
    except Exception as exc:  # the SDK raises its own error types when the API cannot answer
        raise ConfigError(f"Variable {name}", f"cannot be read: {exc}") from None
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"Variable {name}", f"is not valid JSON: {exc}") from None
