"""Dataset readers against tiny files written in each official on-disk format."""

from __future__ import annotations

import gzip
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from invprop import names
from invprop.data import DATASETS, SourceOptions, get_source
from invprop.data.cifar import NumpyOnlyUnpickler
from invprop.data.idx import read_idx
from invprop.data.sources import SPLIT_SEED, TEST_FRACTION
from invprop.errors import InvpropError
from invprop.sampling import stratified_split, stratified_subset


def read(data_config, name: str, root: Path | None = None, **data):
    cfg = data_config(name, root=str(root) if root else None, **data)
    return get_source(name).read(SourceOptions.from_config(cfg, name))


def assert_splits(raw, written) -> None:
    np.testing.assert_array_equal(raw.train.images, written.train_images)
    np.testing.assert_array_equal(raw.train.labels, written.train_labels)
    np.testing.assert_array_equal(raw.test.images, written.test_images)
    np.testing.assert_array_equal(raw.test.labels, written.test_labels)
    assert raw.train.images.dtype == np.uint8 and raw.train.labels.dtype == np.int64


def test_registry_covers_every_configurable_dataset():
    assert set(DATASETS) == set(names.DATASETS)
    with pytest.raises(
        InvpropError, match=r"unknown dataset 'mnist'; allowed: cifar10, .* \(set data"
    ):
        get_source("mnist")


# --- Fashion-MNIST (idx) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("gz", "sub"), [(True, ""), (False, ""), (True, "FashionMNIST/raw")], ids=["gz", "plain", "tv"]
)
def test_fashion_mnist_layouts(tmp_path, writers, data_config, gz, sub):
    written = writers.fashion_mnist(tmp_path, gz=gz, sub=sub)
    raw = read(data_config, "fashion_mnist", tmp_path)
    assert_splits(raw, written)
    assert raw.classes[0] == "T-shirt/top" and len(raw.classes) == 10
    assert raw.train.images.shape == (40, 1, 28, 28)
    assert len(raw.sources) == 4


@settings(max_examples=40, deadline=None)
@given(
    array=hnp.arrays(
        dtype=st.sampled_from(["u1", "i1", ">i2", ">i4", ">f4", ">f8"]),
        shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5),
    ),
    gz=st.booleans(),
)
def test_idx_round_trip(writers, array, gz):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a.idx"
        writers.idx_file(path, array, gz=gz)
        back = read_idx(path)
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_idx_count_mismatch(tmp_path, writers, data_config):
    writers.fashion_mnist(tmp_path)
    writers.idx_file(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(19, np.uint8))
    with pytest.raises(InvpropError, match=r"t10k-images.*20 images but 19 labels"):
        read(data_config, "fashion_mnist", tmp_path)


def test_idx_truncated_and_not_idx(tmp_path, writers):
    path = tmp_path / "x-idx3-ubyte"
    writers.idx_file(path, np.zeros((3, 4, 4), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(InvpropError, match="truncated or padded"):
        read_idx(path)
    path.write_bytes(b"\x12\x34\x56\x78rest")
    with pytest.raises(InvpropError, match="not an idx file"):
        read_idx(path)
    path.write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\x04abcd")[:-6])
    with pytest.raises(InvpropError, match="corrupt gzip"):
        read_idx(path)


# --- CIFAR (restricted pickles) --------------------------------------------------------


def test_cifar10(tmp_path, writers, data_config):
    written = writers.cifar10(tmp_path)
    raw = read(data_config, "cifar10", tmp_path)
    assert_splits(raw, written)
    assert raw.classes == written.classes  # decoded from bytes keys and values
    # the folder itself works as a root too
    assert_splits(read(data_config, "cifar10", tmp_path / "cifar-10-batches-py"), written)


def test_cifar100_fine_labels(tmp_path, writers, data_config):
    written = writers.cifar100(tmp_path)
    raw = read(data_config, "cifar100", tmp_path)
    assert_splits(raw, written)
    assert raw.classes == written.classes


@settings(max_examples=30, deadline=None)
@given(
    array=hnp.arrays(
        dtype=st.sampled_from(["u1", "<i8", ">i4", "<f4", "?"]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    ),
    protocol=st.integers(2, 5),
)
def test_restricted_unpickler_loads_numpy_data(array, protocol):
    import io

    obj = {"data": array, "labels": [1, 2], "name": b"", "scalar": np.int64(7)}
    blob = pickle.dumps(obj, protocol=protocol)
    back, expected = NumpyOnlyUnpickler(io.BytesIO(blob)).load(), pickle.loads(blob)
    np.testing.assert_array_equal(back["data"], array)
    assert back["data"].dtype == expected["data"].dtype
    assert back["scalar"] == 7 and back["name"] == b"" and back["labels"] == [1, 2]


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


class Custom:
    pass


@pytest.mark.parametrize("payload", [Evil(), Custom(), print], ids=["os.system", "class", "fn"])
def test_cifar_refuses_non_numpy_globals(tmp_path, writers, data_config, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    writers.cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(pickle.dumps({"data": payload, "labels": []}, protocol=2))
    with pytest.raises(InvpropError, match=r"data_batch_2: refused to load") as error:
        read(data_config, "cifar10", tmp_path)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "pwned").exists()


def test_cifar_corrupt_pickle(tmp_path, writers, data_config):
    writers.cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(InvpropError, match=r"test_batch: corrupt or truncated pickle.*re-extract"):
        read(data_config, "cifar10", tmp_path)


# --- SVHN, STL-10 ----------------------------------------------------------------------


def test_svhn_ten_means_zero(tmp_path, writers, data_config):
    written = writers.svhn(tmp_path)
    raw = read(data_config, "svhn", tmp_path)
    assert_splits(raw, written)
    assert 0 in raw.train.labels and raw.train.labels.max() <= 9


def test_svhn_not_a_mat_file(tmp_path, writers, data_config):
    writers.svhn(tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 but not really")
    with pytest.raises(InvpropError, match=r"test_32x32\.mat: not a readable MATLAB file"):
        read(data_config, "svhn", tmp_path)


def test_stl10_column_major(tmp_path, writers, data_config):
    written = writers.stl10(tmp_path)
    raw = read(data_config, "stl10", tmp_path)
    assert_splits(raw, written)
    assert raw.classes[0] == "airplane"
    assert raw.train.images.flags.c_contiguous


def test_stl10_truncated(tmp_path, writers, data_config):
    writers.stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InvpropError, match=r"test_X\.bin.*not a whole number"):
        read(data_config, "stl10", tmp_path)


# --- built-in and generated ------------------------------------------------------------


def test_digits_fixed_stratified_split(data_config):
    raw = read(data_config, "digits")
    assert len(raw.train) + len(raw.test) == 1797
    assert abs(len(raw.test) - 0.2 * 1797) < 1
    assert raw.train.images.shape[1:] == (1, 8, 8) and raw.train.images.max() == 255
    test_share = np.bincount(raw.test.labels) / np.bincount(
        np.concatenate([raw.train.labels, raw.test.labels])
    )
    assert np.all(np.abs(test_share - 0.2) < 0.02)
    again = read(data_config, "digits")
    np.testing.assert_array_equal(again.test.images, raw.test.images)


def test_synthetic_size_counts_and_learnable(data_config):
    from sklearn.neighbors import KNeighborsClassifier

    raw = read(data_config, "synthetic", image_size=24, channels=3, train_limit=400)
    assert raw.train.images.shape == (400, 3, 24, 24) and len(raw.test) == 500
    assert np.bincount(raw.train.labels).tolist() == [40] * 10
    again = read(data_config, "synthetic", image_size=24, channels=3, train_limit=400)
    np.testing.assert_array_equal(again.train.images, raw.train.images)
    x = raw.train.images.reshape(400, -1) / 255
    xt = raw.test.images.reshape(500, -1) / 255
    accuracy = KNeighborsClassifier(5).fit(x, raw.train.labels).score(xt, raw.test.labels)
    assert accuracy > 0.8
    grey = read(data_config, "synthetic")
    assert grey.train.images.shape == (2000, 1, 28, 28)


# --- subsets ---------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    labels=st.lists(st.integers(-1, 6), min_size=1, max_size=300),
    size=st.integers(0, 320),
    seed=st.integers(0, 2**16),
)
def test_stratified_subset_properties(labels, size, seed):
    labels = np.asarray(labels)
    picked = stratified_subset(labels, size, seed)
    assert len(picked) == min(size, len(labels))
    assert np.all(np.diff(picked) > 0)  # sorted, unique
    groups, counts = np.unique(labels, return_counts=True)
    for group, count in zip(groups, counts, strict=True):
        got = int((labels[picked] == group).sum())
        exact = count * min(size, len(labels)) / len(labels)
        assert abs(got - exact) < 1
    np.testing.assert_array_equal(picked, stratified_subset(labels, size, seed))


@settings(max_examples=30, deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=2, max_size=200))
def test_stratified_split_partitions(labels):
    labels = np.asarray(labels)
    train, test = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    assert len(np.intersect1d(train, test)) == 0
    assert len(train) + len(test) == len(labels)
    assert len(test) == round(0.2 * len(labels))


# --- missing roots ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "cifar100", "svhn", "stl10"])
def test_missing_root_names_key_and_fix(tmp_path, data_config, name):
    with pytest.raises(InvpropError) as error:
        read(data_config, name, tmp_path / "nowhere")
    message = str(error.value)
    assert "nowhere does not exist" in message and "set data.root" in message
    assert "data.download: true" in message and "\n" not in message


def test_empty_root_says_what_is_expected(tmp_path, data_config):
    with pytest.raises(InvpropError, match=r"no cifar-10-batches-py/ .* found in"):
        read(data_config, "cifar10", tmp_path)


def test_transfer_target_root_key(tmp_path):
    from invprop.config import config_from_dict

    cfg = config_from_dict({"transfer": {"targets": ["svhn"], "roots": {"svhn": str(tmp_path)}}})
    opts = SourceOptions.from_config(cfg, "svhn")
    assert opts.root == tmp_path and opts.root_key == "transfer.roots.svhn"
    with pytest.raises(InvpropError, match=r"set transfer\.roots\.svhn"):
        get_source("svhn").read(opts)


def test_download_only_when_asked(tmp_path, writers, data_config, monkeypatch):
    """data.download: true calls torchvision's download (simulated here: no network in
    tests) into the configured root, then reads what it wrote; a failed download is one
    clear line; without the flag nothing is fetched."""
    import invprop.data.svhn as svhn_module

    calls = []

    def fake_download(root):
        calls.append(root)
        writers.svhn(root)

    monkeypatch.setattr(svhn_module, "_download", fake_download)
    root = tmp_path / "svhn"
    with pytest.raises(InvpropError, match=r"data\.download: true"):
        read(data_config, "svhn", root)
    assert calls == []
    raw = read(data_config, "svhn", root, download=True)
    assert calls == [root] and len(raw.train) == 30

    def broken_download(root):
        raise OSError("network is unreachable")

    monkeypatch.setattr(svhn_module, "_download", broken_download)
    with pytest.raises(InvpropError, match=r"download to .* failed \(OSError: network"):
        read(data_config, "svhn", tmp_path / "other", download=True)
