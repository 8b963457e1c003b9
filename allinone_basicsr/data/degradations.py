"""Synthetic degradations on HxWx3 uint8 RGB images (pure numpy / OpenCV).

* ``add_gaussian_noise``: the noise model of the official PromptIR / SymUNet code (train and test).
* ``noise_rng``: generators seeded from an image key (``utils.seeds.stable_seed``), the same in every process and
  machine;
  ``format_sigma``: a noise level as it appears in seeds and names (``25``, ``12.5``).
* ``add_rain`` / ``add_haze``: the synthetic rain streaks and haze of the bundled demo data set. They are
  moderate and smooth on purpose, so that a small network trained for a few minutes on CPU can learn to invert
  them; they are not a model of the Rain100L / RESIDE data.
"""
import cv2
import numpy as np

from allinone_basicsr.utils.seeds import stable_seed


def format_sigma(sigma):
    """``15``, ``15.0`` and ``np.float32(15)`` all give ``'15'``; ``12.5`` gives ``'12.5'``."""
    return f'{float(sigma):g}'


def noise_rng(key, sigma):
    """A numpy Generator seeded deterministically from an image key and a noise level.

    Used for validation / test noise, so that every run, process, machine and method sees the same noisy
    images. The seed is ``stable_seed(f'{key}|{sigma:g}')``, so ``sigma=25`` and ``sigma=25.0`` agree.
    (numpy does not promise identical ``Generator`` streams across major numpy versions.)

    Args:
        key (str): Image key (LMDB key or file stem).
        sigma (float): Noise standard deviation on the 0-255 scale.

    Returns:
        np.random.Generator: A fresh PCG64 generator.
    """
    return np.random.default_rng(stable_seed(f'{key}|{format_sigma(sigma)}'))


def add_gaussian_noise(img, sigma, rng=None):
    """Add i.i.d. Gaussian noise in uint8 space, exactly as the official PromptIR / SymUNet code does.

    ``np.clip(img + randn(img.shape) * sigma, 0, 255).astype(np.uint8)``: float64 arithmetic, clipping, then
    truncation (not rounding) to uint8.

    Args:
        img (ndarray): uint8 image, any shape (usually HxWx3).
        sigma (float): Noise standard deviation on the 0-255 scale.
        rng (np.random.Generator | np.random.RandomState | None): Source of the normal samples. None uses numpy's
            global RNG (``np.random.randn``), which training seeds per sample: ``resume.SeededDataset`` reseeds it
            from each sample's own seed before the sample is drawn. Default: None.

    Returns:
        ndarray: Noisy uint8 image of the same shape.
    """
    if img.dtype != np.uint8:
        raise TypeError(f'add_gaussian_noise expects a uint8 image, got {img.dtype}.')
    if rng is None:
        noise = np.random.randn(*img.shape)
    else:
        noise = rng.standard_normal(img.shape)
    # the same float64 operations in place (x + n·σ, clip, truncate): no temporaries, bit-identical
    noise *= sigma
    noise += img
    np.clip(noise, 0, 255, out=noise)
    return noise.astype(np.uint8)


def _uniform(rng, value):
    """A number from ``value``: a (low, high) range is sampled uniformly, a scalar is returned as is."""
    if isinstance(value, (tuple, list)):
        return float(rng.uniform(value[0], value[1]))
    return float(value)


def _line_kernel(length, angle):
    """Normalised motion-blur kernel: a line of ``length`` pixels, ``angle`` degrees from vertical."""
    size = int(length) | 1  # odd
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    dx = np.sin(np.deg2rad(angle)) * (length - 1) / 2
    dy = np.cos(np.deg2rad(angle)) * (length - 1) / 2
    p0 = (int(round(c - dx)), int(round(c - dy)))
    p1 = (int(round(c + dx)), int(round(c + dy)))
    cv2.line(kernel, p0, p1, 1.0, thickness=1, lineType=cv2.LINE_AA)
    return kernel / kernel.sum()


def rain_layer(shape, rng, density=(0.004, 0.007), length=(10, 18), angle=(-15, 15), width=0.7):
    """A rain-streak layer in [0, 1]: sparse random seeds smeared along one angle (motion blur).

    Args:
        shape (tuple): (H, W) of the layer.
        rng (np.random.Generator): Random source.
        density (float | tuple): Fraction of pixels that seed a streak. Default: (0.004, 0.007).
        length (float | tuple): Streak length in pixels. Default: (10, 18).
        angle (float | tuple): Streak angle in degrees from vertical, one angle per image. Default: (-15, 15).
        width (float): Gaussian blur sigma that thickens / softens the streaks (0 = none). Default: 0.7.

    Returns:
        ndarray: float32 HxW layer in [0, 1].
    """
    h, w = shape[:2]
    seeds = (rng.random((h, w)) < _uniform(rng, density)) * rng.uniform(0.6, 1.0, size=(h, w))
    length = max(3, int(round(_uniform(rng, length))))
    kernel = _line_kernel(length, _uniform(rng, angle))
    layer = cv2.filter2D(seeds.astype(np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT) * length
    if width > 0:
        layer = cv2.GaussianBlur(layer, (0, 0), width) * (1 + width)
    return np.clip(layer, 0, 1)


def add_rain(img, rng, strength=(0.6, 0.8), **layer_opts):
    """Add synthetic rain streaks (screen blend of a bright streak layer).

    ``out = img + s * streaks * (1 - img)`` in [0, 1]: bright, thin, parallel streaks that brighten dark regions
    most, like the Rain100L renderings. The blend is invertible where the streak layer is below 1.

    Args:
        img (ndarray): HxWx3 uint8 RGB image.
        rng (np.random.Generator): Random source (seed it per image for reproducible data).
        strength (float | tuple): Streak opacity s. Default: (0.6, 0.8).
        layer_opts: Keyword options of ``rain_layer`` (density, length, angle, width).

    Returns:
        ndarray: HxWx3 uint8 rainy image.
    """
    x = img.astype(np.float32) / 255.
    layer = rain_layer(img.shape, rng, **layer_opts) * _uniform(rng, strength)
    out = x + layer[..., None] * (1 - x)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def depth_proxy(shape, rng, smooth=0.2, mix=0.4):
    """A smooth pseudo depth map in [0, 1]: a vertical gradient (far at the top) plus a smooth random field.

    Args:
        shape (tuple): (H, W) of the map.
        rng (np.random.Generator): Random source.
        smooth (float): Correlation length of the random field, as a fraction of the short side. Default: 0.2.
        mix (float): Weight of the random field (1 - mix for the gradient). Default: 0.4.

    Returns:
        ndarray: float32 HxW depth in [0, 1].
    """
    h, w = shape[:2]
    gradient = np.repeat(np.linspace(1, 0, h, dtype=np.float32)[:, None], w, axis=1)
    # white noise on a grid 8x coarser, blurred and upsampled: a smooth field, cheap at any image size
    gh, gw = h // 8 + 2, w // 8 + 2
    sigma = max(.5, smooth * min(h, w) / 8)
    field = cv2.GaussianBlur(rng.standard_normal((gh, gw)).astype(np.float32), (0, 0), sigma,
                             borderType=cv2.BORDER_REFLECT)
    field = cv2.resize(field, (w, h), interpolation=cv2.INTER_LINEAR)
    field = (field - field.min()) / max(float(field.max() - field.min()), 1e-6)
    return np.clip((1 - mix) * gradient + mix * field, 0, 1)


def add_haze(img, rng, beta=(0.4, 0.8), airlight=(0.8, 1.0), **depth_opts):
    """Add synthetic haze with the atmospheric scattering model ``I = J * t + A * (1 - t)``, ``t = exp(-beta * d)``.

    Args:
        img (ndarray): HxWx3 uint8 RGB image (J).
        rng (np.random.Generator): Random source (seed it per image for reproducible data).
        beta (float | tuple): Scattering coefficient. Default: (0.4, 0.8).
        airlight (float | tuple): Grey atmospheric light A in [0, 1]. Default: (0.8, 1.0).
        depth_opts: Keyword options of ``depth_proxy`` (smooth, mix).

    Returns:
        ndarray: HxWx3 uint8 hazy image.
    """
    x = img.astype(np.float32) / 255.
    b, a = _uniform(rng, beta), _uniform(rng, airlight)
    t = np.exp(-b * depth_proxy(img.shape, rng, **depth_opts))[..., None]
    out = x * t + a * (1 - t)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)
