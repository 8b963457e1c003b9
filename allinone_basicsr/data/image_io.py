"""Image files: decoding with the completeness checks the restore tool relies on, and the conversion to 8-bit BGR
shared by data preparation, the datasets and restore."""
import io
import re
import warnings

import cv2
import numpy as np
from PIL import Image, ImageFile

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


class ImageError(ValueError):
    """An image that cannot be used: unreadable, corrupt, truncated or of an unsupported pixel type."""

    def __init__(self, path, reason):
        super().__init__(f'{path}: {reason}')
        self.path, self.reason = path, reason


PNG_END = b'\x00\x00\x00\x00IEND\xaeB`\x82'  # a PNG's last chunk: always these 12 bytes (empty IEND and its CRC)
TIFF_ORDERS = {b'II*\x00': 'little', b'MM\x00*': 'big'}


def _tiff_problem(data, img):
    """A classic TIFF's first directory must lie inside the file (Pillow cannot open one that does not), and so
    must the strips or tiles its tags point at (read from Pillow's tags when it could open the file)."""
    order = TIFF_ORDERS.get(bytes(data[:4]))
    if order is None:
        return None
    size, ifd = len(data), int.from_bytes(data[4:8], order)
    entries = int.from_bytes(data[ifd:ifd + 2], order) if ifd + 2 <= size else 0
    if ifd + 2 > size or ifd + 2 + 12 * entries + 4 > size:
        return f'truncated TIFF (its image directory at byte {ifd} runs past the end of the {size}-byte file)'
    tags = getattr(img, 'tag_v2', None) or {}
    for offsets, counts in ((273, 279), (324, 325)):  # StripOffsets / StripByteCounts, TileOffsets / TileByteCounts
        for offset, count in zip(tags.get(offsets) or (), tags.get(counts) or ()):
            if offset + count > size:
                return f'truncated TIFF (its image data runs to byte {offset + count}, the file has {size})'
    return None


def _plugins():
    from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin, WebPImagePlugin
    return ((b'\xff\xd8\xff', 'JPEG', JpegImagePlugin.JpegImageFile), (b'\x89PNG', 'PNG', PngImagePlugin.PngImageFile),
            (b'II*\x00', 'TIFF', TiffImagePlugin.TiffImageFile), (b'MM\x00*', 'TIFF', TiffImagePlugin.TiffImageFile),
            (b'RIFF', 'WebP', WebPImagePlugin.WebPImageFile), (b'BM', 'BMP', BmpImagePlugin.BmpImageFile),
            (b'GIF8', 'GIF', GifImagePlugin.GifImageFile))


def _header_problem(data):
    """Why Pillow cannot read the header of a file whose first bytes name a format it knows (its plugin's own error:
    "Truncated File Read" when the file ends inside the header); None for other files (OpenCV decides)."""
    for magic, fmt, plugin in _plugins():
        if data.startswith(magic):
            try:
                plugin(io.BytesIO(data))
            except Exception as err:
                msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                return f'{"truncated" if "truncat" in msg.lower() else "corrupt"} {fmt} ({msg})'
            return f'corrupt {fmt} (Pillow cannot identify it)'
    return None


JPEG_END = b'\xff\xd9'  # a JPEG's end-of-image marker


def check_complete(data):
    """None when the encoded image ``data`` decodes completely, otherwise the reason. Pillow decodes every format it
    knows in full (truncated data raises, ``LOAD_TRUNCATED_IMAGES`` off) and checks a PNG's chunk checksums
    (``verify``); on top, a PNG must end with its IEND chunk, a WebP hold its RIFF size and a TIFF's directory,
    strips and tiles lie inside the file. A format Pillow does not know is left to OpenCV's decoding.

    Pillow says "truncated" whenever its decoder runs out of data, also when a damaged length or table makes it read
    past the end of a complete file: a JPEG is called truncated only when it does not end with its end-of-image
    marker (trailing zero padding allowed); one that does is corrupt."""
    problem = _completeness_problem(data)
    if problem and problem.startswith('truncated JPEG') and data.rstrip(b'\x00').endswith(JPEG_END):
        problem = ('corrupt JPEG (the file is complete, it ends with its end-of-image marker, but its data is damaged: '
                   + problem[len('truncated JPEG ('):])
    return problem


def _completeness_problem(data):
    """:func:`check_complete`'s reason before a JPEG's "truncated" is checked against its end marker."""
    if data.startswith(b'\x89PNG\r\n\x1a\n') and PNG_END not in data[-64:]:
        return 'truncated PNG (the file ends before its IEND chunk)'
    if data[:4] == b'RIFF' and data[8:12] == b'WEBP' and int.from_bytes(data[4:8], 'little') + 8 > len(data):
        return f'truncated WebP ({len(data)} of {int.from_bytes(data[4:8], "little") + 8} bytes)'
    saved = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = False, None  # large images are what tiling is for
    try:
        with warnings.catch_warnings(record=True) as caught:  # Pillow warns where a tag's value is cut short
            warnings.simplefilter('always')
            problem = _pillow_problem(data)
        cut = [str(w.message) for w in caught if re.search(r'truncat|expecting to read', str(w.message), re.I)]
        if cut and (problem is None or problem.startswith('corrupt')):
            fmt = problem.split(' ', 2)[1] if problem else 'image'
            return f'truncated {fmt} ({cut[0]})'
        return problem
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = saved


def _pillow_problem(data):
    """What a full decode by Pillow finds wrong (a PNG: ``verify`` first, the chunk checksums up to IEND), or None."""
    try:
        img = Image.open(io.BytesIO(data))
    except Exception:  # a format Pillow does not know, or a header it cannot read
        return _tiff_problem(data, None) or _header_problem(data)
    with img:
        fmt = img.format or 'image'
        problem = _tiff_problem(data, img)
        if problem:
            return problem
        try:
            if fmt == 'PNG':
                img.verify()
                img = Image.open(io.BytesIO(data))
            img.load()
        except Exception as err:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            if 'not available' in msg or 'unsupported' in msg.lower():  # a feature Pillow lacks
                return None
            return f'{"truncated" if "truncated" in msg.lower() else "corrupt"} {fmt} ({msg})'
    return None


def decode_image(data, name):
    """Encoded bytes -> HxWx3 float32 RGB in [0, 1] (grey -> RGB, alpha dropped, 16-bit -> 8-bit with a warning);
    an :class:`ImageError` naming ``name`` when they are empty, truncated, corrupt or of an unsupported pixel type."""
    if not data:
        raise ImageError(name, 'empty file')
    problem = check_complete(data)
    if problem:
        raise ImageError(name, problem)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(name, 'cannot decode it (corrupt, or a format OpenCV cannot read)')
    try:
        bgr = to_bgr8(img, name)
    except ValueError as err:
        raise ImageError(name, str(err).removeprefix(f'{name}: ')) from None
    return np.ascontiguousarray(bgr[..., ::-1]).astype(np.float32) / 255.0


def read_image(path):
    """Any image file -> HxWx3 float32 RGB in [0, 1] (see :func:`decode_image`); an unreadable, corrupt or truncated
    file raises an :class:`ImageError` (a ValueError) with the reason."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as err:
        raise ImageError(path, f'cannot read it ({err.strerror or err})') from None
    return decode_image(data, path)
