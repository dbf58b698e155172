"""The one atomic writer: a failed write leaves the old file or folder untouched and no temp files,
and what it writes gets the permissions a plain open()/mkdir() would."""

from __future__ import annotations

import os

import pytest

from lora_trainer.atomic import atomic_dir, atomic_file, atomic_path, atomic_write_text


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_file_written_whole_with_default_permissions(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~_umask()
    assert os.listdir(target.parent) == ["a.txt"]


@pytest.mark.parametrize("how", ["handle", "path"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, how):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        if how == "handle":
            with atomic_file(target) as f:
                f.write(b"half")
                raise RuntimeError("disk full")
        else:
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as f:
                    f.write(b"half")
                raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_folder_replaced_whole_or_not_at_all(tmp_path):
    final = tmp_path / "state"

    def write(tmp: str, text: str) -> None:
        with open(os.path.join(tmp, "x.json"), "w") as f:
            f.write(text)

    atomic_dir(final, lambda tmp: write(tmp, "1"))
    assert os.stat(final).st_mode & 0o777 == 0o777 & ~_umask()
    atomic_dir(final, lambda tmp: write(tmp, "2"))
    assert (final / "x.json").read_text() == "2"

    def failing(tmp: str) -> None:
        write(tmp, "3")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_dir(final, failing)
    assert (final / "x.json").read_text() == "2"
    assert os.listdir(tmp_path) == ["state"]
