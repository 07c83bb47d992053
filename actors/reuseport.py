"""Sockets that share one port between processes: SO_REUSEPORT (Linux, the BSDs).

With ``--workers N`` every worker binds its own listening socket on the same address with
SO_REUSEPORT set, and the kernel spreads new connections over the listening sockets (by a
hash of the connection's addresses). The parent binds the address first, without listening:
that chooses the port for ``--port 0`` and keeps it reserved while workers come and go, and a
socket that does not listen is given no connections.
"""

from __future__ import annotations

import socket

import trio

from quiesce.core.errors import QuiesceError

__all__ = ["ReusePortError", "bind_shared", "open_shared_listeners"]

# The listen backlog asked for (trio's default; the kernel caps it at net.core.somaxconn).
BACKLOG = 0xFFFF


class ReusePortError(QuiesceError):
    """The address cannot be bound for sharing (no SO_REUSEPORT here, or the port is taken)."""


def bind_shared(host: str, port: int) -> list[socket.socket]:
    """Bind every address of ``host`` on ``port`` with SO_REUSEPORT set; listen on none.

    Port 0 picks a free port on the first address and uses it for the others, so the caller
    learns the one port from ``sockets[0].getsockname()[1]``. Blocking (a name lookup): call
    it at start-up.

    Returns:
        The bound sockets; the caller closes them.

    Raises:
        ReusePortError: the platform has no SO_REUSEPORT, or an address cannot be bound.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ReusePortError("--workers needs SO_REUSEPORT, which this platform lacks")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ReusePortError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(
                (i[0], i[1], i[2], i[3], i[4]) for i in infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # As trio.open_tcp_listeners: one socket per family, never a dual-stack one.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if sockets[0] is not sock:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ReusePortError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sockets


def open_shared_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Listening sockets on ``host``:``port`` shared with the other workers (SO_REUSEPORT).

    Raises:
        ReusePortError: as `bind_shared`, or ``listen`` failed.
    """
    sockets = bind_shared(host, port)
    try:
        for sock in sockets:
            sock.listen(BACKLOG)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ReusePortError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in sockets]
