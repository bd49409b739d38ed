"""What a management request must be before the API acts on it.

Every endpoint of :mod:`.management` checks its JSON body with :func:`check_fields`
(exactly its documented fields, of their types: a stray ``"model_bytes"`` or
``"pickle"`` field is a 400, not ignored), names with :func:`check_name` (DNS-1123
labels, as ``clipper_admin``'s ``_validate_versioned_model_name``, which also keeps
them safe as URL and path components), and the request itself with
:func:`cross_site` (no web page may drive a Clipper on the user's machine).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from aiohttp import web

NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")  # at most 63 characters
MAX_SLO_MICROS = 3600 * 10**6  # an hour: more is no latency objective (and 10**400 overflows)
MAX_INPUT_LENGTH = 1 << 26  # 64M numbers (256 MB of float32) per input: more is a typo
MAX_SLOWDOWN = 1000.0  # container_control: a slow-down factor past this is a hang


class BadRequest(ValueError):
    """A management request that does not fit its endpoint (HTTP 400)."""


def check_fields(doc: Any, required: dict[str, type | tuple],
                 optional: dict[str, type | tuple], where: str) -> dict[str, Any]:
    """``doc`` itself if it is a JSON object with every ``required`` field, nothing but
    those and the ``optional`` ones, each of its type (``object``: any; a bool is not
    an int); else :class:`BadRequest` naming the endpoint (``where``) and the field.
    Clipper's management frontend checks each request against a JSON schema the same
    way (``management_frontend.hpp``'s ``*_JSON_SCHEMA``)."""
    if not isinstance(doc, dict):
        raise BadRequest(f"{where} takes a JSON object, got {type(doc).__name__}")
    unknown = set(doc) - set(required) - set(optional)
    if unknown:
        raise BadRequest(f"{where}: unexpected field(s) {sorted(unknown)}; it accepts "
                         f"{sorted(required)} and optionally {sorted(optional)} (models are "
                         f"deployed from a path on the server's disk, never as bytes)")
    for k, kind in {**required, **optional}.items():
        if k not in doc:
            if k in required:
                raise BadRequest(f"{where}: missing field {k!r}")
            continue
        kinds = kind if isinstance(kind, tuple) else (kind,)
        v = doc[k]
        if object not in kinds and (not isinstance(v, kinds)
                                    or isinstance(v, bool) and bool not in kinds):
            raise BadRequest(f"{where}: field {k!r} should be "
                             f"{' or '.join(t.__name__ for t in kinds)}, got {type(v).__name__}")
    return doc


def check_name(value: str, what: str) -> str:
    """``value`` if it is a DNS-1123 label, else :class:`BadRequest` saying ``what`` it
    names (``clipper_admin`` holds model names and versions to that pattern; we hold
    every name to it, with its 63-character limit)."""
    if not NAME.match(value):
        raise BadRequest(f"{what} {value[:70]!r} must be a DNS-1123 label: at most 63 "
                         f"lower-case letters, digits and '-', starting and ending with a "
                         f"letter or digit")
    return value


class ReplicaFailure(RuntimeError):
    """A management operation that left the model with fewer replicas than asked."""


def host_name(host: str) -> str:
    """The name in a Host header: ``name:port``, ``name``, ``[v6]:port``."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def cross_site(request: web.Request, bind_host: str) -> tuple[int, str] | None:
    """(status, why) if a management call must be refused, else None. Binding loopback
    does not stop a web page in the user's own browser from POSTing here; a browser can
    send ``text/plain`` across sites without asking, but not ``application/json`` (that
    needs a CORS preflight, which we never answer), and it always names the Origin.

    Comparing the Origin with the Host is not enough by itself: a page's own domain
    can be re-bound to 127.0.0.1 (DNS rebinding), and then Origin and Host agree. So
    the Host must name this server the way no web page's domain can: an IP address,
    ``localhost``, or the name it was started with (``--host``)."""
    name = host_name(request.host or "")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        if name not in ("localhost", bind_host):
            return 403, (f"management call addressed to Host {request.host!r}; address "
                         f"this server by IP, as localhost or as {bind_host!r} (a web "
                         f"page's domain can be re-bound to this machine)")
    origin = request.headers.get("Origin")
    if origin is not None and origin.split("://")[-1] != request.host:
        return 403, f"cross-origin management call from Origin {origin!r}"
    if request.content_length and request.content_type != "application/json":
        return 415, (f"management calls take Content-Type application/json, got "
                     f"{request.content_type!r}")
    return None
