"""Image folders: layouts, lazy decoding, the file index, and bad files."""

from __future__ import annotations

import numpy as np
import pytest

from invprop.data import ImageFileDataset, load_prepared, load_size
from invprop.data import imagefolder as imagefolder_module
from invprop.errors import InvpropError
from invprop.stages.prepare import prepare


def prepare_folder(data_config, root, tmp_path, **data):
    cfg = data_config("imagefolder", root=str(root), **data)
    out = tmp_path / "prepared"
    prepare(cfg, "imagefolder", out, tmp_path / "report.json")
    return load_prepared(out)


def test_class_folders_png_decode_exactly(tmp_path, writers, data_config):
    root = tmp_path / "raw"
    # image_size 28 -> load side 32: 32x32 PNGs decode without resampling
    written = writers.image_folder(root, {"cat": 10, "dog": 5}, size=32)
    ds = prepare_folder(data_config, root, tmp_path, image_size=28)
    assert ds.format == "files" and ds.classes == ["cat", "dog"]
    assert ds.shape == (3, load_size(28), load_size(28)) == (3, 32, 32)
    assert (len(ds.train), len(ds.test)) == (12, 3)
    assert ds.meta["class_counts"] == {"train": [8, 4], "test": [2, 1]}
    assert ds.meta["sources"][0]["kind"] == "folder-content"
    for split in (ds.train, ds.test):
        for i in range(len(split)):
            rel = split.images.files[i]
            np.testing.assert_array_equal(split.images[i], written[rel])
            assert split.labels[i] == ds.classes.index(rel.split("/")[0])
    index = (tmp_path / "prepared" / "train_index.json").read_text()
    assert '"root"' in index and "cat/img_000.png" in index


def test_jpeg_grey_and_resize(tmp_path, writers, data_config):
    root = tmp_path / "raw"
    written = writers.image_folder(root, {"a": 5, "b": 5}, fmt="jpg", size=64, mode="L")
    ds = prepare_folder(data_config, root, tmp_path, image_size=56)
    assert ds.shape == (1, 64, 64)  # every image greyscale -> 1 channel
    image = ds.train.images[0]
    assert image.dtype == np.uint8 and image.shape == (1, 64, 64)
    diff = np.abs(image.astype(int) - written[ds.train.images.files[0]].astype(int))
    assert diff.mean() < 8  # JPEG is lossy
    small = prepare_folder(data_config, root, tmp_path, image_size=24)
    assert small.train.images[0].shape == (1, 28, 28)


def test_flat_folder_is_unlabeled(tmp_path, writers, data_config):
    root = tmp_path / "raw"
    writers.image_folder(root, {None: 10})
    ds = prepare_folder(data_config, root, tmp_path)
    assert ds.classes == [] and (len(ds.train), len(ds.test)) == (8, 2)
    assert set(ds.train.labels.tolist()) == {-1}
    assert ds.meta["unlabeled"] == {"train": 8, "test": 2}


def test_train_val_folders(tmp_path, writers, data_config):
    root = tmp_path / "raw"
    writers.image_folder(root / "train", {"x": 3, "y": 2})
    writers.image_folder(root / "val", {"y": 2, "z": 1})
    ds = prepare_folder(data_config, root, tmp_path)
    assert ds.classes == ["x", "y", "z"]
    assert ds.meta["split"] == "folders train/ and val/"
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1]
    assert ds.test.labels.tolist() == [1, 1, 2]
    assert ds.test.images.files[0] == "val/y/img_000.png"


def test_limits_subset_before_checking(tmp_path, writers, data_config):
    root = tmp_path / "raw"
    writers.image_folder(root, {"a": 20, "b": 20})
    ds = prepare_folder(data_config, root, tmp_path, train_limit=10, test_limit=4)
    assert ds.meta["class_counts"] == {"train": [5, 5], "test": [2, 2]}
    assert ds.meta["native_counts"] == {"train": 32, "test": 8}


def test_image_file_dataset_streams_with_index(tmp_path, writers, data_config):
    import torch

    root = tmp_path / "raw"
    writers.image_folder(root, {"a": 4, "b": 4}, mode="L")
    ds = prepare_folder(data_config, root, tmp_path)
    dataset = ImageFileDataset(ds.train, channels=3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=0)
    images, indices = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, *ds.shape[1:])
    assert indices.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(images[:, 0], images[:, 2])  # grey repeated


@pytest.mark.parametrize("layout", ["empty", "empty_classes", "no_image_files"])
def test_no_images(tmp_path, data_config, layout):
    root = tmp_path / "raw"
    root.mkdir()
    if layout == "empty_classes":
        (root / "cat").mkdir()
    if layout == "no_image_files":
        (root / "README.txt").write_text("not an image")
    with pytest.raises(InvpropError, match=r"no images found in .*raw.*point data.root"):
        prepare_folder(data_config, root, tmp_path)


def test_empty_class_folder_and_mixed_layout(tmp_path, writers, data_config):
    root = tmp_path / "raw"
    writers.image_folder(root, {"cat": 3})
    (root / "dog").mkdir()
    with pytest.raises(InvpropError, match=r"class folder .*dog holds no images"):
        prepare_folder(data_config, root, tmp_path)
    writers.image_folder(root, {None: 1})
    with pytest.raises(InvpropError, match="holds both images"):
        prepare_folder(data_config, root, tmp_path)


def test_corrupt_and_truncated_images(tmp_path, writers, data_config):
    root = tmp_path / "raw"
    writers.image_folder(root, {"a": 3, "b": 3}, fmt="jpg")
    bad = root / "b" / "img_001.jpg"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    with pytest.raises(InvpropError, match=r"b/img_001.jpg: corrupt or truncated image"):
        prepare_folder(data_config, root, tmp_path)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InvpropError, match=r"img_001.jpg: corrupt or truncated image"):
        prepare_folder(data_config, root, tmp_path)


def test_header_check_beyond_threshold(tmp_path, writers, data_config, monkeypatch):
    """Above FULL_CHECK_MAX_FILES only headers are verified: a truncated JPEG in the test
    split (the train split is also sampled for mean/std) passes prepare, and decoding it
    later names the file."""
    root = tmp_path / "raw"
    writers.image_folder(root / "train", {"a": 3, "b": 3}, fmt="jpg", size=128)
    writers.image_folder(root / "test", {"a": 2, "b": 2}, fmt="jpg", size=128)
    bad = root / "test" / "a" / "img_000.jpg"
    bad.write_bytes(bad.read_bytes()[:-100])  # header intact, scan data cut short
    monkeypatch.setattr(imagefolder_module, "FULL_CHECK_MAX_FILES", 2)
    ds = prepare_folder(data_config, root, tmp_path)
    assert ds.meta["sources"][0]["kind"] == "folder-listing"
    assert ds.test.images.files[0] == "test/a/img_000.jpg"
    with pytest.raises(InvpropError, match=r"a/img_000.jpg: cannot decode image"):
        ds.test.images[0]
    monkeypatch.undo()  # within the threshold, prepare decodes everything and refuses it
    with pytest.raises(InvpropError, match=r"a/img_000.jpg: corrupt or truncated image"):
        prepare_folder(data_config, root, tmp_path)


def test_missing_or_unset_root(tmp_path, data_config):
    with pytest.raises(InvpropError, match=r"imagefolder needs a root: set data\.root"):
        prepare(data_config("imagefolder"), "imagefolder", tmp_path / "o", tmp_path / "r.json")
    with pytest.raises(InvpropError, match=r"does not exist; set data\.root"):
        prepare_folder(data_config, tmp_path / "nope", tmp_path)


def test_moved_root_is_reported_on_load(tmp_path, writers, data_config):
    root = tmp_path / "raw"
    writers.image_folder(root, {"a": 3, "b": 3})
    prepare_folder(data_config, root, tmp_path)
    root.rename(tmp_path / "elsewhere")
    with pytest.raises(InvpropError, match=r"train_index.json: image root .*raw does not exist"):
        load_prepared(tmp_path / "prepared")
