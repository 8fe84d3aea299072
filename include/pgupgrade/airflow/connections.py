"""Clusters and hosts from Airflow connections."""

from __future__ import annotations

from pgupgrade.cluster import Cluster
from pgupgrade.commands import Host, LocalHost, SSHHost
from pgupgrade.errors import ConfigError


def cluster_from_conn_id(conn_id: str) -> Cluster:
    from airflow.sdk import Connection

    try:
        conn = Connection.get(conn_id)
    except Exception as exc:  # the SDK raises its own not-found error types
        raise ConfigError("postgres_conn_id", f"no Airflow connection {conn_id!r}: {exc}") from None
    if conn.conn_type not in ("postgres", "postgresql"):
        raise ConfigError("postgres_conn_id", f"connection {conn_id!r} has type {conn.conn_type!r}, not postgres")
    return Cluster.from_connection(
        conn_id,
        host=conn.host,
        port=conn.port,
        schema=conn.schema,
        login=conn.login,
        password=conn.password,
        extra=conn.extra_dejson,
    )


def host_for(cluster: Cluster) -> Host:
    """The worker itself, or the database host over the cluster's SSH connection."""
    host: Host
    if not cluster.ssh_conn_id:
        host = LocalHost()
    else:
        from airflow.providers.ssh.hooks.ssh import SSHHook

        where = f"{cluster.name}.extra.ssh_conn_id"
        try:
            hook = SSHHook(ssh_conn_id=cluster.ssh_conn_id, cmd_timeout=None)
        except Exception as exc:  # the SDK's not-found error types
            raise ConfigError(where, f"no Airflow SSH connection {cluster.ssh_conn_id!r}: {exc}") from None
        try:
            client = hook.get_conn()
        except Exception as exc:  # paramiko: authentication refused, host unreachable, bad key file
            raise ConfigError(
                where,
                f"cannot log in to {hook.remote_host}:{hook.port} as {hook.username!r} with connection "
                f"{cluster.ssh_conn_id!r}: {type(exc).__name__}: {exc}",
            ) from None
        host = SSHHost(
            client=client,
            name=f"{hook.remote_host}:{hook.port}",
            conn_id=cluster.ssh_conn_id,
            connect=hook.get_conn,  # a new client when the link was found dead (the hook reconnects)
        )
    host.redactor.add(cluster.password)
    return host
