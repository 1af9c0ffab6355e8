"""The data layer: shapes, dtypes, determinism, train-only standardization, loader errors.

Oracles are independent of the code under test where it matters: standardized features are
checked against statistics recomputed from the unstandardized split, CIFAR pixels against the
index formula ``data[n, c * 1024 + r * 32 + col]`` on a pattern written on purpose, the teacher's
targets against a recomputation from the weights in ``meta``.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest

from sims import data

DTYPES = [np.float32, np.float64]
# Standardized values are computed in float64 and then rounded to the dataset's dtype: in float32
# each entry carries a relative error <= 2**-24 ~ 6e-8, so means and stds of the stored array are
# exact to ~1e-7 (entries are O(1) to O(30)); 1e-6 leaves a margin. float64 is exact to ~1e-14.
STAT_TOL = {np.float32: 1e-6, np.float64: 1e-12}


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_raw() -> data.Dataset:
    """Digits with the default split, not standardized (pixels / 16), float64."""
    return data.digits(standardize=False, dtype=np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("images", [False, True])
def test_digits_shapes_and_dtypes(dtype, images):
    ds = data.digits(n_train=300, n_test=200, images=images, dtype=dtype)
    shape = (8, 8, 1) if images else (64,)
    assert ds.x_train.shape == (300, *shape) and ds.x_test.shape == (200, *shape)
    assert ds.x_train.dtype == dtype and ds.x_test.dtype == dtype
    assert ds.y_train.shape == (300,) and ds.y_test.shape == (200,)
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert (ds.name, ds.task, ds.num_classes) == ("digits", "classification", 10)
    assert ds.input_shape == shape and (ds.n_train, ds.n_test) == (300, 200)


def test_digits_default_sizes_labels_and_classes():
    ds = data.digits()
    assert (ds.n_train, ds.n_test) == (1024, 1797 - 1024)
    for y in (ds.y_train, ds.y_test):
        assert y.min() >= 0 and y.max() <= 9
    assert set(np.unique(ds.y_train).tolist()) == set(range(10))
    assert ds.meta["seed"] == 0 and ds.meta["n_train"] == 1024


def test_digits_images_are_the_flat_pixels_in_row_major_order():
    flat = data.digits(n_train=50, n_test=10, dtype=np.float64)
    img = data.digits(n_train=50, n_test=10, images=True, dtype=np.float64)
    np.testing.assert_array_equal(img.x_train[:, 2, 5, 0], flat.x_train[:, 2 * 8 + 5])
    np.testing.assert_array_equal(img.x_test.reshape(10, 64), flat.x_test)


def test_digits_deterministic_and_seed_dependent():
    a, b = data.digits(seed=3), data.digits(seed=3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    c = data.digits(seed=4)
    assert not np.array_equal(a.y_train, c.y_train)
    assert not np.array_equal(a.x_train, c.x_train)


def test_digits_unstandardized_pixels_in_unit_interval(digits_raw):
    x = np.concatenate([digits_raw.x_train, digits_raw.x_test])
    assert x.min() == 0.0 and x.max() == 1.0
    # every value is a multiple of 1/16 (the raw pixels are integers 0..16)
    np.testing.assert_array_equal(x * 16, np.round(x * 16))


@pytest.mark.parametrize("dtype", DTYPES)
def test_digits_standardized_with_train_statistics(digits_raw, dtype):
    ds = data.digits(dtype=dtype)  # same seed and split as digits_raw
    raw_tr, raw_te = digits_raw.x_train, digits_raw.x_test
    mean, std = raw_tr.mean(0), raw_tr.std(0)
    const = std == 0
    assert const.any(), "digits has pixels that are 0 in every training image"
    x_tr = ds.x_train.astype(np.float64)
    tol = STAT_TOL[dtype]
    np.testing.assert_allclose(x_tr.mean(0), 0.0, atol=tol)
    np.testing.assert_allclose(x_tr[:, ~const].std(0), 1.0, atol=tol)
    assert np.all(x_tr[:, const] == 0.0) and np.all(np.isfinite(ds.x_test))
    # the test split uses the training mean and std (std 1 where it is 0), so it is not itself
    # centred and scaled to unit variance
    scale = np.where(const, 1.0, std)
    np.testing.assert_allclose(ds.x_test, (raw_te - mean) / scale, rtol=tol, atol=tol)
    x_te = ds.x_test.astype(np.float64)
    assert np.abs(x_te.mean(0)).max() > 1e-3
    assert np.abs(x_te[:, ~const].std(0) - 1).max() > 1e-3
    np.testing.assert_allclose(ds.meta["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(ds.meta["std"], std, rtol=1e-12)


def test_digits_n_test_takes_the_first_of_the_rest():
    full = data.digits(n_train=500)
    part = data.digits(n_train=500, n_test=100)
    np.testing.assert_array_equal(part.x_train, full.x_train)
    np.testing.assert_array_equal(part.x_test, full.x_test[:100])
    np.testing.assert_array_equal(part.y_test, full.y_test[:100])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_train": 0}, r"n_train must be in \[1, 1796\], got 0"),
        ({"n_train": 1797}, r"n_train must be in \[1, 1796\], got 1797"),
        ({"n_train": 1000, "n_test": 798}, r"n_test must be in \[1, 797\], got 798"),
        ({"n_test": 0}, r"n_test must be in \[1, 773\], got 0"),
        ({"seed": -1}, r"seed must be >= 0, got -1"),
        ({"dtype": np.int32}, r"dtype must be float32 or float64, got int32"),
        ({"dtype": np.float16}, r"dtype must be float32 or float64, got float16"),
    ],
)
def test_digits_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.digits(**kwargs)


def test_digits_non_integer_size_is_a_type_error():
    with pytest.raises(TypeError, match=r"n_train must be an int, got 10\.5"):
        data.digits(n_train=10.5)
    with pytest.raises(TypeError, match="n_train must be an int, got True"):
        data.digits(n_train=True)


# --------------------------------------------------------------------------- MNIST-1D


@pytest.mark.parametrize("dtype", DTYPES)
def test_mnist1d_shapes_and_dtypes(dtype):
    ds = data.mnist1d(n_samples=200, dtype=dtype)
    assert ds.x_train.shape == (160, 40) and ds.x_test.shape == (40, 40)
    assert ds.x_train.dtype == dtype and ds.x_test.dtype == dtype
    assert ds.y_train.dtype == np.int64 and ds.y_train.shape == (160,)
    assert (ds.num_classes, ds.task) == (10, "classification")
    y = np.concatenate([ds.y_train, ds.y_test])
    # make_dataset makes n_samples // 10 signals of each class
    np.testing.assert_array_equal(np.bincount(y, minlength=10), np.full(10, 20))


def test_mnist1d_default_size():
    ds = data.mnist1d()
    assert (ds.n_train, ds.n_test) == (3200, 800) and ds.input_shape == (40,)


def test_mnist1d_is_the_generators_output():
    import mnist1d.data as m1d

    ds = data.mnist1d(n_samples=100, train_split=0.7, seed=5, dtype=np.float64)
    args = m1d.get_dataset_args(as_dict=False)
    args.num_samples, args.train_split, args.seed = 100, 0.7, 5
    state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        raw = m1d.make_dataset(args)
    finally:
        np.random.set_state(state[0])  # noqa: NPY002
        random.setstate(state[1])
    np.testing.assert_array_equal(ds.x_train, raw["x"])
    np.testing.assert_array_equal(ds.x_test, raw["x_test"])
    np.testing.assert_array_equal(ds.y_train, raw["y"])
    assert ds.x_train.shape == (70, 40)


def test_mnist1d_deterministic_and_seed_dependent():
    a, b = data.mnist1d(n_samples=100, seed=1), data.mnist1d(n_samples=100, seed=1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    c = data.mnist1d(n_samples=100, seed=2)
    assert not np.array_equal(a.x_train, c.x_train)


def test_mnist1d_leaves_global_random_state_unchanged():
    np.random.seed(1234)  # noqa: NPY002 -- the legacy global state is what is under test
    random.seed(99)
    np_before, py_before = np.random.get_state(), random.getstate()  # noqa: NPY002
    data.mnist1d(n_samples=50, seed=0)
    np_after = np.random.get_state()  # noqa: NPY002
    assert np_after[0] == np_before[0] and np_after[2:] == np_before[2:]
    np.testing.assert_array_equal(np_after[1], np_before[1])
    assert random.getstate() == py_before
    # and the next draws are the ones the caller's seed promised
    np.random.seed(1234)  # noqa: NPY002
    expected = np.random.rand(3)  # noqa: NPY002
    np.random.seed(1234)  # noqa: NPY002
    data.mnist1d(n_samples=50, seed=0)
    np.testing.assert_array_equal(np.random.rand(3), expected)  # noqa: NPY002


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_samples": 0}, r"n_samples must be >= 10, got 0"),
        ({"n_samples": 105}, r"n_samples must be a multiple of 10.*got 105"),
        ({"train_split": 0.0}, r"train_split must be in the open interval \(0, 1\), got 0\.0"),
        ({"train_split": 1.0}, r"train_split must be in the open interval \(0, 1\), got 1\.0"),
        ({"train_split": 1.5}, r"train_split must be in the open interval \(0, 1\)"),
        ({"n_samples": 10, "train_split": 0.05}, r"train_split=0\.05 puts 0 of the n_samples=10"),
        ({"dtype": "int64"}, r"dtype must be float32 or float64"),
    ],
)
def test_mnist1d_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.mnist1d(**kwargs)


# --------------------------------------------------------------------------- teacher-student


@pytest.mark.parametrize("dtype", DTYPES)
def test_teacher_student_shapes_dtypes_and_teacher(dtype):
    ds = data.teacher_student(n_train=20, n_test=30, d_in=5, hidden=7, k_out=3, dtype=dtype)
    assert ds.x_train.shape == (20, 5) and ds.x_test.shape == (30, 5)
    assert ds.y_train.shape == (20, 3) and ds.y_test.shape == (30, 3)
    for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        assert a.dtype == dtype
    assert (ds.task, ds.num_classes) == ("regression", 0)
    w1, w2 = np.array(ds.meta["teacher"]["w1"]), np.array(ds.meta["teacher"]["w2"])
    assert w1.shape == (7, 5) and w2.shape == (3, 7)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        x64 = x.astype(np.float64)
        f = np.einsum("kh,nh->nk", w2, np.tanh(np.einsum("hd,nd->nh", w1, x64))) / np.sqrt(7)
        # inputs were rounded to dtype before this recomputation: tanh and the sums are
        # 1-Lipschitz-ish in x, so the error is a few ulps of dtype
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(y, f, atol=tol)


def test_teacher_student_noise_only_on_train_and_streams_independent():
    clean = data.teacher_student(n_train=4000, n_test=50, noise=0.0, dtype=np.float64)
    noisy = data.teacher_student(n_train=4000, n_test=80, noise=0.3, dtype=np.float64)
    np.testing.assert_array_equal(clean.x_train, noisy.x_train)
    np.testing.assert_array_equal(clean.x_test, noisy.x_test[:50])
    # same inputs and teacher; BLAS may block a 50-row and an 80-row product differently
    np.testing.assert_allclose(clean.y_test, noisy.y_test[:50], rtol=1e-13, atol=1e-15)
    resid = noisy.y_train - clean.y_train
    # std of 4000 N(0, 0.3^2) draws is within 0.3 * (1 +- 5 / sqrt(2 * 4000)) w.h.p.
    assert abs(resid.std() - 0.3) < 0.3 * 5 / np.sqrt(8000)
    # the inputs are standard Gaussian
    assert abs(clean.x_train.mean()) < 0.02 and abs(clean.x_train.std() - 1) < 0.02


def test_teacher_student_deterministic_and_seed_dependent():
    a, b = data.teacher_student(seed=7), data.teacher_student(seed=7)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    c = data.teacher_student(seed=8)
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.meta["teacher"] != c.meta["teacher"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_train": 0}, r"n_train must be >= 1, got 0"),
        ({"n_test": -3}, r"n_test must be >= 1, got -3"),
        ({"d_in": 0}, r"d_in must be >= 1"),
        ({"hidden": 0}, r"hidden must be >= 1"),
        ({"k_out": 0}, r"k_out must be >= 1"),
        ({"noise": -0.1}, r"noise must be a finite float >= 0, got -0\.1"),
        ({"noise": float("nan")}, r"noise must be a finite float >= 0, got nan"),
    ],
)
def test_teacher_student_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.teacher_student(**kwargs)


# --------------------------------------------------------------------------- one_hot, targets


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_hot(dtype):
    out = data.one_hot(np.array([2, 0, 1, 2]), 3, dtype)
    expected = [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, np.array(expected, dtype=dtype))
    assert data.one_hot(np.zeros(0, np.int64), 4).shape == (0, 4)


def test_one_hot_errors():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*\[0, 3\]"):
        data.one_hot(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*\[-1, 1\]"):
        data.one_hot(np.array([-1, 1]), 3)
    with pytest.raises(ValueError, match=r"1-D array of labels, got shape \(2, 2\)"):
        data.one_hot(np.zeros((2, 2), np.int64), 3)
    with pytest.raises(TypeError, match="integer class labels, got dtype float64"):
        data.one_hot(np.array([0.0, 1.0]), 3)
    with pytest.raises(ValueError, match=r"num_classes must be >= 1, got 0"):
        data.one_hot(np.array([0]), 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_targets(dtype):
    cls = data.digits(n_train=100, n_test=50, dtype=dtype)
    tr, te = data.targets(cls, "mse")
    assert tr.shape == (100, 10) and te.shape == (50, 10) and tr.dtype == dtype
    np.testing.assert_array_equal(tr.argmax(1), cls.y_train)
    np.testing.assert_array_equal(tr.sum(1), 1)
    tr, te = data.targets(cls, "ce")
    assert tr is cls.y_train and te is cls.y_test
    reg = data.teacher_student(n_train=10, n_test=5, k_out=2, dtype=dtype)
    tr, te = data.targets(reg, "mse")
    assert tr is reg.y_train and te is reg.y_test
    with pytest.raises(ValueError, match="regression task; cross-entropy"):
        data.targets(reg, "ce")
    with pytest.raises(ValueError, match="loss must be 'mse' or 'ce', got 'l1'"):
        data.targets(cls, "l1")  # type: ignore[arg-type]


def test_dataset_rejects_inconsistent_splits():
    x, y = np.zeros((3, 2), np.float32), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="x_train has 3 rows but y_train has 4 rows"):
        data.Dataset("t", x, y, x, y[:3], 2, "classification")
    with pytest.raises(ValueError, match="num_classes must be 0 exactly for regression"):
        data.Dataset("t", x, y[:3], x, y[:3], 2, "regression")


# --------------------------------------------------------------------------- CIFAR-10


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _patterned_cifar(root: Path, n: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A CIFAR-10 directory whose pixel values encode their position; returns its raw arrays.

    Image ``i`` of the concatenated training batches has, at row ``r``, column ``col`` of
    channel ``c`` (stored at ``data[i, c * 1024 + r * 32 + col]``), the value
    ``(37 * i + 3 * r + 5 * col + 85 * c) % 256``; labels are ``i % 10``.
    """
    i, c, r, col = np.meshgrid(
        np.arange(5 * n), np.arange(3), np.arange(32), np.arange(32), indexing="ij"
    )
    pixels = ((37 * i + 3 * r + 5 * col + 85 * c) % 256).astype(np.uint8).reshape(5 * n, 3072)
    labels = np.arange(5 * n) % 10
    for b in range(5):
        rows = slice(b * n, (b + 1) * n)
        _dump(
            root / f"data_batch_{b + 1}", {b"data": pixels[rows], b"labels": labels[rows].tolist()}
        )
    test_pixels = 255 - pixels[:n]
    # test labels are NumPy int64 scalars (pickled as numpy scalars), which must be accepted too
    _dump(root / "test_batch", {b"data": test_pixels, b"labels": [9 - k for k in labels[:n]]})
    return pixels, labels, test_pixels


def test_cifar10_pixel_layout_and_label_order(tmp_path):
    pixels, labels, test_pixels = _patterned_cifar(tmp_path, n=4)
    ds = data.cifar10(tmp_path, standardize=False, dtype=np.float64)
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(ds.y_train, labels)  # batch 1 first, file order kept
    np.testing.assert_array_equal(ds.y_test, 9 - labels[:4])
    # a few pixels by hand: image 6 (batch 2), row 1, column 2, blue
    assert ds.x_train[6, 1, 2, 2] == ((37 * 6 + 3 * 1 + 5 * 2 + 85 * 2) % 256) / 255
    assert ds.x_train[0, 0, 0, 0] == 0.0 and ds.x_train[0, 0, 0, 1] == 85 / 255
    # every pixel against the storage-order index formula
    i, r, col, c = np.meshgrid(
        np.arange(20), np.arange(32), np.arange(32), np.arange(3), indexing="ij"
    )
    np.testing.assert_array_equal(ds.x_train, pixels[i, c * 1024 + r * 32 + col] / 255)
    np.testing.assert_array_equal(
        ds.x_test, test_pixels[i[:4], (c * 1024 + r * 32 + col)[:4]] / 255
    )
    assert "label_names" not in ds.meta  # no batches.meta written


@pytest.mark.parametrize("dtype", DTYPES)
def test_cifar10_generated_shapes_dtypes_and_standardization(tmp_path, dtype):
    data.write_cifar10_like(tmp_path, 6, seed=0)
    ds = data.cifar10(tmp_path, dtype=dtype)
    assert ds.x_train.shape == (30, 32, 32, 3) and ds.x_test.shape == (6, 32, 32, 3)
    assert ds.x_train.dtype == dtype and ds.y_train.dtype == np.int64
    assert (ds.num_classes, ds.task) == (10, "classification")
    assert ds.meta["label_names"] == [f"class_{k}" for k in range(10)]
    raw = data.cifar10(tmp_path, standardize=False, dtype=np.float64)
    assert raw.x_train.min() >= 0 and raw.x_train.max() <= 1
    mean, std = raw.x_train.mean((0, 1, 2)), raw.x_train.std((0, 1, 2))
    tol = STAT_TOL[dtype]
    x = ds.x_train.astype(np.float64)
    np.testing.assert_allclose(x.mean((0, 1, 2)), 0.0, atol=tol)
    np.testing.assert_allclose(x.std((0, 1, 2)), 1.0, atol=tol)
    np.testing.assert_allclose(ds.x_test, (raw.x_test - mean) / std, rtol=tol, atol=tol)
    assert np.abs(ds.x_test.astype(np.float64).mean((0, 1, 2))).max() > 1e-3
    # the statistics are of the pixels as stored in dtype (v / 255 rounded: rel. error <= 2**-24)
    stat_rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(ds.meta["channel_mean"], mean, rtol=stat_rtol)
    np.testing.assert_allclose(ds.meta["channel_std"], std, rtol=stat_rtol)


def test_cifar10_subsets_and_writer_determinism(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    data.write_cifar10_like(a, 5, seed=3)
    data.write_cifar10_like(b, 5, seed=3)
    for name in (*data.CIFAR10_FILES, "batches.meta"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    full = data.cifar10(a, standardize=False)
    part = data.cifar10(a, n_train=7, n_test=2, standardize=False)
    np.testing.assert_array_equal(part.x_train, full.x_train[:7])
    np.testing.assert_array_equal(part.y_test, full.y_test[:2])
    with pytest.raises(ValueError, match=r"n_train must be in \[1, 25\], got 26"):
        data.cifar10(a, n_train=26)
    with pytest.raises(ValueError, match=r"n_test must be in \[1, 5\], got 0"):
        data.cifar10(a, n_test=0)


def test_cifar10_reads_numpy1_era_pickles(tmp_path):
    """The original batches name ``numpy.core.multiarray``, deprecated in NumPy 2: no warning."""
    data.write_cifar10_like(tmp_path, 3, seed=1)
    for name in data.CIFAR10_FILES:
        blob = (tmp_path / name).read_bytes()
        assert b"numpy._core.multiarray" in blob
        (tmp_path / name).write_bytes(
            blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        )
    ds = data.cifar10(tmp_path)  # warnings are errors in this suite
    assert ds.x_train.shape == (15, 32, 32, 3)


def test_cifar10_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as info:
        data.cifar10(missing)
    msg = str(info.value)
    assert str(missing) in msg and "does not exist" in msg
    for name in data.CIFAR10_FILES:
        assert name in msg


def test_cifar10_missing_files(tmp_path):
    data.write_cifar10_like(tmp_path, 2, seed=0, n_batches=3)
    with pytest.raises(FileNotFoundError) as info:
        data.cifar10(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg
    assert re.search(r"is missing data_batch_4, data_batch_5;", msg)
    assert "data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch" in msg
    (tmp_path / "test_batch").unlink()
    with pytest.raises(
        FileNotFoundError, match="is missing data_batch_4, data_batch_5, test_batch;"
    ):
        data.cifar10(tmp_path)


class _Evil:
    def __reduce__(self):
        import os

        return (os.getcwd, ())


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"this is not a pickle", r"is not a readable CIFAR-10 python pickle"),
        (b"", r"is not a readable CIFAR-10 python pickle: EOFError"),
        ([1, 2, 3], r"must hold a pickled dict, got list"),
        ({b"labels": [0, 1]}, r"has no b'data' entry \(keys: \[\"b'labels'\"\]\)"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, r"has no b'labels' entry"),
        (
            {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]},
            r"b'data' must be an array of shape \(N, 3072\), got \(2, 100\)",
        ),
        (
            {b"data": np.zeros(3072, np.uint8), b"labels": [0]},
            r"b'data' must be an array of shape \(N, 3072\), got \(3072,\)",
        ),
        ({b"data": [1, 2], b"labels": [0]}, r"b'data' must be an array.*got list"),
        (
            {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]},
            r"b'data' must have dtype uint8, got float32",
        ),
        (
            {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]},
            r"one label per image \(2\), got shape \(1,\)",
        ),
        (
            {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
            r"labels must lie in \[0, 10\), got values in \[0, 10\]",
        ),
        (
            {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0.5, 1.0]},
            r"b'labels' must be ints, got dtype float64",
        ),
        ({b"data": _Evil(), b"labels": []}, r"global posix\.getcwd is not allowed|global os\."),
    ],
)
def test_cifar10_malformed_batch(tmp_path, content, match):
    data.write_cifar10_like(tmp_path, 2, seed=0)
    bad = tmp_path / "data_batch_3"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        _dump(bad, content)
    with pytest.raises(ValueError, match=match) as info:
        data.cifar10(tmp_path)
    assert str(bad) in str(info.value)


def test_cifar10_malformed_meta(tmp_path):
    data.write_cifar10_like(tmp_path, 2, seed=0)
    _dump(tmp_path / "batches.meta", {b"label_names": 3})
    with pytest.raises(ValueError, match=r"batches\.meta'?: b'label_names' must be a list"):
        data.cifar10(tmp_path)


# --------------------------------------------------------------------------- registry


def test_load_registry(tmp_path):
    assert set(data.LOADERS) == {"digits", "mnist1d", "teacher_student", "cifar10"}
    ds = data.load("teacher_student", n_train=3, n_test=2, seed=1)
    np.testing.assert_array_equal(
        ds.x_train, data.teacher_student(n_train=3, n_test=2, seed=1).x_train
    )
    assert data.load("digits", n_train=10).n_train == 10
    assert data.load("mnist1d", n_samples=20).n_train == 16
    data.write_cifar10_like(tmp_path, 2, seed=0)
    assert data.load("cifar10", path=tmp_path).n_train == 10


def test_load_unknown_name():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; valid names are \['cifar10', "):
        data.load("mnist")
