"""Atomic file replacement that keeps the permissions a plain ``open()`` would give."""
from __future__ import annotations

import os
import tempfile
from typing import Callable


def replace_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then move it over ``path`` in one step: a crash leaves
    the old file, never a truncated one. ``mkstemp`` creates files with mode 0600; the result gets ``0666 & ~umask``
    like any file nnU-Net writes, so colleagues in a shared group can read checkpoints and manifests."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path), suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
