"""Images for the SDK: validation of inputs with clear errors, loading, the resize policy, and writing.

Accepted images: a path to a PNG, JPEG, BMP, TIFF, WebP or PPM/PGM file (its size read from the header by
Pillow and checked before OpenCV decodes it; other formats are refused, as their size cannot be checked first),
converted to RGB, or a numpy array (H, W, 3) in RGB order, either
uint8 or float in [0, 1]. Grey (H, W) arrays are copied to three channels.

Resize policy ("stretch"): the image is resized to the model's square resolution without cropping, so every
input pixel is seen, and each output map is resized back to the input's size (bilinear for depth and normals,
nearest for segment labels). Non-square inputs are therefore seen with a stretched aspect ratio; crop them to a
square first if that matters for your camera.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from mmgen_edge.runtime.fileio import atomic_file

#: The largest input accepted, in pixels (4096 x 4096). Output maps come at the input's size (float32 depth, normals
#: and labels: ~20 bytes a pixel, ~0.35 GB at this size), so this bounds a frame's memory. A file is checked from its
#: header before it is decoded, so an image bomb (a small PNG of 20000 x 20000 pixels) is refused without allocating.
MAX_INPUT_PIXELS = 4096 * 4096


def check_input_size(width: int, height: int, name: str = "image", limit: int = MAX_INPUT_PIXELS) -> None:
    """Refuse an image over ``limit`` pixels (:data:`MAX_INPUT_PIXELS`: 4096x4096) saying what to do."""
    if width * height > limit:
        bound = f"{limit / 1e6:.1f} (4096x4096)" if limit == MAX_INPUT_PIXELS else f"{limit / 1e6:.1f} megapixels"
        why = " (the model sees it at its own resolution)" if limit == MAX_INPUT_PIXELS else ""
        raise ValueError(
            f"{name}: {width}x{height} is {width * height / 1e6:.1f} megapixels, over the limit of {bound}; "
            f"resize it first{why}"
        )


def check_video_size(capture: cv2.VideoCapture, name: str) -> None:
    """Refuse an opened capture whose frames are over :data:`MAX_INPUT_PIXELS` before its first frame is decoded
    (a 16384 x 16384 stream would allocate 0.8 GB a frame); sizes OpenCV does not know (0) are checked per frame."""
    width, height = (capture.get(p) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT))
    if all(np.isfinite(v) and v > 0 for v in (width, height)):
        check_input_size(int(width), int(height), name)


#: Image formats whose headers Pillow reads (and so the pixel limit is checked before decoding).
READ_FORMATS = "PNG, JPEG, BMP, TIFF, WebP, PPM/PGM"


def header_size(path: Path, name: str = "image") -> tuple[int, int] | None:
    """(width, height) from the file's header without decoding the pixels; None if Pillow cannot identify it.

    Raises:
        ValueError: the header declares more pixels than Pillow opens at all (a decompression bomb), with its words.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size
    except Image.DecompressionBombError as e:  # Pillow refused it for its size: far over our limit too
        raise ValueError(
            f"{name} {path}: over the limit of {MAX_INPUT_PIXELS / 1e6:.1f} megapixels (4096x4096): Pillow says {e}"
        ) from None
    except (UnidentifiedImageError, OSError):
        return None


def check_complete(path: Path, name: str = "image") -> None:
    """Refuse a truncated JPEG (OpenCV decodes one into a half-grey image with only a libjpeg warning on stderr).

    A JPEG missing only its end marker (all its data there) is refused too: Pillow cannot tell it from a truncated
    one.

    Pillow decodes the entropy-coded data at 1/8 scale (its DCT scaling), about half an OpenCV decode of the same
    file; other formats are left to OpenCV, which refuses a truncated PNG itself.
    """
    from PIL import Image

    with Image.open(path) as im:
        if im.format not in ("JPEG", "MPO"):  # MPO: a JPEG with an MPF segment (phones' Ultra HDR, cameras)
            return
        im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
        try:
            im.load()
        except OSError as e:
            raise ValueError(
                f"{name}: {path} is a damaged JPEG ({e}): truncated, or at least without its end marker; OpenCV would "
                "read a truncated one with grey where the data is missing. Re-save or download it again"
            ) from None


def check_image_file(path: str | os.PathLike[str], name: str = "image") -> None:
    """What :func:`load_image` checks of a file before it decodes it: it exists, its header is readable
    (:data:`READ_FORMATS`), its size is within :data:`MAX_INPUT_PIXELS`, and a JPEG is complete."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{name}: {path} is a folder, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"{name}: {path} does not exist")
    size = header_size(path, name)
    if size is None:  # OpenCV would decode it whatever its size (its own limit is 2**30 pixels)
        raise ValueError(
            f"{name}: {path} is not an image whose header can be read ({READ_FORMATS}); "
            "convert it, or load it yourself and pass the array"
        )
    check_input_size(*size, name=f"{name} {path}")
    check_complete(path, name)


def load_image(
    image: str | os.PathLike[str] | np.ndarray, name: str = "image", limit: int = MAX_INPUT_PIXELS
) -> np.ndarray:
    """Validate and return an RGB uint8 image (H, W, 3): an array of at most ``limit`` pixels, a file of at most
    :data:`MAX_INPUT_PIXELS` (files are model inputs)."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        check_image_file(path, name)
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{name}: {path} is not an image OpenCV can read")
        check_input_size(bgr.shape[1], bgr.shape[0], name=f"{name} {path}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name}: expected a path or a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise ValueError(f"{name}: the array is empty (shape {image.shape})")
    if image.ndim in (2, 3):
        check_input_size(image.shape[1], image.shape[0], name, limit)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name}: expected (H, W, 3) RGB or (H, W) grey, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    if image.dtype.kind != "f":
        raise ValueError(f"{name}: dtype {image.dtype} is not supported; use uint8 (0..255) or float (0..1)")
    if not np.isfinite(image).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    if image.min() < 0.0 or image.max() > 1.0:
        raise ValueError(f"{name}: float images must lie in [0, 1], got [{image.min():.3g}, {image.max():.3g}]")
    return (image * 255.0 + 0.5).astype(np.uint8)


def write_image(path: str | os.PathLike[str], rgb: np.ndarray) -> Path:
    """Write an RGB image (PNG, JPEG, ... by the extension) atomically: temporary file beside it, then rename.

    Args:
        path: the image file to write (its folder is created).
        rgb: (H, W, 3) uint8 RGB, or (H, W) grey.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: OpenCV could not encode or write it (e.g. an unknown extension); ``path`` is left as it was.
    """
    path = Path(path)
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    problem = f"could not write {path} (OpenCV cannot encode a {rgb.shape} {rgb.dtype} image as {path.suffix!r})"
    with atomic_file(path) as tmp:
        try:
            written = cv2.imwrite(str(tmp), image)
        except cv2.error as e:  # e.g. no writer for the extension
            raise ValueError(f"{problem}: {str(e).strip().splitlines()[-1]}") from None
        if not written:
            raise ValueError(problem)
    return path


def to_model_size(image: np.ndarray, resolution: int) -> np.ndarray:
    """Resize (stretch) an RGB image to (resolution, resolution, 3)."""
    h, w = image.shape[:2]
    if (h, w) == (resolution, resolution):
        return image
    shrinking = h * w > resolution * resolution
    return cv2.resize(image, (resolution, resolution), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def to_input_size(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize a model-resolution map back to the input's (height, width)."""
    h, w = size
    if array.shape[:2] == (h, w):
        return array
    return cv2.resize(array, (w, h), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)
