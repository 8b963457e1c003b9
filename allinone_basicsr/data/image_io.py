"""Image-file conversions shared by data preparation and the restore command."""
import warnings

import cv2
import numpy as np

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


_WARNED_16BIT = set()  # sources (LMDBs / folders) whose 16-bit images this process has warned about


def to_bgr8(img, name, source=None):
    """A ``cv2.imread(..., IMREAD_UNCHANGED)`` array -> HxWx3 uint8 BGR: grey replicated, alpha dropped, 16-bit
    scaled to 8-bit with a warning; other pixel types raise a ValueError naming ``name``.

    The warning names the image; with ``source`` (the LMDB or folder ``name`` comes from, as training sets read
    thousands of images) it is given once per source and process, naming the source and its first 16-bit image
    (forked DataLoader workers inherit the sources their parent has warned about)."""
    if img.dtype == np.uint16:
        if source is None:
            warnings.warn(f'{name}: 16-bit image read as 8-bit')
        elif source not in _WARNED_16BIT:
            _WARNED_16BIT.add(source)
            warnings.warn(f'{source}: 16-bit images read as 8-bit (reduced to 8 bits per channel; first: {name}); '
                          'said once for this source')
        img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f'{name}: unsupported pixel type {img.dtype}')
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(img[..., :3])
