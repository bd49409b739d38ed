"""Network addresses, without importing grpc (the CLI builds URLs before any heavy
import), and whether this machine can listen on one."""

from __future__ import annotations


def address(host: str, port: int | str) -> str:
    """``host:port`` for gRPC targets and URLs; an IPv6 literal goes in brackets
    (``[::1]:1337``, RFC 3986 section 3.2.2), since its own colons would be read as the
    port's."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def check_host(host: str, flag: str = "--host") -> None:
    """Raise ValueError in one line unless this machine can listen on ``host``: checked
    before a server process is started, whose own failure would be a child's traceback
    in a log (an address of another machine, a name that does not resolve, nothing)."""
    import socket

    if not host:
        raise ValueError(f"{flag} is empty: give an address of this machine (127.0.0.1, "
                         f"::1, or 0.0.0.0 for every interface)")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), 0, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(f"{flag} {host!r}: cannot resolve it ({e})") from None
    why = None
    for family, kind, proto, _, addr in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.bind(addr)  # port 0: any free one; nothing listens, the socket closes
            return
        except OSError as e:
            why = e.strerror or str(e)
    raise ValueError(f"{flag} {host!r} is not an address of this machine ({why})")
