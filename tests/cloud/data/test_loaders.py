"""Dataset loaders on tiny fixtures written in each dataset's real on-disk format."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from asymfuse.cloud.data.folder import load_folder_retrieval, load_image_folder
from asymfuse.cloud.data.gldv2 import load_gldv2_retrieval, load_gldv2_train
from asymfuse.cloud.data.holidays import load_holidays
from asymfuse.cloud.data.records import RetrievalDataset, TrainingSet
from asymfuse.cloud.data.registry import create_dataset, dataset_names
from asymfuse.cloud.data.revisitop import load_revisitop
from asymfuse.cloud.data.ukbench import load_ukbench
from asymfuse.edge.errors import ConfigError, CorruptDataError, UnknownNameError
from PIL import Image


def _jpg(path: Path, *, size=(16, 12), value=0) -> Path:
    """Write a small JPEG; pixel (x, y) of channel 0 is x*10 so crops are checkable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, :, 0] = (np.arange(w) * 10)[None, :]
    arr[:, :, 1] = value
    Image.fromarray(arr).save(path, quality=100)
    return path


# ---- revisitop -----------------------------------------------------------------------------

def _revisitop(root: Path, name: str = "roxford5k", *, gnd=None) -> Path:
    imlist = ["all_souls_000001", "all_souls_000002", "radcliffe_000003", "magdalen_000004"]
    qimlist = ["all_souls_000001", "radcliffe_000003"]
    for n in imlist:
        _jpg(root / "jpg" / f"{n}.jpg")
    if gnd is None:
        gnd = {
            "imlist": imlist,
            "qimlist": qimlist,
            "gnd": [
                {"bbx": [2.4, 1.5, 9.6, 7.0], "easy": [1], "hard": [], "junk": [3]},
                {"bbx": None, "easy": [], "hard": [2], "junk": []},
            ],
        }
    with open(root / f"gnd_{name}.pkl", "wb") as f:
        pickle.dump(gnd, f)
    return root


def test_revisitop_loads_paths_gnd_and_bbx(tmp_path):
    root = _revisitop(tmp_path / "roxford5k")
    ds = load_revisitop(root)
    assert isinstance(ds, RetrievalDataset)
    assert ds.name == "roxford5k" and ds.protocol == "revisitop" and ds.nb == 4 and ds.nq == 2
    assert ds.gallery_paths[2] == root / "jpg" / "radcliffe_000003.jpg"
    assert ds.query_ids == ("all_souls_000001", "radcliffe_000003")
    assert ds.gnd[0]["easy"].tolist() == [1] and ds.gnd[0]["junk"].tolist() == [3]
    assert ds.gnd[1]["hard"].dtype == np.int64 and ds.gnd[1]["easy"].size == 0
    assert not ds.gnd[0]["easy"].flags.writeable
    assert ds.query_bbx == ((2.4, 1.5, 9.6, 7.0), None)
    assert ds.n_distractors == 0


def test_revisitop_query_crop_follows_pil_rounding(tmp_path):
    ds = load_revisitop(_revisitop(tmp_path / "roxford5k"))
    crop = ds.load_query_image(0)
    # bbx [2.4, 1.5, 9.6, 7.0] -> round -> x 2..10, y 2..7 (Python rounds 1.5 to 2) -> 8 x 5
    assert crop.shape == (5, 8, 3) and crop.dtype == np.uint8
    full = ds.load_gallery_image(0)
    assert full.shape == (12, 16, 3)
    np.testing.assert_array_equal(crop, full[2:7, 2:10])
    assert ds.load_query_image(1).shape == (12, 16, 3)  # bbx None -> whole image
    with pytest.raises(ConfigError, match="out of range"):
        ds.load_query_image(2)


def test_revisitop_generic_name_and_distractors(tmp_path):
    root = _revisitop(tmp_path / "bench", name="asymfuse-skimage")
    dist = tmp_path / "revisitop1m"
    for rel in ("aa/x1.jpg", "bb/x2.jpg", "bb/x3.jpg"):
        _jpg(dist / "jpg" / rel)
    (dist / "revisitop1m.txt").write_text("aa/x1.jpg\nbb/x2.jpg\n\nbb/x3.jpg\n")
    ds = load_revisitop(root, name="asymfuse-skimage", distractors_root=dist)
    assert ds.name == "asymfuse-skimage" and ds.nb == 7 and ds.n_distractors == 3
    assert ds.gallery_paths[4] == dist / "jpg" / "aa" / "x1.jpg"
    assert ds.gallery_ids[-1] == "bb/x3.jpg"
    assert ds.gnd[0]["junk"].tolist() == [3]  # indices of the dataset itself are unchanged
    with pytest.raises(CorruptDataError, match="distractor list"):
        load_revisitop(root, name="asymfuse-skimage", distractors_root=tmp_path / "nowhere")


def test_revisitop_missing_files_name_the_file_and_source(tmp_path):
    root = tmp_path / "roxford5k"
    root.mkdir()
    with pytest.raises(CorruptDataError, match=r"gnd_roxford5k\.pkl.*revisitop"):
        load_revisitop(root)
    _revisitop(root)
    (root / "jpg" / "magdalen_000004.jpg").unlink()
    with pytest.raises(CorruptDataError, match="1 of 4 roxford5k gallery images are missing"):
        load_revisitop(root)
    assert load_revisitop(root, check_files=False).nb == 4


@pytest.mark.parametrize("payload, match", [
    ({"imlist": [], "gnd": []}, r"lacks key\(s\) \['qimlist'\]"),
    (["not", "a", "dict"], "not a dict"),
    ({"imlist": ["a"], "qimlist": ["a"], "gnd": [{"easy": [0], "hard": []}]}, "easy, hard and junk"),
    ({"imlist": ["a"], "qimlist": ["a", "a"], "gnd": [{"easy": [], "hard": [], "junk": []}]},
     "1 entries for 2"),
])
def test_revisitop_wrong_pickle_layout(tmp_path, payload, match):
    root = tmp_path / "roxford5k"
    (root / "jpg").mkdir(parents=True)
    _jpg(root / "jpg" / "a.jpg")
    with open(root / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump(payload, f)
    with pytest.raises(CorruptDataError, match=match):
        load_revisitop(root)


def test_revisitop_corrupt_pickle_and_bad_indices(tmp_path):
    root = _revisitop(tmp_path / "roxford5k")
    (root / "gnd_roxford5k.pkl").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CorruptDataError, match="not a readable pickle"):
        load_revisitop(root)
    bad = {"imlist": ["all_souls_000001"], "qimlist": ["all_souls_000001"],
           "gnd": [{"easy": [5], "hard": [], "junk": []}]}
    _revisitop(tmp_path / "roxford5k", gnd=bad)
    with pytest.raises(CorruptDataError, match="gallery has 1 images"):
        load_revisitop(root)


# ---- GLDv2 ---------------------------------------------------------------------------------

def _gldv2(root: Path, *, nested: bool = True) -> Path:
    index = ["aaa0000000000001", "abc0000000000002", "bcd0000000000003"]
    test = ["cde0000000000004", "def0000000000005", "efa0000000000006", "fab0000000000007"]
    for split, ids in (("index", index), ("test", test)):
        for v in ids:
            sub = Path(v[0], v[1], v[2]) if nested else Path()
            _jpg(root / split / sub / f"{v}.jpg")
    (root / "index.csv").write_text("id\n" + "\n".join(index) + "\n")
    (root / "test.csv").write_text("id\n" + "\n".join(test) + "\n")
    (root / "retrieval_solution_v2.1.csv").write_text(
        "id,images,Usage\n"
        f"{test[0]},{index[2]} {index[0]},Public\n"
        f"{test[1]},None,Ignored\n"
        f"{test[2]},{index[1]},Private\n"
    )
    return root


def test_gldv2_retrieval_nested_layout(tmp_path):
    ds = load_gldv2_retrieval(_gldv2(tmp_path))
    assert ds.protocol == "gldv2" and ds.nb == 3
    assert ds.query_ids == ("cde0000000000004", "efa0000000000006")  # Ignored row left out
    assert ds.gnd[0]["ok"].tolist() == [2, 0] and ds.gnd[1]["ok"].tolist() == [1]
    assert ds.gallery_paths[1] == tmp_path / "index" / "a" / "b" / "c" / "abc0000000000002.jpg"
    assert ds.query_paths[0] == tmp_path / "test" / "c" / "d" / "e" / "cde0000000000004.jpg"
    assert all(p.is_file() for p in ds.gallery_paths + ds.query_paths)
    public = load_gldv2_retrieval(tmp_path, usages=("Public",))
    assert public.query_ids == ("cde0000000000004",)


def test_gldv2_retrieval_flat_layout_and_errors(tmp_path):
    ds = load_gldv2_retrieval(_gldv2(tmp_path, nested=False))
    assert ds.gallery_paths[0] == tmp_path / "index" / "aaa0000000000001.jpg"
    with pytest.raises(ConfigError, match="usages"):
        load_gldv2_retrieval(tmp_path, usages=("Ignored",))
    (tmp_path / "retrieval_solution_v2.1.csv").write_text("id,images,Usage\ncde0000000000004,zzz9,Public\n")
    with pytest.raises(CorruptDataError, match="zzz9"):
        load_gldv2_retrieval(tmp_path)
    (tmp_path / "retrieval_solution_v2.1.csv").write_text("id,images\n")
    with pytest.raises(CorruptDataError, match=r"lacks column\(s\) \['Usage'\]"):
        load_gldv2_retrieval(tmp_path)
    (tmp_path / "index.csv").unlink()
    with pytest.raises(CorruptDataError, match=r"index\.csv.*google-landmark"):
        load_gldv2_retrieval(tmp_path)


def test_gldv2_train_nested_and_flat(tmp_path):
    ids = ["0a1b2c3d4e5f6a7b", "1b2c3d4e5f6a7b8c", "2c3d4e5f6a7b8c9d"]
    for v in ids:
        _jpg(tmp_path / "train" / v[0] / v[1] / v[2] / f"{v}.jpg")
    (tmp_path / "train.csv").write_text(
        "id,url,landmark_id\n"
        f"{ids[0]},http://x/0.jpg,1003\n{ids[1]},http://x/1.jpg,27\n{ids[2]},http://x/2.jpg,1003\n")
    ts = load_gldv2_train(tmp_path)
    assert isinstance(ts, TrainingSet)
    assert ts.class_names == ("27", "1003")  # numeric order, not string order
    assert ts.labels.tolist() == [1, 0, 1]
    assert ts.paths[0].is_file()
    assert ts.classes_with_fewer_than(2) == ["27"]
    # flat layout: <root>/<id>.jpg
    flat = tmp_path / "flat"
    for v in ids:
        _jpg(flat / f"{v}.jpg")
    (flat / "train_clean.csv").write_text(f"landmark_id,images\n27,{ids[1]}\n1003,{ids[0]} {ids[2]}\n")
    clean = load_gldv2_train(flat, csv="train_clean.csv")
    assert clean.paths[0] == flat / f"{ids[1]}.jpg" and clean.labels.tolist() == [0, 1, 1]
    (flat / "train_clean.csv").write_text(f"landmark_id,images\nx27,{ids[1]}\n")
    with pytest.raises(CorruptDataError, match="non-integer landmark_id"):
        load_gldv2_train(flat, csv="train_clean.csv")
    with pytest.raises(CorruptDataError, match=r"train\.csv' does not exist.*google-landmark"):
        load_gldv2_train(tmp_path / "train")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "train.csv").write_text("id,url,landmark_id\nabc0,u,1\n")
    with pytest.raises(CorruptDataError, match="was not found"):
        load_gldv2_train(tmp_path / "empty")


# ---- Holidays / UKBench ---------------------------------------------------------------------

def test_holidays_groups_queries_and_self_junk(tmp_path):
    names = ["100000", "100001", "100002", "100100", "100101", "100200"]
    for n in names:
        _jpg(tmp_path / "jpg" / f"{n}.jpg")
    ds = load_holidays(tmp_path)
    assert ds.protocol == "holidays" and ds.nb == 6
    assert ds.query_ids == ("100000", "100100", "100200")
    assert ds.gnd[0]["ok"].tolist() == [1, 2] and ds.gnd[0]["junk"].tolist() == [0]
    assert ds.gnd[1]["ok"].tolist() == [4] and ds.gnd[1]["junk"].tolist() == [3]
    assert ds.gnd[2]["ok"].size == 0  # a query alone in its group: skipped by the metrics
    assert ds.query_paths[1] == tmp_path / "jpg" / "100100.jpg"
    assert ds.load_query_image(0).shape == (12, 16, 3)  # no bbx: the whole image


def test_holidays_errors(tmp_path):
    _jpg(tmp_path / "100001.jpg")
    with pytest.raises(CorruptDataError, match="group 1000 has 0 query"):
        load_holidays(tmp_path)
    _jpg(tmp_path / "holiday.jpg")
    with pytest.raises(CorruptDataError, match="six digits"):
        load_holidays(tmp_path)
    with pytest.raises(CorruptDataError, match="lear.inrialpes.fr"):
        load_holidays(tmp_path / "missing")


def test_ukbench_groups_of_four(tmp_path):
    for n in range(8):
        _jpg(tmp_path / "full" / f"ukbench{n:05d}.jpg")
    ds = load_ukbench(tmp_path)
    assert ds.protocol == "ukbench" and ds.nb == ds.nq == 8
    assert ds.query_paths == ds.gallery_paths
    assert ds.gnd[5]["ok"].tolist() == [4, 5, 6, 7]  # the query itself included
    assert ds.gnd[0]["junk"].size == 0
    (tmp_path / "full" / "ukbench00006.jpg").unlink()
    with pytest.raises(CorruptDataError, match="group 1 .* incomplete"):
        load_ukbench(tmp_path)


# ---- image folder ------------------------------------------------------------------------

def test_image_folder(tmp_path):
    _jpg(tmp_path / "zebra" / "1.jpg")
    _jpg(tmp_path / "zebra" / "sub" / "2.PNG")
    _jpg(tmp_path / "ant" / "a.jpg")
    (tmp_path / "ant" / "notes.txt").write_text("ignored")
    (tmp_path / "empty").mkdir()
    ts = load_image_folder(tmp_path)
    assert ts.class_names == ("ant", "empty", "zebra")
    assert ts.labels.tolist() == [0, 2, 2]
    assert ts.paths[2] == tmp_path / "zebra" / "sub" / "2.PNG"
    assert ts.class_counts().tolist() == [1, 0, 2]
    assert ts.classes_with_fewer_than(2) == ["ant", "empty"]
    assert ts.classes_with_fewer_than(1) == ["empty"]
    with pytest.raises(ConfigError):
        ts.classes_with_fewer_than(0)
    with pytest.raises(CorruptDataError, match="no class sub-folders"):
        load_image_folder(tmp_path / "ant")


def test_folder_retrieval_first_image_of_each_class_queries_the_rest(tmp_path):
    for name in ("ant/a.jpg", "ant/b.jpg", "ant/c.jpg", "bee/x.jpg", "cat/1.jpg", "cat/2.jpg"):
        _jpg(tmp_path / name)
    ds = load_folder_retrieval(tmp_path)
    assert ds.protocol == "holidays" and ds.nb == 6
    assert ds.gallery_ids == ("ant/a.jpg", "ant/b.jpg", "ant/c.jpg", "bee/x.jpg", "cat/1.jpg", "cat/2.jpg")
    assert ds.query_ids == ("ant/a.jpg", "cat/1.jpg")  # bee has one image: no query
    assert ds.gnd[0]["ok"].tolist() == [1, 2] and ds.gnd[0]["junk"].tolist() == [0]
    assert ds.gnd[1]["ok"].tolist() == [5] and ds.gnd[1]["junk"].tolist() == [4]
    assert create_dataset("folder-retrieval", root=tmp_path).query_ids == ds.query_ids
    with pytest.raises(CorruptDataError, match="holds two images"):
        load_folder_retrieval(_single_images(tmp_path / "singles"))


def _single_images(root: Path) -> Path:
    _jpg(root / "one" / "a.jpg")
    _jpg(root / "two" / "b.jpg")
    return root


# ---- registry and layering ------------------------------------------------------------------

def test_registry_creates_each_kind(tmp_path):
    assert {"roxford5k", "rparis6k", "revisitop", "gldv2-retrieval", "gldv2-train", "holidays",
            "ukbench", "image-folder"} <= set(dataset_names())
    root = _revisitop(tmp_path / "roxford5k")
    assert create_dataset("roxford5k", root=root).name == "roxford5k"
    generic = _revisitop(tmp_path / "b", name="asymfuse-skimage")
    assert create_dataset("revisitop", root=generic, name="asymfuse-skimage").name == "asymfuse-skimage"
    for n in range(4):
        _jpg(tmp_path / "uk" / f"ukbench{n:05d}.jpg")
    assert create_dataset("ukbench", root=tmp_path / "uk").nq == 4
    with pytest.raises(UnknownNameError, match="roxford5k"):
        create_dataset("oxford105k", root=root)
    with pytest.raises(ConfigError, match="accepted keyword options"):
        create_dataset("roxford5k", root=root, name="rparis6k")


def test_loaders_are_torch_free():
    code = ("import sys; import asymfuse.cloud.data.registry; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
