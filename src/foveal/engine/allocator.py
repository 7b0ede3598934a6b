"""Keep freed memory in the process: glibc's malloc settings for tensor-sized blocks on CPU.

By default glibc serves every allocation above its mmap threshold (128 KiB, raised dynamically up to 32 MiB) with a
fresh ``mmap`` and gives it back to the system on ``free``; the next tensor of that size then pays a page fault for
every 4 KiB page it touches. A CNN's forward pass allocates and frees tens of MiB per layer, so on CPU a large part of
its time can go to page faults: EfficientNet-B0, batch 8 × 224², eval on 2 cores spends about 30 % of its time
there (see ``bench/efficientnet_speed.py --tuned-malloc``). Raising the mmap threshold and the trim threshold keeps
freed blocks in malloc's heap for reuse, which is what tcmalloc or jemalloc (the usual advice for PyTorch on CPU) do
by design. The cost: the process keeps its peak memory until it exits.

The ``foveal`` command line calls :func:`keep_freed_memory` once at start; a program that imports foveal as a
library decides for itself. ``FOVEAL_MALLOC=default`` in the environment leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap and stay there when freed
_TRIM_THRESHOLD = (1 << 31) - 1  # never give the heap's top back to the system
_done = False


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds so that freed tensor memory is reused rather than unmapped.

    Returns:
        True when the settings are in force (now or from an earlier call); False when the C library is not glibc,
        or ``FOVEAL_MALLOC=default`` asks to leave malloc alone.
    """
    global _done
    if _done:
        return True
    if os.environ.get("FOVEAL_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _done
