"""Give the memory of large buffers back to the system when they are freed.

A client that was cut off for not reading leaves megabytes of freed write buffer
behind. glibc serves large blocks from their own mappings (returned at once when freed)
only up to a threshold that it raises by itself each time such a block is freed; past
that, large blocks come from the heap, and the heap rarely shrinks. The hub's resident
memory then stays at its high-water mark long after the clients have gone. Fixing the
threshold keeps every large block in its own mapping.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["LARGE_BLOCK_BYTES", "return_large_blocks_to_the_system"]

logger = logging.getLogger(__name__)

LARGE_BLOCK_BYTES = 128 * 1024
"""Blocks of this size and more get their own mapping (glibc's initial threshold)."""

_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def return_large_blocks_to_the_system(threshold: int = LARGE_BLOCK_BYTES) -> bool:
    """Fix glibc's mapping threshold at ``threshold`` bytes; False where there is no
    glibc (the allocator then keeps its own policy)."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    fixed = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    if not fixed:
        logger.debug("the C library refused a fixed mapping threshold")
    return fixed
