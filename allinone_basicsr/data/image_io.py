"""Image-file conversions shared by data preparation and the restore command."""
import warnings

import cv2
import numpy as np

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def to_bgr8(img, name):
    """A ``cv2.imread(..., IMREAD_UNCHANGED)`` array -> HxWx3 uint8 BGR: grey replicated, alpha dropped, 16-bit
    scaled to 8-bit with a warning; other pixel types raise a ValueError naming ``name``."""
    if img.dtype == np.uint16:
        warnings.warn(f'{name}: 16-bit image read as 8-bit')
        img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f'{name}: unsupported pixel type {img.dtype}')
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(img[..., :3])
