"""The process's allocator setting for stacked training on the CPU (glibc only)."""

from __future__ import annotations

import ctypes
import functools
import logging
import sys

log = logging.getLogger(__name__)

# Blocks below this size come from the heap, and up to TRIM_THRESHOLD of free heap is kept.
MMAP_THRESHOLD = 64 * 2**20
TRIM_THRESHOLD = 256 * 2**20


@functools.cache
def keep_freed_memory_in_process() -> None:
    """Keep freed tensor memory in the process instead of handing it back to the kernel (glibc).

    A stacked step frees and re-allocates activations of several MB each. By default glibc
    serves such blocks with ``mmap`` or trims them off the heap when freed, and faulting their
    pages back in took more than a third of a step on the CPU. Process-wide and done once; a plain
    loop running later in the same process gets the same allocator.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    if not (mallopt(m_mmap_threshold, MMAP_THRESHOLD) and mallopt(m_trim_threshold, TRIM_THRESHOLD)):
        log.debug("mallopt was refused; keeping the default allocator")
