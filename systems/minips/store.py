"""A server's (key, value) store: sorted keys, and value and state rows beside them.

The paper treats the model as sparse (key, value) *vectors* (section 3.1) and keeps them
in key order, so that a key range is a contiguous slice (section 4.1). ps-lite's example
handle uses a hash map (``std::unordered_map<Key, Val>`` in ``kv_app.h``); a Python
hash map costs a dictionary lookup per key, so we keep three parallel numpy arrays:

* ``keys``: sorted unique uint64;
* ``vals``: float32 ``(n, val_len)``, the parameters;
* ``state``: float32 ``(n, val_len)``, one slot of optimiser state per parameter.

A request's sorted keys are found with one ``searchsorted``; when they are a
contiguous run of the stored keys (a dense model, a repeated batch) the lookup is a
slice, so the update works in place without gathering. Keys never pushed read as zero
(ps-lite's default too); a push of a new key inserts it (a merge of two sorted arrays).
The store holds everything a server keeps, as master and as replica: which ranges it
keeps is the ring's business, not the store's.
"""

from __future__ import annotations

import numpy as np

from .message import KEY_DTYPE, VAL_DTYPE
from .ring import positions


class KVStore:
    def __init__(self, val_len: int = 1):
        self.val_len = val_len
        self.keys = np.zeros(0, KEY_DTYPE)
        self.vals = np.zeros((0, val_len), VAL_DTYPE)
        self.state = np.zeros((0, val_len), VAL_DTYPE)

    def __len__(self) -> int:
        return self.keys.size

    def _find(self, keys: np.ndarray) -> slice | np.ndarray | None:
        """Rows of ``keys`` if all are stored (a slice for a contiguous run), else None.

        ``keys`` are sorted and unique, as every request's are (``message.check_keys``),
        and so are the stored keys. Then m stored keys that start and end where a dense
        request of m keys does are that request: no element-by-element comparison is
        needed (it cost about 1 ms of a 1M-key push on the development VM)."""
        m = keys.size
        if m == 0:
            return slice(0, 0)
        i = int(np.searchsorted(self.keys, keys[0]))
        if (i + m <= self.keys.size and self.keys[i] == keys[0]
                and self.keys[i + m - 1] == keys[-1]
                and (int(keys[-1]) - int(keys[0]) == m - 1
                     or np.array_equal(self.keys[i:i + m], keys))):
            return slice(i, i + m)
        idx, found = self._lookup(keys)
        return idx if found.all() else None

    def _lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each key is or would go among the stored keys, and whether it is there."""
        idx = np.searchsorted(self.keys, keys)
        found = idx < self.keys.size
        found[found] = self.keys[idx[found]] == keys[found]
        return idx, found

    def _insert(self, keys: np.ndarray) -> None:
        """Add the keys that are not stored yet, with zero values and state."""
        new = np.setdiff1d(keys, self.keys, assume_unique=True)  # in the order of keys
        if new.size == 0:
            return
        new.sort()  # the store must stay sorted whatever order the keys came in
        at = np.searchsorted(self.keys, new)
        self.keys = np.insert(self.keys, at, new)
        zeros = np.zeros((new.size, self.val_len), VAL_DTYPE)
        self.vals = np.insert(self.vals, at, zeros, axis=0)
        self.state = np.insert(self.state, at, zeros, axis=0)

    def rows(self, keys: np.ndarray) -> slice | np.ndarray:
        """Rows of ``keys``, inserting missing ones."""
        r = self._find(keys)
        if r is None:
            self._insert(keys)
            r = self._find(keys)
        return r

    def get(self, keys: np.ndarray) -> np.ndarray:
        """Values of ``keys``, ``(n, val_len)``; keys never pushed read as zeros."""
        r = self._find(keys)
        if r is not None:
            return self.vals[r]
        out = np.zeros((keys.size, self.val_len), VAL_DTYPE)
        idx = np.searchsorted(self.keys, keys)
        ok = idx < self.keys.size
        ok[ok] = self.keys[idx[ok]] == keys[ok]
        out[ok] = self.vals[idx[ok]]
        return out

    def update(self, keys: np.ndarray, grads: np.ndarray, updater) -> None:
        """Run ``updater(w, s, g)`` on the rows of ``keys`` (in place when contiguous)."""
        r = self.rows(keys)
        if isinstance(r, slice):
            updater(self.vals[r], self.state[r], grads)
        else:
            w, s = self.vals[r], self.state[r]
            updater(w, s, grads)
            self.vals[r], self.state[r] = w, s

    def assign(self, keys: np.ndarray, vals: np.ndarray, state: np.ndarray | None = None
               ) -> None:
        """Overwrite rows (a replica applying its master's new values; a restore)."""
        r = self.rows(keys)
        self.vals[r] = vals
        if state is not None:
            self.state[r] = state

    def init(self, keys: np.ndarray, vals: np.ndarray) -> int:
        """Set the rows that are not stored yet (an init push); returns how many.

        Every worker pushes the same seeded initial values, so the first push to arrive
        wins and the rest change nothing: a job whose first worker died before its push
        still starts from them, and a push that arrives late (its worker was frozen)
        cannot reset weights that training has already moved."""
        stored = self._lookup(keys)[1]
        if not stored.all():
            self.assign(keys[~stored], vals[~stored])
        return int((~stored).sum())

    def range(self, begin: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the keys, values and state stored in ``[begin, end)``."""
        lo, hi = positions(self.keys, [begin, end])
        return self.keys[lo:hi].copy(), self.vals[lo:hi].copy(), self.state[lo:hi].copy()

    def drop(self, begin: int, end: int) -> None:
        """Delete everything in ``[begin, end)`` (a range this server gave away)."""
        lo, hi = (int(x) for x in positions(self.keys, [begin, end]))
        if hi > lo:
            keep = np.r_[0:lo, hi:self.keys.size]
            self.keys, self.vals, self.state = self.keys[keep], self.vals[keep], self.state[keep]

    def replace(self, begin: int, end: int, keys: np.ndarray, vals: np.ndarray,
                state: np.ndarray) -> None:
        """Make ``[begin, end)`` hold exactly these rows (a full copy from the master)."""
        self.drop(begin, end)
        if keys.size:
            self.assign(keys, vals.reshape(-1, self.val_len), state.reshape(-1, self.val_len))
