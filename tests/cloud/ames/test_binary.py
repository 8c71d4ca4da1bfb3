"""ITQ projection (faiss) and sign-bit packing for the binary AMES."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asymfuse.cloud.ames.binary import (
    fit_itq_transform,
    init_binary_projection,
    itq_projection,
    pack_signs,
    projection_from_transform,
    quantization_error,
    random_rotation_projection,
    unpack_signs,
    unpack_signs_torch,
)
from asymfuse.cloud.ames.model import create_ames
from asymfuse.edge.errors import ConfigError, ShapeError

faiss = pytest.importorskip("faiss")
cv2 = pytest.importorskip("cv2")
skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread():
    """One faiss thread for the whole module (set up before the other module fixtures).

    ITQ's BLAS calls crawl under thread contention on a shared 2-core box, and ITQ's result
    depends on the summation order, so two trainings only agree bit for bit on equal threads.
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _sift(image: np.ndarray) -> np.ndarray:
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    _, desc = cv2.SIFT_create().detectAndCompute(np.ascontiguousarray(gray), None)
    return desc.astype(np.float32)


@pytest.fixture(scope="module")
def sift() -> tuple[np.ndarray, np.ndarray]:
    """Real, correlated, non-negative 128-d descriptors: (train from two photos, held-out from a third)."""
    train = np.concatenate([_sift(skdata.astronaut()), _sift(skdata.camera())])
    test = _sift(skdata.coffee())
    return train, test


def _anisotropic(n: int, d: int, *, seed: int) -> np.ndarray:
    """Seeded Gaussian with a decaying spectrum in a random basis and a non-zero mean."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(99).standard_normal((d, d)))[0]
    x = (rng.standard_normal((n, d)) * np.geomspace(1.0, 0.02, d)) @ basis + 0.3
    return x.astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _faiss_codes(transform, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """faiss's own binarisation of ``x`` (zero-padded to the transform's input) and its values."""
    padded = np.zeros((x.shape[0], transform.d_in), dtype=np.float32)
    padded[:, : x.shape[1]] = x
    z = transform.apply(padded)
    return z >= 0, z


def _own_transform(x: np.ndarray, *, bits: int, seed: int):
    """An ITQTransform trained here, independently, on [X; -X] (normalised, zero-padded)."""
    xn = _unit(x.astype(np.float64))
    width = max(x.shape[1], bits)
    both = np.zeros((2 * len(xn), width), dtype=np.float32)
    both[: len(xn), : x.shape[1]], both[len(xn):, : x.shape[1]] = xn, -xn
    t = faiss.ITQTransform(width, bits, True)
    t.max_train_per_dim = len(both)  # no faiss-side subsampling
    t.itq.seed = seed
    t.train(both)
    return t


# ------------------------------------------------------------------------------------ ITQ


@pytest.fixture(scope="module")
def sift_itq(sift):
    """The seed-0 ITQ transform of the SIFT training set and its W (trained once per module)."""
    t = fit_itq_transform(sift[0], seed=0)
    return t, projection_from_transform(t, d_in=128)


def test_itq_beats_random_rotation_on_sift(sift, sift_itq):
    train, test = sift
    w_itq = sift_itq[1]
    rand_w = [random_rotation_projection(train, seed=s) for s in range(4)]
    rand_train = [quantization_error(train, w) for w in rand_w]
    rand_test = [quantization_error(test, w) for w in rand_w]
    itq_train, itq_test = quantization_error(train, w_itq), quantization_error(test, w_itq)
    spread = max(rand_train) - min(rand_train)
    # observed: ITQ ~109.0 against 110.8-111.1 for random rotations of the same PCA
    assert itq_train < min(rand_train) - max(1.0, 2 * spread), (itq_train, rand_train)
    assert itq_test < min(rand_test) - 0.5, (itq_test, rand_test)


def test_itq_starts_from_the_random_rotation_baseline(sift):
    train, _ = sift
    t0 = fit_itq_transform(train, seed=3, iterations=0)
    assert np.allclose(projection_from_transform(t0, d_in=128), random_rotation_projection(train, seed=3))
    one = quantization_error(train, projection_from_transform(fit_itq_transform(train, seed=3, iterations=1),
                                                              d_in=128))
    assert one < quantization_error(train, random_rotation_projection(train, seed=3))


@pytest.mark.parametrize("d_in", [128, 120])
def test_projection_equals_faiss_binarisation(sift, sift_itq, d_in):
    if d_in == 128:
        (train, test), (t, w) = sift, sift_itq
    else:  # local_lite2-like: fewer dims than bits, inputs zero-padded to 128
        train, test = _anisotropic(1500, d_in, seed=1), _anisotropic(500, d_in, seed=2)
        t = fit_itq_transform(train, bits=128, seed=0)
        w = projection_from_transform(t, d_in=d_in)
    assert w.shape == (d_in, 128) and w.dtype == np.float32
    assert np.abs(faiss.vector_to_array(t.mean)).max() < 1e-5  # [X; -X]: zero mean, no bias needed
    w64 = w.astype(np.float64)  # columns (d_in = bits) or rows (padded) of an orthogonal matrix
    assert np.allclose(w64.T @ w64 if d_in == 128 else w64 @ w64.T, np.eye(d_in), atol=1e-5)
    z = _unit(test.astype(np.float64)) @ w
    theirs, zf = _faiss_codes(t, test)
    clear = np.abs(zf) > 1e-5
    assert np.array_equal((z >= 0)[clear], theirs[clear])
    assert clear.mean() > 0.999
    assert np.allclose(z, zf, atol=1e-5)  # same values, not only the same signs
    # the training recipe itself: an ITQTransform trained here on [X; -X] gives the same codes
    own, zo = _faiss_codes(_own_transform(train, bits=128, seed=0), test)
    clear = np.abs(zo) > 1e-4
    assert np.array_equal((z >= 0)[clear], own[clear])


def test_more_dims_than_bits_reduces_with_pca():
    x = _anisotropic(1500, 64, seed=4)
    w = itq_projection(x, bits=32, seed=0)
    assert w.shape == (64, 32)
    assert quantization_error(x, w) < min(quantization_error(x, random_rotation_projection(x, bits=32, seed=s))
                                          for s in range(3))


def test_subsample_is_seeded_and_bounded():
    x = _anisotropic(3000, 32, seed=5)
    a = itq_projection(x, bits=32, seed=1, max_train=500)
    assert np.array_equal(a, itq_projection(x, bits=32, seed=1, max_train=500))
    assert not np.allclose(a, itq_projection(x, bits=32, seed=2, max_train=500))
    # zero rows (padding) are ignored
    assert np.allclose(itq_projection(np.concatenate([x, np.zeros((50, 32), np.float32)]), bits=32, seed=1),
                       itq_projection(x, bits=32, seed=1))


def test_quantization_error_hand_computed():
    x = np.array([[1.0, 0.0], [0.0, -3.0]])
    # unit rows (1, 0) and (0, -1); sign(0) = +1, so each row misses by 1 in one coordinate
    assert quantization_error(x, np.eye(2)) == pytest.approx(1.0)
    r = np.array([[1.0, -1.0], [1.0, 1.0]]) / np.sqrt(2.0)
    assert quantization_error(x[:1], r) == pytest.approx(2 * (1 - 1 / np.sqrt(2)) ** 2)


@pytest.mark.parametrize("bad, err", [
    (np.full((10, 8), np.nan, np.float32), ShapeError),
    (np.zeros((10, 8), np.float32), ShapeError),
    (np.ones(8, np.float32), ShapeError),
    (np.ones((10, 8), np.int64), ShapeError),
])
def test_bad_descriptors(bad, err):
    with pytest.raises(err):
        itq_projection(bad, bits=8)


def test_bad_options():
    x = _anisotropic(100, 16, seed=0)
    for kwargs in ({"bits": 12}, {"bits": 0}, {"max_train": 0}):
        with pytest.raises(ConfigError):
            itq_projection(x, **kwargs)


def test_init_binary_projection(sift, sift_itq):
    train, _ = sift
    model = create_ames(local_dim=128, binary=True, seed=0)
    before = model.remap_local[0].W.detach().clone()
    init_binary_projection(model, train, seed=0)  # through itq_projection
    w = model.remap_local[0].W.detach().numpy()
    assert not np.allclose(w, before.numpy())
    assert np.array_equal(w, sift_itq[1])
    with pytest.raises(ConfigError, match="binary"):
        init_binary_projection(create_ames(local_dim=128, binary=False), train)
    with pytest.raises(ShapeError, match="128"):
        init_binary_projection(model, train[:, :120])


# ---------------------------------------------------------------------------------- packing


def test_pack_unpack_roundtrip():
    bits = np.random.default_rng(0).random((3, 5, 128)) < 0.5
    packed = pack_signs(bits)
    assert packed.shape == (3, 5, 16) and packed.dtype == np.uint8  # 16 bytes per 128-bit descriptor
    signs = unpack_signs(packed)
    assert signs.dtype == np.float32 and np.array_equal(signs, np.where(bits, 1.0, -1.0))
    assert np.array_equal(signs, np.unpackbits(packed, axis=-1).astype(np.float32) * 2 - 1)
    t = unpack_signs_torch(torch.from_numpy(packed))
    assert t.dtype == torch.float32 and t.shape == (3, 5, 128)
    assert np.array_equal(t.numpy(), signs)
    every_byte = np.arange(256, dtype=np.uint8)[:, None]
    assert np.array_equal(unpack_signs_torch(torch.from_numpy(every_byte)).numpy(), unpack_signs(every_byte))


def test_bit_order_msb_first():
    bits = np.zeros(16, dtype=bool)
    bits[[0, 9, 15]] = True
    assert pack_signs(bits).tolist() == [0x80, 0x40 | 0x01]


def test_pack_bad_input():
    with pytest.raises(ShapeError):
        pack_signs(np.ones((2, 12), dtype=bool))
    with pytest.raises(ShapeError):
        pack_signs(np.ones((2, 16), dtype=np.float32))
    with pytest.raises(ShapeError):
        unpack_signs(np.ones((2, 2), dtype=np.int32))
    with pytest.raises(ShapeError):
        unpack_signs_torch(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ShapeError):
        unpack_signs_torch(np.ones((2, 2), dtype=np.uint8))
