"""The store writer and the `cxrkd data` commands, on a tiny in-test source."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxrkd.search.cli import main
from cxrkd.trainables.data.import_plan import ImportPlan, resize_square, to_uint8
from cxrkd.trainables.data.store import BASE_COLUMNS, DatasetError, DatasetStore, list_datasets
from cxrkd.trainables.data.writer import write_store

BROKEN = set()


def decode_gradient(row: dict, size: int):
    """A 20x30 image whose brightness encodes the row number; 'broken' ids fail."""
    if row["image_id"] in BROKEN or row["source_path"].endswith(".bad"):
        raise OSError("cannot identify image file")
    image = np.full((20, 30), row["value"], dtype=np.uint8)
    return image, 30, 20


def make_plan(n: int = 12, name: str = "tiny", bad: int = 0) -> ImportPlan:
    rows = pd.DataFrame(
        {
            "image_id": [f"img{i:03d}" for i in range(n)],
            "patient_id": [f"p{i // 2}" for i in range(n)],
            "split": ["train"] * (n - 4) + ["val"] * 2 + ["test"] * 2,
            "source_path": [f"/src/img{i}" + (".bad" if i < bad else ".png") for i in range(n)],
            "sick": [i % 2 == 1 for i in range(n)],
            "value": [(10 * i) % 256 for i in range(n)],
        }
    )
    rows["sick"] = rows["sick"].astype(int)
    return ImportPlan(
        name=name,
        kind="test",
        task="binary",
        labels=["sick"],
        finding_labels=[],
        global_label="sick",
        rows=rows,
        decode=decode_gradient,
        synthetic=True,
        source="unit test",
        options={"n": n},
    )


def test_write_and_open_roundtrip(tmp_path):
    manifest = write_store(make_plan(), size=8, home=tmp_path, workers=2, chunk_size=5)
    store = DatasetStore.open("tiny", home=tmp_path)
    assert store.images.shape == (12, 8, 8) and store.images.dtype == np.uint8
    assert isinstance(store.images, np.memmap)
    # Row i of the metadata describes image i (values survive chunking and reordering).
    assert [int(store.images[i].mean()) for i in range(12)] == [10 * i for i in range(12)]
    assert set(BASE_COLUMNS) <= set(store.meta.columns)
    assert (store.meta["orig_width"] == 30).all() and (store.meta["orig_height"] == 20).all()
    assert manifest.splits == {"train": 8, "val": 2, "test": 2}
    assert manifest.label_counts == {"train": {"sick": 4}, "val": {"sick": 1}, "test": {"sick": 1}}
    images, labels = store.split_arrays("test")
    assert images.shape == (2, 8, 8) and labels.tolist() == [[0.0], [1.0]]
    assert [m.name for m in list_datasets(tmp_path)] == ["tiny"]


def test_fingerprint_is_content_based(tmp_path):
    a = write_store(make_plan(name="a"), size=8, home=tmp_path, workers=1)
    b = write_store(make_plan(name="b"), size=8, home=tmp_path, workers=1)
    plan = make_plan(name="c")
    plan.rows.loc[3, "sick"] = 1 - plan.rows.loc[3, "sick"]
    c = write_store(plan, size=8, home=tmp_path, workers=1)
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_existing_name_is_refused_and_kept(tmp_path):
    write_store(make_plan(), size=8, home=tmp_path, workers=1)
    with pytest.raises(DatasetError, match="already exists.*another --name.*cxrkd data rm tiny"):
        write_store(make_plan(), size=8, home=tmp_path, workers=1)
    assert DatasetStore.open("tiny", home=tmp_path).manifest.n_images == 12


def test_unreadable_files_are_skipped_and_listed(tmp_path, capsys):
    manifest = write_store(
        make_plan(n=40, bad=1), size=8, home=tmp_path, workers=1, max_unreadable=0.05
    )
    assert manifest.n_images == 39
    assert "/src/img0.bad" in capsys.readouterr().err
    assert "skipped 1 unreadable file(s): img000" in manifest.notes


def test_every_skipped_unreadable_file_is_named(tmp_path, capsys):
    # 25 of 1,500 (1.7%) is under the 2% limit: all are skipped and every one is named, in
    # the log with its path and error and in the manifest notes by image id.
    manifest = write_store(make_plan(n=1500, bad=25), size=8, home=tmp_path, workers=1)
    assert manifest.n_images == 1475
    err = capsys.readouterr().err
    assert all(f"/src/img{i}.bad: OSError: cannot identify" in err for i in range(25))
    (note,) = [n for n in manifest.notes if "unreadable" in n]
    assert note == "skipped 25 unreadable file(s): " + ", ".join(f"img{i:03d}" for i in range(25))


def test_too_many_unreadable_names_the_first_and_writes_all(tmp_path):
    with pytest.raises(DatasetError) as info:
        write_store(make_plan(n=40, bad=25), size=8, home=tmp_path, workers=1)
    message = str(info.value)
    listing = tmp_path / "datasets" / ".partial-tiny" / "unreadable.txt"
    assert "25 of 40 files could not be read" in message
    assert "/src/img19.bad" in message and "/src/img20.bad" not in message
    assert f"... and 5 more\nAll 25 are listed in {listing}." in message
    lines = listing.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == [f"/src/img{i}.bad" for i in range(25)]


def test_too_many_unreadable_fails_then_resumes(tmp_path):
    plan = make_plan(n=12, bad=0)
    BROKEN.update({"img001", "img007"})
    try:
        with pytest.raises(
            DatasetError, match=r"(?s)2 of 12 files could not be read.*img1.png.*img7.png"
        ):
            write_store(plan, size=8, home=tmp_path, workers=1, chunk_size=4)
    finally:
        BROKEN.clear()
    assert not (tmp_path / "datasets" / "tiny").exists()  # nothing that looks complete
    staging = tmp_path / "datasets" / ".partial-tiny" / "chunks"
    assert len(list(staging.glob("*.npz"))) == 3
    # The files were "fixed": the same import resumes and finishes.
    assert (staging.parent / "unreadable.txt").read_text().count("\n") == 2
    manifest = write_store(plan, size=8, home=tmp_path, workers=1, chunk_size=4)
    assert manifest.n_images == 12
    assert not (tmp_path / "datasets" / ".partial-tiny").exists()
    assert not (tmp_path / "datasets" / "tiny" / "unreadable.txt").exists()


def test_interrupted_import_resumes_without_redecoding(tmp_path, monkeypatch):
    import cxrkd.trainables.data.writer as writer

    calls = []
    real = writer._decode_chunk

    def flaky(decode, records, size, out):
        calls.append(out)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(decode, records, size, out)

    monkeypatch.setattr(writer, "_decode_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_store(make_plan(), size=8, home=tmp_path, workers=1, chunk_size=4)
    assert not (tmp_path / "datasets" / "tiny").exists()
    calls.clear()
    write_store(make_plan(), size=8, home=tmp_path, workers=1, chunk_size=4)
    assert len(calls) == 1  # only the chunk that never finished


def test_plan_validation_errors():
    plan = make_plan()
    plan.rows.loc[0, "split"] = "holdout"
    with pytest.raises(DatasetError, match="holdout"):
        plan.validate()
    plan = make_plan()
    plan.rows.loc[1, "image_id"] = "img000"
    with pytest.raises(DatasetError, match="duplicate image ids.*img000"):
        plan.validate()


def test_resize_and_uint8_helpers():
    image = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    small = resize_square(image, 2)
    assert small.tolist() == [[25, 45], [105, 125]]  # 2x2 block means
    assert to_uint8(np.array([[100.0, 200.0, 300.0]]), 100, 300).tolist() == [[0, 128, 255]]


def test_cli_show_json_list_preview_rm(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXRKD_HOME", str(tmp_path))
    write_store(make_plan(), size=8, home=tmp_path, workers=1)
    assert main(["data", "show", "tiny", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    for key in ("name", "kind", "task", "labels", "splits", "label_counts", "resolution"):
        assert key in shown
    assert shown["fingerprint"] and shown["synthetic"] is True
    assert main(["data", "list"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    out = tmp_path / "p.png"
    assert main(["data", "preview", "tiny", "--out", str(out), "--n", "4"]) == 0
    assert out.stat().st_size > 0
    assert main(["data", "rm", "tiny", "--yes"]) == 0
    assert main(["data", "show", "tiny"]) == 2
    assert "unknown dataset 'tiny'" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "x" * 101, "a..b"])
def test_bad_names_are_refused_before_any_work(tmp_path, bad):
    with pytest.raises(DatasetError, match="bad dataset name"):
        write_store(make_plan(name=bad), size=8, home=tmp_path, workers=1)
    assert not (tmp_path / "datasets").exists() or not any((tmp_path / "datasets").iterdir())
