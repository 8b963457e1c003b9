import numpy as np
import pytest
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio

import allinone_basicsr  # noqa: F401  (import before basicsr)
from allinone_basicsr.data.degradations import add_gaussian_noise, add_haze, add_rain, noise_rng
from allinone_basicsr.utils.seeds import stable_seed


def _photo():
    return np.ascontiguousarray(skdata.astronaut()[::4, ::4])  # 128x128x3 uint8 RGB


def test_gaussian_noise_matches_official_formula_with_truncation():
    img = _photo()
    out = add_gaussian_noise(img, 25, np.random.default_rng(3))
    noise = np.random.default_rng(3).standard_normal(img.shape)
    expected = np.floor(np.clip(img.astype(np.float64) + noise * 25, 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    rounded = np.clip(np.round(img.astype(np.float64) + noise * 25), 0, 255).astype(np.uint8)
    assert (out != rounded).mean() > 0.3  # truncation, not rounding
    assert out.dtype == np.uint8 and out.shape == img.shape


def test_gaussian_noise_truncates_small_values():
    img = np.full((1, 1, 3), 100, np.uint8)

    class Fixed:
        def standard_normal(self, shape):
            return np.array([0.07, -0.01, 0.99]).reshape(shape)

    np.testing.assert_array_equal(add_gaussian_noise(img, 10, Fixed()).ravel(), [100, 99, 109])


def test_gaussian_noise_global_rng_and_clipping():
    img = _photo()
    np.random.seed(7)
    out = add_gaussian_noise(img, 50)
    np.random.seed(7)
    expected = np.clip(img + np.random.randn(*img.shape) * 50, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out.min() == 0 and out.max() == 255
    with pytest.raises(TypeError):
        add_gaussian_noise(img.astype(np.float32), 25)


def test_noise_residual_std_on_mid_grey():
    img = np.full((128, 128, 3), 128, np.uint8)
    res = add_gaussian_noise(img, 25, np.random.default_rng(0)).astype(np.float64) - 128
    assert abs(res.std() - 25) < 0.5
    assert -0.8 < res.mean() < -0.2  # truncation shifts the mean by about -0.5


def test_noise_rng_is_stable():
    # a fixed value: stable across processes (hash() is salted, this is not), runs and machines
    assert stable_seed('coffee_000|25') == 8623165694405676138
    a = noise_rng('coffee_000', 25).standard_normal(3)
    np.testing.assert_allclose(a, [-0.8252193152814888, -1.3752943162262483, 0.47991525063389306])
    np.testing.assert_array_equal(noise_rng('coffee_000', 25.0).standard_normal(8),
                                  noise_rng('coffee_000', 25).standard_normal(8))
    base = noise_rng('coffee_000', 25).standard_normal(8)
    assert not np.allclose(base, noise_rng('coffee_000', 15).standard_normal(8))
    assert not np.allclose(base, noise_rng('coffee_001', 25).standard_normal(8))


def test_rain_is_deterministic_bright_and_moderate():
    img = _photo()
    a = add_rain(img, np.random.default_rng(1))
    b = add_rain(img, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape == img.shape
    assert (a >= img).all()  # screen blend only brightens
    assert not np.array_equal(a, add_rain(img, np.random.default_rng(2)))
    psnr = peak_signal_noise_ratio(img, a)
    assert 14 < psnr < 26, psnr
    # keyword options are honoured
    assert peak_signal_noise_ratio(img, add_rain(img, np.random.default_rng(1), strength=0.2)) > psnr


def test_haze_is_deterministic_and_moves_towards_airlight():
    img = _photo()
    a = add_haze(img, np.random.default_rng(1), airlight=0.9)
    np.testing.assert_array_equal(a, add_haze(img, np.random.default_rng(1), airlight=0.9))
    assert a.dtype == np.uint8 and a.shape == img.shape
    dist_in = np.abs(img.astype(np.float64) - 0.9 * 255)
    dist_out = np.abs(a.astype(np.float64) - 0.9 * 255)
    assert (dist_out <= dist_in + 1).all()
    # depth proxy: far (top) hazier than near (bottom)
    change = np.abs(a.astype(np.float64) - img)
    assert change[:32].mean() > change[-32:].mean()
    psnr = peak_signal_noise_ratio(img, a)
    assert 12 < psnr < 26, psnr
    assert peak_signal_noise_ratio(img, add_haze(img, np.random.default_rng(1), beta=0.2)) > psnr


def test_degradations_accept_grey_content_and_odd_sizes():
    img = np.repeat(np.random.default_rng(0).integers(0, 256, (37, 53, 1), dtype=np.uint8), 3, axis=2)
    for fn in (add_rain, add_haze):
        out = fn(img, np.random.default_rng(0))
        assert out.shape == img.shape and out.dtype == np.uint8
