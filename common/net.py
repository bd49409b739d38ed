"""Network addresses, without importing grpc (the CLI builds URLs before any heavy
import)."""

from __future__ import annotations


def address(host: str, port: int | str) -> str:
    """``host:port`` for gRPC targets and URLs; an IPv6 literal goes in brackets
    (``[::1]:1337``, RFC 3986 section 3.2.2), since its own colons would be read as the
    port's."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
