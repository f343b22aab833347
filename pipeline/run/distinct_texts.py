"""The distinct texts a run met, kept apart from its distinct chunks only where the two differ.

A text of one chunk is its own chunk, so the chunk tally's set of chunks met already says whether
such a text is new: most runs hold no set of texts of their own (a cold run of 7 M distinct texts
had kept the same 7 M hashes twice). Texts are set apart only by what a run of long texts brings:

- `long`: texts of several chunks;
- `only_chunks`: chunks first met inside a long text, not as a text of their own;
- `late`: of those, the ones since met as a text (a short row equal to a long row's paragraph);
- `elsewhere`: texts another process counted (`merge`), met here as chunks or not at all.
"""

from __future__ import annotations

import numpy as np

from pipeline.hashset import HashSet


class DistinctTexts:
    """Texts met, by `hash64`, beside the chunks met (`chunks`, the tally's set)."""

    def __init__(self, chunks: HashSet):
        self.chunks = chunks
        self.long, self.only_chunks, self.late, self.elsewhere = HashSet(), HashSet(), HashSet(), HashSet()

    def meet_short(self, hashes: np.ndarray, first: np.ndarray) -> int:
        """Texts of one chunk (distinct), and whether each was a chunk met for the first time
        just now; how many are new texts."""
        new = first.copy()
        if len(self.only_chunks):  # met before only inside a long text: new as a text, once
            again = np.flatnonzero(~first)
            again = again[_holds(self.only_chunks, hashes[again])]
            new[again[self.late.add_hashes(hashes[again])]] = True
        return self._not_elsewhere(hashes, new)

    def meet_long(self, hashes: np.ndarray, chunks_inside: np.ndarray) -> int:
        """Texts of several chunks (distinct), and the chunks first met inside them just now
        (none a text of one chunk met with them); how many texts are new."""
        self.only_chunks.add_hashes(chunks_inside)
        return self._not_elsewhere(hashes, self.long.add_hashes(hashes))

    def merge(self, fresh: np.ndarray, texts: np.ndarray, new_chunks: np.ndarray) -> int:
        """Another process's distinct texts (`texts`; `fresh`: those `holds` said were not met
        here before its chunks were added) and its chunks met here for the first time."""
        self.elsewhere.add_hashes(fresh)
        self.only_chunks.add_hashes(new_chunks[~np.isin(new_chunks, texts)])
        return len(fresh)

    def holds(self, hashes: np.ndarray) -> np.ndarray:
        """For each hash, whether it is a text met so far."""
        chunk_only = _holds(self.only_chunks, hashes) & ~_holds(self.late, hashes)
        short = self.chunks.contains_hashes(hashes) & ~chunk_only
        return short | _holds(self.long, hashes) | _holds(self.elsewhere, hashes)

    def hashes(self) -> np.ndarray:
        """Every text's hash, sorted: for `merge` in another process."""
        chunk_only = np.setdiff1d(self.only_chunks.hashes(), self.late.hashes(), assume_unique=True)
        short = np.setdiff1d(self.chunks.hashes(), chunk_only, assume_unique=True)
        return np.union1d(np.union1d(short, self.long.hashes()), self.elsewhere.hashes())

    def _not_elsewhere(self, hashes: np.ndarray, new: np.ndarray) -> int:
        if len(self.elsewhere):
            new &= ~self.elsewhere.contains_hashes(hashes)
        return int(new.sum())


def _holds(members: HashSet, hashes: np.ndarray) -> np.ndarray:
    return members.contains_hashes(hashes) if len(members) else np.zeros(len(hashes), dtype=bool)
