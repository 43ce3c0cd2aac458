"""Process-wide allocator setting for the per-frame full-resolution arrays.

glibc serves every block above its mmap threshold with a fresh mmap and returns it with munmap on free; a
same-size block freed later only raises the threshold to its own size, and blocks *at* the threshold are
still mmapped. A 640x480 float32 map (1.2 MB) is such a block, so each frame's depth, std and scale maps
come back as fresh pages that the kernel faults in and zeroes (about 0.6 ms of the 6 ms scale-field stage).
Keeping blocks up to `MMAP_THRESHOLD_BYTES` on the heap lets the next frame reuse the previous frame's
freed memory. No-op where glibc's mallopt is not available.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

MMAP_THRESHOLD_BYTES = 16 << 20  # frames up to ~4 Mpx float32 stay on the heap
TRIM_THRESHOLD_BYTES = 64 << 20  # free heap kept before it is given back to the system
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_done = False


def keep_frame_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when they were set."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt, nothing to tune
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    _done = ok
    return ok
