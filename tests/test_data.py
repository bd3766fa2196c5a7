"""hpo.sources and hpo.data: formats, decode-once caching, splits and errors, on small data."""
from __future__ import annotations

import pickle
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import (
    class_names,
    make_images,
    write_image_folder,
    write_parquet_dataset,
    write_parquet_split,
)
from hpo import sources
from hpo.data import DataError, Dataset, channel_stats, decode_count, load_dataset

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10"


def rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in x}


def test_parquet_loads_with_classes_from_metadata(tiny_parquet, cache_dir):
    ds = load_dataset(tiny_parquet, cache_dir=cache_dir)
    assert isinstance(ds, Dataset)
    assert ds.x_train.shape == (540, 3, 32, 32) and ds.x_val.shape == (60, 3, 32, 32)
    assert ds.x_test.shape == (200, 3, 32, 32) and ds.y_test.shape == (200,)
    for x in (ds.x_train, ds.x_val, ds.x_test):
        assert x.dtype == np.uint8 and x.flags.c_contiguous
    for y in (ds.y_train, ds.y_val, ds.y_test):
        assert y.dtype == np.int64 and y.min() >= 0 and y.max() < 10
    assert ds.classes == tuple(class_names(10)) and ds.num_classes == 10
    assert ds.image_shape == (3, 32, 32)
    assert len(ds.fingerprint) == 16 and int(ds.fingerprint, 16) >= 0
    assert "train=540" in repr(ds)


def test_pixels_survive_decoding(tmp_path, cache_dir):
    root = write_parquet_dataset(tmp_path / "d", n_train=20, n_test=0, seed=3)
    ds = load_dataset(root, val_fraction=0.0, cache_dir=cache_dir)
    x, y = make_images(20, seed=3)
    assert ds.x_test is None
    assert rows(ds.x_train) == rows(x.transpose(0, 3, 1, 2))  # PNG is lossless


def test_second_load_uses_cache_and_decodes_nothing(tiny_parquet, cache_dir, monkeypatch):
    before = decode_count()
    first = load_dataset(tiny_parquet, cache_dir=cache_dir)
    assert decode_count() - before == 800
    assert len(list(cache_dir.glob("data-*.npz"))) == 1
    assert not list(cache_dir.glob(".*"))  # no temporary file left behind

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache should have been used")

    monkeypatch.setattr(sources, "_decode", no_decoding)
    second = load_dataset(tiny_parquet, cache_dir=cache_dir)
    assert decode_count() - before == 800
    assert second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(second.x_train, first.x_train)
    np.testing.assert_array_equal(second.x_test, first.x_test)
    assert second.classes == first.classes


def test_cache_key_follows_settings_and_files(tmp_path, cache_dir):
    root = write_parquet_dataset(tmp_path / "d", n_train=30, n_test=10)
    a = load_dataset(root, cache_dir=cache_dir)
    b = load_dataset(root, cache_dir=cache_dir, image_size=16)
    assert b.image_shape == (3, 16, 16) and b.fingerprint != a.fingerprint
    assert len(list(cache_dir.glob("data-*.npz"))) == 2
    write_parquet_dataset(root, n_train=30, n_test=10, seed=1)  # new content, new mtime
    before = decode_count()
    c = load_dataset(root, cache_dir=cache_dir)
    assert decode_count() - before == 40
    assert c.fingerprint != a.fingerprint


def test_damaged_cache_file_is_decoded_again(tmp_path, cache_dir):
    root = write_parquet_dataset(tmp_path / "d", n_train=30, n_test=0)
    a = load_dataset(root, cache_dir=cache_dir)
    (cache_file,) = cache_dir.glob("data-*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    b = load_dataset(root, cache_dir=cache_dir)
    assert b.fingerprint == a.fingerprint
    np.testing.assert_array_equal(b.x_train, a.x_train)


def test_default_cache_dir_comes_from_env(tmp_path, monkeypatch):
    root = write_parquet_dataset(tmp_path / "d", n_train=20, n_test=0)
    monkeypatch.setenv("HPO_CACHE", str(tmp_path / "env_cache"))
    load_dataset(root)
    assert len(list((tmp_path / "env_cache").glob("data-*.npz"))) == 1


def test_val_split_disjoint_and_deterministic(tiny_parquet, cache_dir):
    a = load_dataset(tiny_parquet, seed=0, cache_dir=cache_dir)
    b = load_dataset(tiny_parquet, seed=0, cache_dir=cache_dir)
    c = load_dataset(tiny_parquet, seed=1, cache_dir=cache_dir)
    train, val = rows(a.x_train), rows(a.x_val)
    assert not train & val and len(train | val) == 600  # disjoint, nothing lost
    np.testing.assert_array_equal(a.x_val, b.x_val)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert a.fingerprint == b.fingerprint
    assert rows(c.x_val) != val and c.fingerprint != a.fingerprint
    none = load_dataset(tiny_parquet, val_fraction=0.0, cache_dir=cache_dir)
    assert len(none.x_val) == 0 and len(none.x_train) == 600


def test_fraction_subsets_train_and_keeps_test_whole(tiny_parquet, cache_dir):
    ds = load_dataset(tiny_parquet, fraction=0.5, val_fraction=0.2, cache_dir=cache_dir)
    assert len(ds.y_train) + len(ds.y_val) == 300 and len(ds.y_val) == 60
    assert len(ds.y_test) == 200
    again = load_dataset(tiny_parquet, fraction=0.5, val_fraction=0.2, cache_dir=cache_dir)
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    full = load_dataset(tiny_parquet, val_fraction=0.2, cache_dir=cache_dir)
    assert full.fingerprint != ds.fingerprint


@pytest.mark.parametrize("kwargs", [{"fraction": 0.0}, {"fraction": 1.5},
                                    {"val_fraction": -0.1}, {"val_fraction": 0.95},
                                    {"channels": 2}, {"image_size": 0}])
def test_bad_arguments_raise_value_error(tiny_parquet, cache_dir, kwargs):
    with pytest.raises(ValueError):
        load_dataset(tiny_parquet, cache_dir=cache_dir, **kwargs)


def test_without_test_and_train_and_val(tiny_parquet, cache_dir):
    ds = load_dataset(tiny_parquet, cache_dir=cache_dir)
    shipped = ds.without_test()
    assert shipped.x_test is None and shipped.y_test is None
    assert shipped.x_train is ds.x_train and shipped.fingerprint == ds.fingerprint
    final = ds.train_and_val()
    assert final.x_train.shape == (600, 3, 32, 32) and final.y_train.shape == (600,)
    assert final.x_val.shape == (0, 3, 32, 32) and final.y_val.dtype == np.int64
    assert final.x_test is ds.x_test and final.fingerprint != ds.fingerprint
    assert rows(final.x_train) == rows(ds.x_train) | rows(ds.x_val)


def test_image_folder_grayscale_non_square_and_resize(tmp_path, cache_dir):
    root = write_image_folder(tmp_path / "imgs", n_per_class=6, size=(40, 30), channels=1,
                              num_classes=3)
    ds = load_dataset(root, val_fraction=0.25, cache_dir=cache_dir)
    assert ds.image_shape == (1, 30, 40)  # width 40, height 30; grayscale detected
    assert ds.classes == ("class0", "class1", "class2")
    assert len(ds.y_train) + len(ds.y_val) == 18 and len(ds.y_test) == 18
    small = load_dataset(root, image_size=24, cache_dir=cache_dir)
    assert small.image_shape == (1, 24, 24) and small.x_test.shape == (18, 1, 24, 24)
    rgb = load_dataset(root, channels=3, cache_dir=cache_dir)
    assert rgb.image_shape == (3, 30, 40)
    np.testing.assert_array_equal(rgb.x_test[:, 0], rgb.x_test[:, 1])  # gray stays gray
    for c in range(3):  # every label is the folder its image came from
        assert {int(y) for y in ds.y_test[ds.y_test == c]} == {c}


def test_image_folder_without_train_subfolder_has_no_test(tmp_path, cache_dir):
    root = write_image_folder(tmp_path / "imgs", n_per_class=4, num_classes=2,
                              with_test=False)
    ds = load_dataset(root / "train", val_fraction=0.25, cache_dir=cache_dir)
    assert ds.x_test is None and ds.classes == ("class0", "class1")
    assert ds.image_shape == (3, 32, 32) and len(ds.y_train) == 6


def test_mixed_sizes_need_image_size(tmp_path, cache_dir):
    root = write_image_folder(tmp_path / "imgs", n_per_class=3, size=32, num_classes=2,
                              with_test=False)
    odd = np.zeros((30, 40, 3), np.uint8)
    Image.fromarray(odd).save(root / "train" / "class1" / "odd.png")
    with pytest.raises(DataError, match=r"different sizes \(32x32, 40x30\); set image_size"):
        load_dataset(root, cache_dir=cache_dir)
    ds = load_dataset(root, image_size=32, cache_dir=cache_dir, val_fraction=0.0)
    assert ds.x_train.shape == (7, 3, 32, 32)


def test_truncated_parquet_names_the_file(tmp_path, tiny_parquet, cache_dir):
    root = tmp_path / "cut"
    shutil.copytree(tiny_parquet, root)
    file = root / "train.parquet"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(DataError, match="not a readable Parquet file") as err:
        load_dataset(root, cache_dir=cache_dir)
    assert str(file) in str(err.value) and "\n" not in str(err.value)


def test_parquet_without_label_column(tmp_path, cache_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = tmp_path / "nolabel.parquet"
    pq.write_table(pa.table({"img": pa.array([b"x"]), "target": pa.array([0])}), file)
    with pytest.raises(DataError, match="nolabel.parquet: no label column"):
        load_dataset(file, cache_dir=cache_dir)


def test_single_parquet_file_and_hub_layout(tmp_path, cache_dir):
    x, y = make_images(50, num_classes=4, seed=5)
    single = write_parquet_split(tmp_path / "one.parquet", x[:20], y[:20], classes=None)
    ds = load_dataset(single, cache_dir=cache_dir)
    assert ds.x_test is None and ds.classes == ("0", "1", "2", "3")

    hub = tmp_path / "hub" / "plain_text"
    hf = '{"info": {"features": {"img": {"_type": "Image"}, ' \
         '"label": {"names": ["a", "b", "c", "d"], "_type": "ClassLabel"}}}}'
    for i, (lo, hi) in enumerate([(0, 20), (20, 40)]):
        write_parquet_split(hub / f"train-0000{i}-of-00002.parquet", x[lo:hi], y[lo:hi],
                            classes=None, metadata={"huggingface": hf})
    write_parquet_split(hub / "test-00000-of-00001.parquet", x[40:], y[40:], classes=None,
                        split="test", metadata={"huggingface": hf})
    ds = load_dataset(tmp_path / "hub", val_fraction=0.0, cache_dir=cache_dir)
    assert ds.classes == ("a", "b", "c", "d")
    assert len(ds.y_train) == 40 and len(ds.y_test) == 10
    assert rows(ds.x_train) == rows(x[:40].transpose(0, 3, 1, 2))


def test_json_classes_metadata_and_bad_labels(tmp_path, cache_dir):
    x, y = make_images(12, num_classes=3)
    write_parquet_split(tmp_path / "j" / "train.parquet", x, y, classes=None,
                        metadata={"classes": '["cat", "dog", "emu"]'})
    assert load_dataset(tmp_path / "j", cache_dir=cache_dir).classes == ("cat", "dog", "emu")
    write_parquet_split(tmp_path / "k" / "train.parquet", x, y, classes=["cat", "dog"])
    with pytest.raises(DataError, match="labels outside 0..1"):
        load_dataset(tmp_path / "k", cache_dir=cache_dir)


def test_unrecognised_and_missing_sources(tmp_path, cache_dir):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="junk: no dataset hpo recognises here"):
        load_dataset(tmp_path / "junk", cache_dir=cache_dir)
    with pytest.raises(DataError, match="nowhere: does not exist"):
        load_dataset(tmp_path / "nowhere", cache_dir=cache_dir)
    with pytest.raises(DataError, match="notes.txt: no dataset"):
        load_dataset(tmp_path / "junk" / "notes.txt", cache_dir=cache_dir)


def write_cifar_batches(root: Path, n_per_batch: int = 8, n_test: int = 6) -> np.ndarray:
    """torchvision's cifar-10-batches-py/ with tiny batches in CIFAR's own pickle format."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    x, y = make_images(5 * n_per_batch + n_test, num_classes=10, seed=7)
    flat = x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # CIFAR rows: R plane, G, B
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        lo, hi = i * n_per_batch, (i + 1) * n_per_batch if i < 5 else len(x)
        entry = {"batch_label": name, "labels": y[lo:hi].tolist(), "data": flat[lo:hi],
                 "filenames": [f"{j}.png" for j in range(lo, hi)]}
        (d / name).write_bytes(pickle.dumps(entry))
    meta = {"num_cases_per_batch": n_per_batch, "label_names": class_names(10),
            "num_vis": 3072}
    (d / "batches.meta").write_bytes(pickle.dumps(meta))
    return x


def test_torchvision_cifar_folder(tmp_path, cache_dir):
    x = write_cifar_batches(tmp_path / "tv")
    for source in (tmp_path / "tv", tmp_path / "tv" / "cifar-10-batches-py"):
        ds = load_dataset(source, val_fraction=0.25, cache_dir=cache_dir)
        assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_test.shape == (6, 3, 32, 32)
        assert ds.classes == tuple(class_names(10))
        assert rows(ds.x_test) == rows(x[40:].transpose(0, 3, 1, 2))
    gray = load_dataset(tmp_path / "tv", channels=1, image_size=16, cache_dir=cache_dir)
    assert gray.image_shape == (1, 16, 16)


def test_torchvision_download_source(tmp_path, cache_dir, monkeypatch):
    # a stand-in torchvision: importing the real one takes seconds, and it would go online
    fake = types.ModuleType("torchvision.datasets")
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake)
    write_cifar_batches(tmp_path / "tv")
    calls = []
    fake.CIFAR10 = lambda root, train, download: calls.append((root, train, download))
    ds = load_dataset(f"torchvision:{tmp_path / 'tv'}", cache_dir=cache_dir)
    assert len(ds.y_test) == 6 and calls[0] == (str(tmp_path / "tv"), True, True)

    def offline(root, train, download):
        raise RuntimeError("<urlopen error [Errno -3] name resolution>\nmore detail")

    fake.CIFAR10 = offline
    with pytest.raises(DataError, match="could not download CIFAR-10") as err:
        load_dataset(f"torchvision:{tmp_path / 'x'}", cache_dir=cache_dir)
    assert "\n" not in str(err.value)


def test_channel_stats():
    x = np.zeros((4, 2, 3, 3), np.uint8)
    x[:, 1] = 255
    x[:2, 0] = 102  # channel 0: half 0.4, half 0.0
    mean, std = channel_stats(x)
    assert mean == pytest.approx([0.2, 1.0]) and std == pytest.approx([0.2, 0.0], abs=1e-6)


def test_synthetic_data_is_learnable(tiny_parquet, cache_dir):
    """The conftest images are what other modules' training tests rely on: a nearest-class-
    mean classifier on raw pixels must already beat chance (10%) by far."""
    ds = load_dataset(tiny_parquet, cache_dir=cache_dir)
    xt, xv = ds.x_train.reshape(len(ds.x_train), -1) / 255, ds.x_val.reshape(len(ds.x_val), -1)
    means = np.stack([xt[ds.y_train == k].mean(0) for k in range(10)])
    pred = np.argmin(((xv[:, None] / 255 - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == ds.y_val).mean() > 0.5


@pytest.mark.e2e  # decodes all 60,000 images once: about 7 s on 2 cores
@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason="shared CIFAR-10 Parquet not present")
def test_real_cifar10_parquet(cache_dir):
    ds = load_dataset(SHARED_CIFAR, fraction=0.02, cache_dir=cache_dir)
    assert len(ds.y_train) + len(ds.y_val) == 1000 and ds.x_test.shape == (10000, 3, 32, 32)
    assert ds.classes[:3] == ("airplane", "automobile", "bird") and ds.num_classes == 10
    assert 0.3 < channel_stats(ds.x_train)[0][0] < 0.7


def test_undecodable_image_names_the_file(tmp_path, cache_dir):
    root = write_image_folder(tmp_path / "imgs", n_per_class=40, size=100, num_classes=2,
                              with_test=False)  # 100x100: decoded on the thread pool
    bad = root / "train" / "class1" / "00007.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match="00007.png: cannot") as err:
        load_dataset(root, cache_dir=cache_dir)
    assert str(bad) in str(err.value) and not list(cache_dir.glob("*"))
