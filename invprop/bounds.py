"""Sizes the method implies, shared by params validation and the method core.

Free of torch (and of everything else), so `invprop.config` can check params with it and
`invprop --help` still starts fast.
"""

from __future__ import annotations

__all__ = ["max_positives"]


def max_positives(k: int, hops: int) -> int:
    """The largest possible propagated positive set: k + k^2 + ... + k^hops (the width C of a
    Propagation; a params error above it)."""
    if k < 1 or hops < 1:
        raise ValueError(f"need k >= 1 and hops >= 1, got k={k}, hops={hops}")
    return sum(k**hop for hop in range(1, hops + 1))
