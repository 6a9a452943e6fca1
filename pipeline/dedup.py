"""Exact deduplication of 64-bit digests in about 8 bytes each (flat memory for millions)."""

from __future__ import annotations

import numpy as np

from pipeline.prepare_worker import KEEP, TOO_LONG

KEPT, DUPLICATE, REJECTED_LONG = 0, 1, 2


class DigestSet:
    """A sorted numpy array of digests plus a small set of recent ones, merged when it fills.

    The array grows in chunks of `chunk` digests and is re-sorted in place, so a merge needs
    no second copy: memory is 8 bytes a digest, touched as it fills."""

    def __init__(self, merge_at: int = 1 << 14, chunk: int = 1 << 20):
        self.buf = np.empty(0, dtype=np.uint64)
        self.n = 0
        self.recent: set[int] = set()
        self.merge_at, self.chunk = merge_at, chunk

    @property
    def sorted(self) -> np.ndarray:
        return self.buf[: self.n]

    def __len__(self) -> int:
        return self.n + len(self.recent)

    def __contains__(self, digest: int) -> bool:
        return digest in self.recent or bool(self._in_sorted(np.array([digest], dtype=np.uint64))[0])

    def _in_sorted(self, arr: np.ndarray) -> np.ndarray:
        if not self.n:
            return np.zeros(len(arr), dtype=bool)
        s = self.sorted
        pos = np.searchsorted(s, arr)
        pos[pos == self.n] = 0
        return s[pos] == arr

    def _merge(self) -> None:
        m = len(self.recent)
        if self.n + m > len(self.buf):
            size = -(-(self.n + m) // self.chunk) * self.chunk
            grown = np.empty(size, dtype=np.uint64)
            grown[: self.n] = self.sorted
            self.buf = grown
        self.buf[self.n : self.n + m] = np.fromiter(self.recent, dtype=np.uint64, count=m)
        self.n += m
        self.buf[: self.n].sort(kind="stable")  # timsort: a sorted run plus a short tail, merged in O(n)
        self.recent.clear()

    def resolve(self, digests: np.ndarray, status: np.ndarray) -> list[int]:
        """Decide, in order, the fate of each valid recipe of a block: KEPT (its digest is new
        and its status KEEP; the digest is added), DUPLICATE (digest seen before) or
        REJECTED_LONG (new digest but TOO_LONG; not added). Status SEEN means the worker had
        the digest as KEEP earlier, so it is here already: DUPLICATE."""
        recent = self.recent
        seen = self._in_sorted(digests)
        seen |= np.fromiter(map(recent.__contains__, digests.tolist()), dtype=bool, count=len(digests))
        fresh = digests[~seen]
        if len(set(fresh.tolist())) == len(fresh):  # no digest twice among the new ones: no order to keep
            st = status[~seen]
            fate = np.full(len(digests), DUPLICATE, dtype=np.uint8)
            fate[~seen] = np.where(st == KEEP, KEPT, np.where(st == TOO_LONG, REJECTED_LONG, DUPLICATE))
            recent.update(fresh[st == KEEP].tolist())
            if len(recent) >= self.merge_at:
                self._merge()
            return fate.tolist()
        old = seen.tolist()
        out = []
        for d, st, o in zip(digests.tolist(), status.tolist(), old):
            if o or d in recent:  # (recent grows in this loop)
                out.append(DUPLICATE)
            elif st == KEEP:
                recent.add(d)
                out.append(KEPT)
            elif st == TOO_LONG:
                out.append(REJECTED_LONG)
            else:  # SEEN: cannot be new; kept as a safe answer
                out.append(DUPLICATE)
        if len(recent) >= self.merge_at:
            self._merge()
        return out
