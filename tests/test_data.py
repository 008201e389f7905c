"""Tests for qfi_cli.data: the digits split, batching, normalisation, CIFAR augmentation, and loading tiny
MNIST / Fashion-MNIST / CIFAR files written in the real on-disk formats through torchvision's readers."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qfi_cli.data import DATASETS, InMemoryDataset, list_datasets, load_dataset, random_crop_flip
from qfi_cli.errors import QfiError


@pytest.fixture(scope="module")
def digits() -> InMemoryDataset:
    return load_dataset("digits")


def toy(n: int = 37, augment: str | None = None, size: int = 1, channels: int = 1, seed: int = 0) -> InMemoryDataset:
    """With size 1, sample i of the train split has pixel value i % 256 and normalises to i % 256 (pixel_max 1,
    mean 0, std 1), so batches reveal their indices; else random uint8 images scaled by 1/255."""
    g = torch.Generator().manual_seed(seed)
    if size == 1:
        x = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, channels, 1, 1).contiguous()
    else:
        x = torch.randint(1, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 10
    stats = (0.0,) * channels, (1.0,) * channels
    return InMemoryDataset("toy", x, y, x[: n // 2], y[: n // 2], 10, channels, size, *stats, augment=augment,
                           pixel_max=1.0 if size == 1 else 255.0)


# ----------------------------------------------------------------------------------------------- registry / digits


def test_registry_names():
    assert list_datasets() == ["cifar10", "cifar100", "digits", "fashion_mnist", "mnist"]
    assert DATASETS.kind == "data set"
    with pytest.raises(QfiError, match="unknown data set 'imagenet'"):
        load_dataset("imagenet")


def test_digits_shapes_sizes_classes(digits):
    ds = digits
    assert (ds.name, ds.num_classes, ds.in_channels, ds.image_size, ds.augment) == ("digits", 10, 1, 8, None)
    assert ds.size("train") == 1347 and ds.size("test") == 450
    assert ds.x_train.shape == (1347, 1, 8, 8) and ds.x_test.shape == (450, 1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64 and ds.y_test.dtype == torch.int64
    assert ds.x_train.min() == 0 and ds.x_train.max() == 16
    assert ds.device == torch.device("cpu")
    # stratified: every class in both splits, in (nearly) the same proportion
    train_counts = torch.bincount(ds.y_train, minlength=10).float()
    test_counts = torch.bincount(ds.y_test, minlength=10).float()
    assert (test_counts > 0).all()
    assert torch.allclose(test_counts / train_counts, torch.full((10,), 450 / 1347), atol=0.01)
    assert len(ds.mean) == len(ds.std) == 1


def test_digits_split_is_fixed(digits):
    again = load_dataset("digits")
    for a, b in [(digits.x_train, again.x_train), (digits.y_train, again.y_train), (digits.x_test, again.x_test)]:
        assert torch.equal(a, b)
    # together the two splits are exactly scikit-learn's 1797 images
    from sklearn.datasets import load_digits

    ours = torch.cat([digits.x_train, digits.x_test]).flatten(1)
    theirs = torch.from_numpy(load_digits().data.astype(np.float32))
    assert torch.equal(torch.unique(ours, dim=0, return_counts=True)[1].sort().values,
                       torch.unique(theirs, dim=0, return_counts=True)[1].sort().values)
    assert torch.equal(torch.unique(ours, dim=0), torch.unique(theirs, dim=0))


# ------------------------------------------------------------------------------------------------------- batching


def test_batches_cover_split_once_in_order(digits):
    xs, ys = zip(*digits.batches("train", 100))
    assert [len(y) for y in ys] == [100] * 13 + [47]
    assert digits.num_batches("train", 100) == 14
    assert torch.equal(torch.cat(ys), digits.y_train)
    assert torch.allclose(torch.cat(xs), digits.normalize(digits.x_train))
    assert all(x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8) for x in xs)


def test_shuffled_batches_are_a_permutation_and_deterministic():
    ds = toy(n=200)
    runs = []
    for seed in (1, 1, 2):
        g = torch.Generator().manual_seed(seed)
        batches = list(ds.batches("train", 32, shuffle=True, generator=g))
        assert len(batches) == ds.num_batches("train", 32) == 7
        idx = torch.cat([x.flatten() for x, _ in batches]).round().long()
        labels = torch.cat([y for _, y in batches])
        assert torch.equal(torch.sort(idx).values, torch.arange(200))  # each sample exactly once
        assert torch.equal(labels, ds.y_train[idx])  # images and labels stay paired
        runs.append(idx)
    assert torch.equal(runs[0], runs[1])  # same seed, same order
    assert not torch.equal(runs[0], runs[2]) and not torch.equal(runs[0], torch.arange(200))


def test_limit_caps_samples():
    ds = toy(n=50)
    assert ds.num_batches("train", 8, limit=20) == 3
    got = torch.cat([y for _, y in ds.batches("train", 8, limit=20)])
    assert torch.equal(got, ds.y_train[:20])
    idx = torch.cat([x.flatten() for x, _ in ds.batches("train", 8, shuffle=True, limit=20,
                                                        generator=torch.Generator().manual_seed(0))])
    assert torch.equal(torch.sort(idx.round().long()).values, torch.arange(20))
    assert ds.num_batches("test", 8, limit=1000) == ds.num_batches("test", 8) == 4
    assert list(ds.batches("train", 8, limit=0)) == []


def test_bad_split_batch_size_limit_raise_qfierror():
    ds = toy()
    with pytest.raises(QfiError, match="unknown split 'val'"):
        ds.size("val")
    with pytest.raises(QfiError, match="batch size"):
        ds.batches("train", 0)  # raised at the call, before iterating
    with pytest.raises(QfiError, match="limit"):
        ds.num_batches("train", 4, limit=-1)


def test_normalisation_zero_mean_unit_std_on_train(digits):
    x = torch.cat([x for x, _ in digits.batches("train", 512)])
    assert abs(x.mean().item()) < 1e-4
    assert abs(x.std().item() - 1) < 1e-2
    xt = torch.cat([x for x, _ in digits.batches("test", 512)])
    assert abs(xt.mean().item()) < 0.1  # test split comes from the same distribution


def test_to_returns_a_copy(digits):
    moved = digits.to("cpu")
    assert moved is not digits and moved.name == digits.name and torch.equal(moved.x_test, digits.x_test)
    if torch.cuda.is_available():
        cuda = digits.to("cuda")
        assert cuda.device.type == "cuda" and digits.device.type == "cpu"
        xb, yb = next(cuda.batches("train", 16, shuffle=True, generator=torch.Generator().manual_seed(0)))
        assert xb.device.type == "cuda" and yb.device.type == "cuda"


# --------------------------------------------------------------------------------------------- cifar augmentation


def crop_candidates(image: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """All crops of the zero-padded image, each also flipped: (2 * (2 * pad + 1) ** 2, C, H, W)."""
    c, h, w = image.shape
    padded = F.pad(image, (pad, pad, pad, pad))
    crops = [padded[:, i : i + h, j : j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    crops += [crop.flip(-1) for crop in crops]
    return torch.stack(crops)


def test_cifar_augmentation_is_a_crop_of_the_padded_image_maybe_flipped():
    ds = toy(n=24, augment="cifar", size=32, channels=3)
    ds = InMemoryDataset(**{**ds.__dict__, "mean": (0.4914, 0.4822, 0.4465), "std": (0.247, 0.2435, 0.2616)})
    g = torch.Generator().manual_seed(3)
    out = torch.cat([x for x, _ in ds.batches("train", 10, augment=True, generator=g)])
    plain = torch.cat([x for x, _ in ds.batches("train", 10)])
    assert out.shape == plain.shape == (24, 3, 32, 32) and out.dtype == torch.float32
    assert not torch.equal(out, plain)
    n_changed = 0
    for i in range(24):
        candidates = ds.normalize(crop_candidates(ds.x_train[i]))
        match = (candidates - out[i]).abs().flatten(1).amax(1) < 1e-5
        assert match.any(), f"sample {i} is no crop/flip of its padded image"
        n_changed += not torch.allclose(out[i], plain[i])
    assert n_changed >= 20  # 1 chance in 162 per sample of drawing the identity
    # deterministic given the generator, and off unless asked for
    again = torch.cat([x for x, _ in ds.batches("train", 10, augment=True, generator=torch.Generator().manual_seed(3))])
    assert torch.equal(out, again)
    assert load_dataset("digits").augment is None


def test_random_crop_flip_hits_every_offset_and_both_flips():
    x = torch.arange(1, 1 + 3 * 5 * 5, dtype=torch.uint8).view(1, 3, 5, 5).repeat(2000, 1, 1, 1)
    out = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    candidates = crop_candidates(x[0], pad=2)  # 50 (offset, flip) combinations
    hits = (out[:, None] == candidates[None]).flatten(2).all(2)  # (2000, 50)
    assert (hits.sum(1) >= 1).all()
    assert (hits.sum(0) > 0).all()  # every offset and flip occurs
    flipped = hits[:, 25:].any(1) & ~hits[:, :25].any(1)
    assert 0.4 < flipped.float().mean() < 0.6


# ----------------------------------------------------------------------------------- torchvision formats on disk


def write_idx(path: Path, array: np.ndarray) -> None:
    """The MNIST idx format: big-endian magic (2051 images / 2049 labels), big-endian dims, uint8 data."""
    magic = {3: 2051, 1: 2049}[array.ndim]
    path.write_bytes(struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes())


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickles ``bytes`` as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), as the CIFAR release files do:
    they load as ``str`` under ``encoding="latin1"`` (what torchvision uses) and as bytes under ``encoding="bytes"``."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_py2_pickle(path: Path, obj: dict) -> None:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue())


MNIST_FOLDERS = [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]


def write_mnist(root: Path, folder: str, rng: np.random.Generator, n_train: int = 7, n_test: int = 3) -> dict:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(raw / name, array)
    return arrays


@pytest.mark.parametrize("name,folder", MNIST_FOLDERS)
def test_mnist_like_idx_files_round_trip(tmp_path, name, folder):
    arrays = write_mnist(tmp_path, folder, np.random.default_rng(0))
    ds = load_dataset(name, root=str(tmp_path))
    assert (ds.name, ds.num_classes, ds.in_channels, ds.image_size, ds.augment) == (name, 10, 1, 28, None)
    assert ds.x_train.dtype == torch.uint8 and ds.x_train.shape == (7, 1, 28, 28) and ds.x_test.shape == (3, 1, 28, 28)
    assert np.array_equal(ds.x_train[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(ds.x_test[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert ds.y_train.dtype == torch.int64
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    xb, yb = next(ds.batches("train", 4))
    assert xb.shape == (4, 1, 28, 28) and xb.dtype == torch.float32
    assert torch.allclose(xb, (ds.x_train[:4].float() / 255 - ds.mean[0]) / ds.std[0], atol=1e-5)


CIFAR_LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], "test", "fine_labels", 100),
}


def write_cifar(root: Path, name: str, rng: np.random.Generator, per_file: int = 3) -> tuple[np.ndarray, ...]:
    folder, train_files, test_file, label_key, num_classes = CIFAR_LAYOUTS[name]
    directory = root / folder
    directory.mkdir(parents=True)
    written = {}
    for file in train_files + [test_file]:
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)  # rows: 1024 R, 1024 G, 1024 B values
        labels = rng.integers(0, num_classes, per_file).tolist()
        batch = {b"batch_label": file.encode(), b"data": data, label_key.encode(): labels,
                 b"filenames": [f"img{i}.png".encode() for i in range(per_file)]}
        if name == "cifar100":
            batch[b"coarse_labels"] = [label // 5 for label in labels]
        write_py2_pickle(directory / file, batch)
        written[file] = (data, labels)
    if name == "cifar10":
        meta = ("batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)],
                                  b"num_cases_per_batch": per_file, b"num_vis": 3072})
    else:
        meta = ("meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                         b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    write_py2_pickle(directory / meta[0], meta[1])
    x_train = np.concatenate([written[f][0] for f in train_files])
    y_train = sum((written[f][1] for f in train_files), [])
    return x_train, np.array(y_train), written[test_file][0], np.array(written[test_file][1])


def test_written_cifar_pickles_have_the_release_format(tmp_path):
    write_cifar(tmp_path, "cifar10", np.random.default_rng(0))
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    assert set(batch) == {b"batch_label", b"data", b"labels", b"filenames"}
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (3, 3072)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickles_round_trip(tmp_path, name):
    x_train, y_train, x_test, y_test = write_cifar(tmp_path, name, np.random.default_rng(1))
    ds = load_dataset(name, root=str(tmp_path))
    num_classes = CIFAR_LAYOUTS[name][4]
    assert (ds.name, ds.num_classes, ds.in_channels, ds.image_size, ds.augment) == (name, num_classes, 3, 32, "cifar")
    assert ds.x_train.dtype == torch.uint8 and ds.x_train.is_contiguous()
    assert ds.x_train.shape == (len(y_train), 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    # the release stores each image as 1024 red, 1024 green, 1024 blue bytes, rows first: exactly (3, 32, 32)
    assert np.array_equal(ds.x_train.numpy(), x_train.reshape(-1, 3, 32, 32))
    assert np.array_equal(ds.x_test.numpy(), x_test.reshape(-1, 3, 32, 32))
    assert ds.y_train.dtype == torch.int64 and ds.y_train.tolist() == y_train.tolist()
    assert ds.y_test.tolist() == y_test.tolist()
    assert len(ds.mean) == len(ds.std) == 3
    xb, _ = next(ds.batches("train", 2, shuffle=True, augment=True, generator=torch.Generator().manual_seed(0)))
    assert xb.shape == (2, 3, 32, 32) and xb.dtype == torch.float32


# ------------------------------------------------------------------------------------------------ missing data


CIFAR_FOLDERS = [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]


@pytest.mark.parametrize("name,folder", MNIST_FOLDERS + CIFAR_FOLDERS)
def test_missing_root_and_files_raise_one_line_qfierror(tmp_path, name, folder):
    with pytest.raises(QfiError) as no_root:
        load_dataset(name)
    assert "\n" not in str(no_root.value) and name in str(no_root.value) and folder in str(no_root.value)

    with pytest.raises(QfiError) as no_files:
        load_dataset(name, root=str(tmp_path))
    message = str(no_files.value)
    assert "\n" not in message and message.startswith(f"{name} not found under {tmp_path}")
    assert str(tmp_path / folder / ("raw" if "MNIST" in folder else "")).rstrip("/") in message


def test_partly_missing_files_are_named(tmp_path):
    write_mnist(tmp_path, "MNIST", np.random.default_rng(0))
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(QfiError, match=r"missing t10k-labels-idx1-ubyte;") as err:
        load_dataset("mnist", root=str(tmp_path))
    assert "\n" not in str(err.value)

    write_cifar(tmp_path, "cifar10", np.random.default_rng(0))
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(QfiError, match=r"missing batches\.meta;"):
        load_dataset("cifar10", root=str(tmp_path))


def test_corrupt_file_raises_one_line_qfierror(tmp_path):
    write_mnist(tmp_path, "MNIST", np.random.default_rng(0))
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x07garbage")
    with pytest.raises(QfiError, match="could not be read") as err:
        load_dataset("mnist", root=str(tmp_path))
    assert "\n" not in str(err.value)
