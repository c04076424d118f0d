"""Atomic replacement keeps the permissions a plain open() gives (0666 & ~umask), not mkstemp's 0600."""
import os
import stat

import pytest

from nnunet_dinomix.fileio import replace_atomically


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_replaced_file_gets_umask_permissions_and_leaves_no_temporary(tmp_path, umask):
    old = os.umask(umask)
    try:
        target = tmp_path / "checkpoint.pth"
        target.write_text("old")
        replace_atomically(str(target), lambda tmp: open(tmp, "w").write("new"))
        assert target.read_text() == "new"
        assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
        assert os.listdir(tmp_path) == ["checkpoint.pth"]
    finally:
        os.umask(old)


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("old")

    def broken(tmp):
        open(tmp, "w").write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(str(target), broken)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["manifest.json"]
