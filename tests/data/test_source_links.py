"""Imports read only real files inside SRC: a symbolic link, above all one leading out of SRC
(a file, a folder, a whole split), is refused before anything is read or written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fixtures_dicom import write_vindr_learnable_tree
from fixtures_kaggle import image_bytes, write_kaggle_tree

from cxrkd.search.cli import main
from cxrkd.trainables.data.importers import import_dataset
from cxrkd.trainables.data.store import DatasetError, datasets_dir


def _kaggle(tmp_path: Path) -> Path:
    return write_kaggle_tree(
        tmp_path / "src", n_per_class_train=8, n_per_class_test=4, quirks=False
    )


def _vindr(tmp_path: Path) -> Path:
    return write_vindr_learnable_tree(tmp_path / "src", n_train=12, n_test=4, image_format="png")


def _secret_picture(tmp_path: Path) -> Path:
    """A readable picture outside SRC: what an escaping link would smuggle into the store."""
    path = tmp_path / "outside" / "secret.jpeg"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(image_bytes(width=50, height=60, rgb=False, seed=7, pneumonia=False))
    return path


def _link(link: Path, target: str | Path) -> tuple[Path, str]:
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    elif link.exists() or link.is_symlink():
        link.unlink()
    os.symlink(target, link)
    return link, str(target)


def _kaggle_link(tmp_path: Path, src: Path, case: str) -> tuple[Path, str]:
    tree = src / "chest_xray"
    if case == "file_to_etc_passwd":
        return _link(tree / "train/NORMAL/IM-0999-0001.jpeg", "/etc/passwd")
    if case == "relative_file_out":
        _secret_picture(tmp_path)  # tmp_path/outside/secret.jpeg, 4 levels above PNEUMONIA/
        return _link(
            tree / "train/PNEUMONIA/person999_virus_1.jpeg", "../../../../outside/secret.jpeg"
        )
    if case == "folder_out":  # os.walk does not follow it: it must not be skipped in silence
        _secret_picture(tmp_path)
        return _link(tree / "train/NORMAL/more", tmp_path / "outside")
    if case == "split_folder_out":
        shutil.copytree(tree / "test", tmp_path / "elsewhere_test")
        return _link(tree / "test", tmp_path / "elsewhere_test")
    if case == "chest_xray_folder_out":
        shutil.move(tree, tmp_path / "elsewhere")
        return _link(tree, tmp_path / "elsewhere")
    assert case == "file_inside", case  # refused too: one rule for every link
    return _link(tree / "train/NORMAL/IM-0998-0001.jpeg", "../../test/NORMAL/IM-0001-0001.jpeg")


def _vindr_link(tmp_path: Path, src: Path, case: str) -> tuple[Path, str]:
    first = sorted((src / "train").iterdir())[0]
    if case == "file_to_etc_passwd":
        return _link(first, "/etc/passwd")
    if case == "relative_file_out":
        secret = tmp_path / "outside" / "secret.png"
        secret.parent.mkdir()
        shutil.copy(first, secret)  # a readable image: the old importer took it in silence
        return _link(first, "../../outside/secret.png")
    if case == "folder_out":
        (tmp_path / "outside").mkdir()
        return _link(src / "train" / "more", tmp_path / "outside")
    if case == "split_folder_out":
        shutil.copytree(src / "test", tmp_path / "elsewhere_test")
        return _link(src / "test", tmp_path / "elsewhere_test")
    if case == "label_csv_out":
        csv = src / "annotations" / "image_labels_train.csv"
        shutil.copy(csv, tmp_path / "labels.csv")
        return _link(csv, tmp_path / "labels.csv")
    assert case == "file_inside", case
    return _link(first, f"../test/{sorted((src / 'test').iterdir())[0].name}")


KAGGLE_CASES = [
    "file_to_etc_passwd",
    "relative_file_out",
    "folder_out",
    "split_folder_out",
    "chest_xray_folder_out",
    "file_inside",
]
VINDR_CASES = [
    "file_to_etc_passwd",
    "relative_file_out",
    "folder_out",
    "split_folder_out",
    "label_csv_out",
    "file_inside",
]


@pytest.mark.parametrize(
    ("kind", "case"),
    [("kaggle-pneumonia", c) for c in KAGGLE_CASES] + [("vindr", c) for c in VINDR_CASES],
)
def test_a_symlink_in_src_is_refused_naming_it_and_nothing_is_written(tmp_path, kind, case):
    src = (_kaggle if kind == "kaggle-pneumonia" else _vindr)(tmp_path)
    make_link = _kaggle_link if kind == "kaggle-pneumonia" else _vindr_link
    link, target = make_link(tmp_path, src, case)
    home = tmp_path / "home"
    with pytest.raises(DatasetError) as info:
        import_dataset(kind, str(src), home=home, size=16, workers=1, progress=False)
    message = str(info.value)
    root = src / "chest_xray" if kind == "kaggle-pneumonia" else src
    name = link.relative_to(root).as_posix() if link != root else link.name
    assert f"{name} -> {target}" in message, message  # the link and its target
    assert f"resolves to {os.path.realpath(link)}" in message
    where = "inside SRC" if case == "file_inside" else "OUTSIDE SRC"
    assert where in message and "cp -rL SRC COPY" in message  # where it leads, and the fix
    assert not datasets_dir(home).exists()  # refused before anything was written


@pytest.mark.parametrize("kind", ["kaggle-pneumonia", "vindr"])
def test_cli_exits_2_on_a_link_out_of_src(tmp_path, capsys, kind):
    src = (_kaggle if kind == "kaggle-pneumonia" else _vindr)(tmp_path)
    make_link = _kaggle_link if kind == "kaggle-pneumonia" else _vindr_link
    make_link(tmp_path, src, "file_to_etc_passwd")
    argv = ["data", "import", kind, str(src), "--size", "16", "--workers", "1", "--no-progress"]
    assert main(argv) == 2
    assert "-> /etc/passwd" in capsys.readouterr().err
    assert not datasets_dir().exists()


@pytest.mark.parametrize("kind", ["kaggle-pneumonia", "vindr"])
def test_src_itself_may_be_a_link(tmp_path, kind):
    """Only links inside SRC are refused: SRC is resolved first, as a user's shortcut to a
    download kept elsewhere is no escape."""
    src = (_kaggle if kind == "kaggle-pneumonia" else _vindr)(tmp_path)
    shortcut = tmp_path / "shortcut"
    os.symlink(src, shortcut)
    home = tmp_path / "home"
    manifest = import_dataset(kind, str(shortcut), home=home, size=16, workers=1, progress=False)
    assert manifest.n_images > 0
