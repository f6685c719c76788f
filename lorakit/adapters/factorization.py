"""Splitting a layer dimension into two factors, as LyCORIS does (LoKr's Kronecker factors,
Diag-OFT's blocks)."""
from __future__ import annotations


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """(m, n), m <= n, m * n = dimension, as LyCORIS splits a LoKr dimension.

    A positive factor that divides the dimension is used as is. Otherwise m grows
    through the divisors of `dimension` while m < n and m <= factor (no limit for -1),
    so factor -1 gives the most balanced split (e.g. 320 -> (16, 20), 768 -> (24, 32)).
    """
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (m, n) if m <= n else (n, m)
    limit = dimension if factor < 0 else factor
    m, n = 1, dimension
    cand = 2
    while m < n:
        while dimension % cand:
            cand += 1
        if cand > limit:
            break
        m, n = cand, dimension // cand
        cand += 1
    return (m, n) if m <= n else (n, m)
