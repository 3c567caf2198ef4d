"""A full disk during an import is a clear DiskSpaceError, never a SIGBUS (fault injection).

The image array is written through a memory mapping; if its file were sparse and the disk filled
up, the kernel would kill the process with SIGBUS. The writer therefore checks free space and
allocates the array's blocks before mapping it. These tests inject the failures (no real full
disk needed) and check the error, that no store becomes visible, and that the retry resumes.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple

import numpy as np
import pytest

from cxrkd.trainables.data import writer
from cxrkd.trainables.data.disk_space import DISK_MARGIN, DiskSpaceError
from cxrkd.trainables.data.store import IMAGES_FILE, DatasetStore, list_datasets
from cxrkd.trainables.data.writer import write_store
from cxrkd.trainables.errors import CxrkdError
from tests.data.test_store import make_plan

SIZE = 64  # 12 images of 64x64: 49,152 bytes, a dozen pages
Usage = namedtuple("Usage", "total used free")


def import_tiny(home, **kwargs):
    return write_store(make_plan(), size=SIZE, home=home, workers=1, chunk_size=5, **kwargs)


def staging(home):
    return home / "datasets" / ".partial-tiny"


def assert_no_visible_store(home):
    assert not (home / "datasets" / "tiny").exists()
    assert list_datasets(home) == []
    assert not (staging(home) / IMAGES_FILE).exists()


def assert_allocated(path):
    st = os.stat(path)
    assert st.st_blocks * 512 >= st.st_size, (st.st_blocks, st.st_size)


def fallocate_full(fd, offset, length):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def no_decoding(*args, **kwargs):
    raise AssertionError("decoded again: the chunks kept by the failed attempt were not reused")


def test_array_blocks_are_allocated_before_it_is_mapped(tmp_path, monkeypatch):
    mapped = []
    original_new = np.memmap.__new__

    def spy(subtype, filename, *args, **kwargs):
        mode = kwargs.get("mode", args[1] if len(args) > 1 else "r+")
        if mode in ("r+", "w+"):
            st = os.stat(filename)
            mapped.append((st.st_size, st.st_blocks * 512))
        return original_new(subtype, filename, *args, **kwargs)

    monkeypatch.setattr(np.memmap, "__new__", staticmethod(spy))
    import_tiny(tmp_path)
    monkeypatch.undo()
    assert len(mapped) == 1
    size, allocated = mapped[0]
    assert size >= 12 * SIZE * SIZE and allocated >= size  # not a sparse file when mapped
    store = DatasetStore.open("tiny", home=tmp_path)
    assert [int(store.images[i].mean()) for i in range(12)] == [10 * i for i in range(12)]
    assert_allocated(tmp_path / "datasets" / "tiny" / IMAGES_FILE)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_at_reservation_is_a_clear_error_and_resumes(tmp_path, monkeypatch, code):
    calls = []

    def full(fd, offset, length):
        calls.append(length)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(DiskSpaceError) as info:
        import_tiny(tmp_path)
    assert isinstance(info.value, CxrkdError)
    assert calls == [12 * SIZE * SIZE]
    message = str(info.value)
    assert f"{12 * SIZE * SIZE:,} bytes" in message  # what is needed
    assert "bytes) are free" in message  # what is free
    assert str(tmp_path / "datasets") in message  # where
    assert "Free up space" in message and "CXRKD_HOME" in message  # the fix
    assert_no_visible_store(tmp_path)
    assert sorted(p.name for p in (staging(tmp_path) / "chunks").glob("*.npz")) == [
        "000000.npz",
        "000001.npz",
        "000002.npz",
    ]

    # Space freed: the same command finishes from the kept chunks, without decoding again.
    monkeypatch.undo()
    monkeypatch.setattr(writer, "_decode_chunk", no_decoding)
    manifest = import_tiny(tmp_path)
    assert manifest.n_images == 12 and not staging(tmp_path).exists()
    assert_allocated(tmp_path / "datasets" / "tiny" / IMAGES_FILE)


def test_too_little_free_space_fails_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - 10**6, 10**6))
    monkeypatch.setattr(writer, "_decode_chunk", no_decoding)
    with pytest.raises(DiskSpaceError) as info:
        import_tiny(tmp_path)
    message = str(info.value)
    needed = 2 * 12 * SIZE * SIZE + DISK_MARGIN  # chunks and array coexist, plus the margin
    assert f"({needed:,} bytes)" in message and "(1,000,000 bytes) are free" in message
    assert str(tmp_path / "datasets") in message and "CXRKD_HOME" in message
    assert_no_visible_store(tmp_path)


def test_free_space_used_up_while_decoding_is_caught_before_mapping(tmp_path, monkeypatch):
    # Enough space when decoding starts; another program fills the disk meanwhile; the check
    # before the array is mapped catches it (it counts only the array: chunks use their space).
    answers = iter([10**12, DISK_MARGIN])
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 0, next(answers)))
    needed = 12 * SIZE * SIZE + DISK_MARGIN
    with pytest.raises(DiskSpaceError, match=f"the 12-image array needs .*\\({needed:,} bytes\\)"):
        import_tiny(tmp_path)
    assert_no_visible_store(tmp_path)
    monkeypatch.undo()
    monkeypatch.setattr(writer, "_decode_chunk", no_decoding)
    assert import_tiny(tmp_path).n_images == 12


@pytest.mark.parametrize("missing", [False, True])
def test_without_fallocate_zeros_are_written(tmp_path, monkeypatch, missing):
    if missing:  # macOS: no os.posix_fallocate at all
        monkeypatch.delattr(os, "posix_fallocate", raising=False)
    else:  # a filesystem that does not support it

        def unsupported(fd, offset, length):
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

        monkeypatch.setattr(os, "posix_fallocate", unsupported, raising=False)
    import_tiny(tmp_path)
    store = DatasetStore.open("tiny", home=tmp_path)  # the .npy header survived the zeros
    assert store.images.shape == (12, SIZE, SIZE)
    assert [int(store.images[i].mean()) for i in range(12)] == [10 * i for i in range(12)]
    assert_allocated(tmp_path / "datasets" / "tiny" / IMAGES_FILE)


def test_full_disk_in_the_zero_filling_fallback(tmp_path, monkeypatch):
    # Network filesystems may report ENOSPC only when the data is flushed.
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", unsupported, raising=False)
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskSpaceError, match="CXRKD_HOME"):
        import_tiny(tmp_path)
    assert_no_visible_store(tmp_path)


def test_disk_filling_up_while_decoding_is_the_same_error(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "_decode_chunk", full)
    with pytest.raises(DiskSpaceError, match="Free up space.*CXRKD_HOME") as info:
        import_tiny(tmp_path)
    assert isinstance(info.value.__cause__, OSError)
    assert_no_visible_store(tmp_path)


def test_other_os_errors_are_not_disguised(tmp_path, monkeypatch):
    def denied(fd, offset, length):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "posix_fallocate", denied, raising=False)
    with pytest.raises(OSError) as info:
        import_tiny(tmp_path)
    assert not isinstance(info.value, CxrkdError) and info.value.errno == errno.EIO
    assert_no_visible_store(tmp_path)
