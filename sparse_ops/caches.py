"""``clear_caches()``: empty the process-wide caches of ``sparse_ops``.

Hilbert orders, block patterns and kernel tables are built once per size and device and cached (bounded,
least recently used out) in ``functools.lru_cache`` functions of the ``sparse_ops`` modules; on CUDA they hold
device memory shared by every model in the process, so deleting a model does not free them. This frees them.
"""
from __future__ import annotations

import sys

__all__ = ['clear_caches']


def clear_caches() -> int:
    """Empty every ``functools.lru_cache`` defined in a loaded ``sparse_ops`` module; returns how many there were.
    Follow with ``torch.cuda.empty_cache()`` to hand the memory back to the device."""
    cleared = 0
    for name, module in list(sys.modules.items()):
        if module is None or not (name == 'sparse_ops' or name.startswith('sparse_ops.')):
            continue
        for obj in list(vars(module).values()):
            if callable(getattr(obj, 'cache_clear', None)) and getattr(obj, '__module__', None) == name:
                obj.cache_clear()
                cleared += 1
    return cleared
