"""Reading one image file as an 8-bit RGB PIL image: 16-bit grayscale scaled to 8 bits, float pixels by their range,
32-bit integer pixels refused; errors name the file."""
import numpy as np
from PIL import Image

from .errors import DataError

# Pillow's modes of 16-bit grayscale files (PNG, TIFF, PGM).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Formats whose 32-bit integer mode "I" holds at most 16 bits: Pillow opens 16-bit PGM (and, in some versions, PNG)
# files as "I".
SIXTEEN_BIT_I_FORMATS = ("PNG", "PPM")


def to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit grayscale image scaled to 8 bits (value / 257, rounded); Pillow's own conversion clips at 255."""
    values = np.asarray(img, dtype=np.float64)
    return Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), "L")


def _holds_sixteen_bits(img: Image.Image) -> bool:
    """Whether an image of mode "I" (32-bit integers) stores at most 16 bits per sample, by its format."""
    if img.format == "TIFF":
        bits = img.tag_v2.get(258, 32)  # BitsPerSample
        return max(bits if isinstance(bits, tuple) else (bits,)) <= 16
    return img.format in SIXTEEN_BIT_I_FORMATS


def _float_to_8bit(img: Image.Image, path: str) -> Image.Image:
    """A float image (mode F) as 8 bits by its range: 0..1 is scaled by 255, 0..255 kept (Pillow's conversion);
    other ranges have no defined scale and are refused."""
    values = np.asarray(img, dtype=np.float64)
    if not np.isfinite(values).all():
        raise DataError(f"cannot use image {path}: its float pixels (Pillow mode F) hold NaN or infinite values; "
                        f"save it with finite values in 0..1, or with 8 or 16 bits per sample")
    low, high = float(values.min()), float(values.max())
    if low >= 0 and high <= 1:
        return Image.fromarray(np.round(values * 255.0).astype(np.uint8), "L")
    if low >= 0 and high <= 255:
        return img.convert("L")
    raise DataError(f"cannot use image {path}: its float pixels (Pillow mode F) range from {low:g} to {high:g}, "
                    f"within neither 0..1 nor 0..255, so they have no defined 8-bit scale; rescale them to 0..1 or "
                    f"save the image with 8 or 16 bits per sample")


def _as_rgb(img: Image.Image, path: str) -> Image.Image:
    """A decoded image as 8-bit RGB: 16-bit grayscale scaled, float by its range, 32-bit integers refused."""
    if img.mode in SIXTEEN_BIT_MODES or (img.mode == "I" and _holds_sixteen_bits(img)):
        img = to_8bit(img)
    elif img.mode == "I":
        raise DataError(f"cannot use image {path}: its 32-bit integer pixels (Pillow mode I) have no defined 8-bit "
                        f"scale; save it with 8 or 16 bits per sample")
    elif img.mode == "F":
        img = _float_to_8bit(img, path)
    return img if img.mode == "RGB" else img.convert("RGB")  # convert() would copy an RGB image (0.6 ms at 500 px)


def load_rgb(path: str) -> Image.Image:
    """Decode an image file as RGB (16-bit grayscale scaled to 8 bits, float by its range); errors name the file."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}; replace the file with a readable image, or remove it "
                        f"(the data's order then changes)") from err
    return _as_rgb(img, path)
