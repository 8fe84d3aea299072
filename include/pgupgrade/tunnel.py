"""Reaching a server that listens only on the database host's loopback, from the worker.

A private server (not yet open to clients) on a remote host listens on its Unix socket directory and on
127.0.0.1 at a port of its own *on the database host*; the worker connects to a local port that forwards each
connection through the SSH connection of the host runner (an SSH ``direct-tcpip`` channel to that loopback
port). Nothing listens on a routable address; on the worker only this process's loopback listener exists, for
the life of the task. With the worker on the database host (``LocalHost``) nothing is forwarded.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from typing import Any

from pgupgrade.commands import Host, SSHHost

log = logging.getLogger(__name__)

# (id of the SSH transport, remote port) -> (the transport, the worker-side address); entries of a transport
# that is no longer active are dropped before a new forward is made (its id may be reused by a new transport)
_FORWARDS: dict[tuple[int, int], tuple[Any, tuple[str, int]]] = {}
_LOCK = threading.Lock()


def remote(host: Host) -> bool:
    return isinstance(host, SSHHost)


def forward(host: Host, port: int) -> tuple[str, int] | None:
    """The worker-side address of ``127.0.0.1:port`` on the database host; None when the worker is that host."""
    if not isinstance(host, SSHHost):
        return None
    transport = host.client.get_transport()
    if transport is None or not transport.is_active():
        host.run(["true"])  # reconnects a dropped link (SSHHost does that before a command)
        transport = host.client.get_transport()
    key = (id(transport), port)
    with _LOCK:
        for stale in [k for k, (t, _) in _FORWARDS.items() if not t.is_active()]:
            del _FORWARDS[stale]  # its listener closes itself (_accept)
        if key not in _FORWARDS or _FORWARDS[key][0] is not transport:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            listener.listen(16)
            listener.settimeout(1.0)  # notices a dead transport without waiting for a connection
            _FORWARDS[key] = (transport, ("127.0.0.1", int(listener.getsockname()[1])))
            threading.Thread(
                target=_accept, args=(listener, transport, port), name=f"tunnel-{port}", daemon=True
            ).start()
            log.info("loopback port %s on %s reached at %s:%s", port, host.name, *_FORWARDS[key][1])
        return _FORWARDS[key][1]


def _accept(listener: socket.socket, transport: Any, port: int) -> None:
    while transport.is_active():
        try:
            conn, peer = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            break
        conn.settimeout(None)
        try:
            chan = transport.open_channel("direct-tcpip", ("127.0.0.1", port), peer, timeout=30)
        except Exception as exc:  # paramiko's ChannelException / SSHException: the client sees its connection close
            log.warning("forwarding to 127.0.0.1:%s on the database host failed: %s", port, exc)
            conn.close()
            continue
        threading.Thread(target=_pump, args=(conn, chan), daemon=True).start()
    listener.close()


def _pump(conn: socket.socket, chan: Any) -> None:
    try:
        while True:
            ready, _, _ = select.select([conn, chan], [], [], 300)
            if conn in ready:
                data = conn.recv(65536)
                if not data:
                    break
                chan.sendall(data)
            if chan in ready:
                data = chan.recv(65536)
                if not data:
                    break
                conn.sendall(data)
    except OSError:
        pass
    finally:
        chan.close()
        conn.close()
