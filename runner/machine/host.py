"""Facts about this machine other than its GPUs."""

from __future__ import annotations

import os


def host_ram_bytes() -> int | None:
    """Total physical memory of this machine, or None when the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
