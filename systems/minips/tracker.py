"""What a worker tracks about its requests in flight (ps-lite's ``Customer::tracker_``).

ps-lite records, per timestamp, how many replies a request expects and how many came
back, and ``Wait(ts)`` blocks until they match (``src/customer.cc``). A request here also
keeps what the paper's failure handling needs (section 4.5: a node "scans all outgoing
messages that have not received replies yet"): each slice still in flight (a
:class:`Pending`: which server, which key ranges, under which ring epoch), so a slice
whose server failed can be re-sliced with the new ring and resent, and why and how often
that happened.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.trace import now_us

from . import message as M
from .ring import Slice


@dataclass
class Request:
    ts: int
    op: str
    keys: np.ndarray | None
    vals: np.ndarray | None
    ranges: list[tuple[int, int]]
    clock: int | None = None
    wait: int | None = None
    cmd: str = "push"
    range_pull: bool = False
    push_wait: int | None = None
    out: np.ndarray | None = None
    parts: list = field(default_factory=list)
    pending: dict[int, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    error: M.PSError | None = None
    t0: float = field(default_factory=now_us)
    held_s: float = 0.0
    resends: int = 0
    first_failure: float | None = None
    stuck_since: float | None = None  # resending without a live server to wait on
    recovery_s: float = 0.0
    whys: list[str] = field(default_factory=list)  # why each slice was resent


@dataclass
class Pending:
    """One slice in flight: where it went, which ranges, with which ring epoch."""

    sid: int
    sl: Slice
    epoch: int
    future: Any = None
    sent_at: float = 0.0  # time.monotonic() when the future was made
