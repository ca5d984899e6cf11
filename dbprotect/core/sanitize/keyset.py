"""An exact set of 64-bit keys in bounded memory: sorted numpy arrays, 8 bytes a key, asked a batch at a time.

Two sets of the sanitizer are this: the production fingerprints (:class:`~.fingerprints.FingerprintFilter`,
one set per bucket) and the outputs of a unique masked column (:class:`~.stream.SeenOutputs`).
Why not a Bloom filter: at the rates those need (1e-9) one touches ~30 random cache lines per insert and
per lookup (1.1 µs each, measured: a fifth of the stream's time for one unique column). Here a batch's
lookups are binary searches in C, and a key is found only when it was added (exact).

Keys arrive as runs: each added batch is sorted once, and runs are merged like a binary counter (a run
is merged into the one before it while that one is at most twice as long), so every key is merged about
log2(batches) times and at most that many runs are searched by a lookup. Why not append and sort once:
the pieces and the sorted copy were both alive at the end, twice the set (a 16 M set peaked at 301 MB);
here the transient memory is one merge.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def sorted_distinct(keys: np.ndarray) -> np.ndarray:
    """``keys`` (an array of the caller's own, sorted in place) each once, sorted: a stable sort (timsort
    merges sorted runs in linear time; np.unique was measured 36x slower than sort and mask here)."""
    keys.sort(kind="stable")
    distinct = np.empty(len(keys), dtype=bool)
    distinct[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=distinct[1:])
    return keys[distinct]


def as_keys(keys: np.ndarray | Iterable[int]) -> np.ndarray:
    """Keys as a ``uint64`` array."""
    if isinstance(keys, np.ndarray):
        return keys.astype(np.uint64, copy=False)
    return np.fromiter(keys, dtype=np.uint64)


class KeySet:
    """An exact set of ``uint64`` keys (see the module docstring)."""

    __slots__ = ("_runs",)

    def __init__(self) -> None:
        #: Sorted, distinct runs, longest first (a key may be in more than one until :meth:`compact`).
        self._runs: list[np.ndarray] = []

    def add(self, keys: np.ndarray | Iterable[int]) -> None:
        keys = np.array(keys, dtype=np.uint64)  # a copy: it is sorted in place
        if not len(keys):
            return
        runs = self._runs
        runs.append(sorted_distinct(keys))
        while len(runs) > 1 and len(runs[-2]) <= 2 * len(runs[-1]):
            runs[-2:] = [sorted_distinct(np.concatenate(runs[-2:]))]

    def compact(self) -> None:
        """One run (done once a set is complete: its lookups then search one array)."""
        if len(self._runs) > 1:
            self._runs[:] = [sorted_distinct(np.concatenate(self._runs))]

    def sorted(self) -> np.ndarray:
        """Every key once, sorted."""
        self.compact()
        return self._runs[0] if self._runs else np.empty(0, dtype=np.uint64)

    def hits(self, keys: np.ndarray | Iterable[int]) -> np.ndarray:
        """Per key, whether it is in the set (a boolean array)."""
        keys = as_keys(keys)
        found = np.zeros(len(keys), dtype=bool)
        for run in self._runs:
            at = np.searchsorted(run, keys)
            at[at == len(run)] = 0
            found |= run[at] == keys
        return found

    def __contains__(self, key: int) -> bool:
        return bool(self.hits([key])[0])

    def __len__(self) -> int:
        """Distinct keys (exact once :meth:`compact`; before, a key added in two runs counts twice)."""
        return sum(len(run) for run in self._runs)

    @property
    def nbytes(self) -> int:
        return sum(run.nbytes for run in self._runs)
