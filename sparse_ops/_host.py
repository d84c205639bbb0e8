"""Integer helpers for the kernel launchers, in plain Python.

Triton's ``triton.cdiv`` / ``triton.next_power_of_2`` are ``ConstexprFunction`` objects (usable inside kernels)
whose host-side call is a slow Python object call; the launchers of a BiFormer-S training step call them ~1000
times.
"""
from __future__ import annotations

__all__ = ['cdiv', 'next_pow2']


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for ints, ``b > 0``."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """Smallest power of 2 >= n (1 for n <= 1), as ``triton.next_power_of_2``."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
