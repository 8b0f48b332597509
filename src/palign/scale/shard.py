"""Sharding of a run's person groups over workers (no Ray import)."""

from __future__ import annotations


def interleave(n_items: int, n_workers: int) -> list[list[int]]:
    """Indices ``0..n_items-1`` dealt round-robin to ``n_workers`` workers.

    Work units of one method cost about the same, so dealing by count balances the load;
    interleaving (rather than contiguous blocks) keeps the early units spread over all
    workers, so a partial run has finished persons from the start of the list.
    """
    if n_workers < 1:
        raise ValueError("n_workers must be at least 1")
    return [list(range(w, n_items, n_workers)) for w in range(n_workers)]
