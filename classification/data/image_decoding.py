"""Reading one image file as an 8-bit PIL image of the model's channels (RGB for 3, L for 1): integer grayscale of up
to 16 bits scaled by its bit depth, float pixels by their range, 32-bit integer pixels and negative signed ones refused;
errors name the file."""
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError

# Pillow's modes of 16-bit grayscale files (PNG, TIFF, PGM).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Formats whose 32-bit integer mode "I" holds at most 16 bits: Pillow opens 16-bit PGM (and, in some versions, PNG)
# files as "I".
SIXTEEN_BIT_I_FORMATS = ("PNG", "PPM")
TIFF_BITS_PER_SAMPLE, TIFF_SAMPLE_FORMAT, TIFF_SIGNED = 258, 339, 2
# The Pillow mode images are decoded to for a model of each input-channel count the data pipeline supports.
IMAGE_MODES = {1: "L", 3: "RGB"}


def channels_name(channels: int) -> str:
    """How messages name images of `channels` channels: '1-channel (gray)', '3-channel (RGB)', else 'N-channel'."""
    kind = {1: " (gray)", 3: " (RGB)"}.get(channels, "")
    return f"{channels}-channel{kind}"


def to_8bit(img: Image.Image, bits: int = 16) -> Image.Image:
    """A grayscale image of non-negative integers of `bits` bits scaled to 8 bits (value * 255 / (2**bits - 1),
    rounded: 16 bits by 1/257); Pillow's own conversion clips at 255."""
    values = np.asarray(img, dtype=np.float64)
    return Image.fromarray(np.clip(np.round(values * 255.0 / (2 ** bits - 1)), 0, 255).astype(np.uint8), "L")


def _tiff_tag(img: Image.Image, tag: int, default: int) -> int:
    """The first value of a TIFF tag (one per sample) of `img`, or `default` when absent or not a TIFF. Pillow opens
    only one-sample images as integer grayscale, and decodes the first sample's value of a tag that lists more."""
    value = img.tag_v2.get(tag, default) if img.format == "TIFF" else default
    return value[0] if isinstance(value, tuple) else value


def _gray_depth(img: Image.Image) -> tuple[int, bool]:
    """(bits per sample, signed) of an integer grayscale image (mode I;16* or I): a TIFF's BitsPerSample and
    SampleFormat (12-bit TIFFs open as I;16, signed 16-bit ones as I), else 16 bits for the 16-bit files and 32 for
    other mode-I images, unsigned."""
    default = 16 if img.mode in SIXTEEN_BIT_MODES or img.format in SIXTEEN_BIT_I_FORMATS else 32
    return _tiff_tag(img, TIFF_BITS_PER_SAMPLE, default), _tiff_tag(img, TIFF_SAMPLE_FORMAT, 1) == TIFF_SIGNED


def _signed_to_8bit(img: Image.Image, bits: int, path: str) -> Image.Image:
    """A signed integer image whose values are non-negative, scaled by its `bits` value bits; a negative value has no
    defined 8-bit scale and is refused."""
    low = int(np.asarray(img).min())
    if low < 0:
        raise DataError(f"cannot use image {path}: its signed {bits + 1}-bit pixels go down to {low}, and negative "
                        f"values have no defined 8-bit scale; save it unsigned, with 8 or 16 bits per sample")
    return to_8bit(img, bits)


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


def _as_mode(img: Image.Image, path: str, mode: str) -> Image.Image:
    """A decoded image as 8-bit `mode` ('RGB' or 'L'): integer grayscale scaled by its bits, float by its range,
    32-bit integers refused; gray with premultiplied alpha (mode La, which Pillow converts to LA only) unpremultiplied
    as RGBa is, and CIELab (mode LAB, which Pillow converts to RGB only) taken to RGB. Colour becomes gray by Pillow's
    luminance L = (299 R + 587 G + 114 B) / 1000 (ITU-R 601-2), gray becomes RGB with its value in all three
    channels; alpha is dropped."""
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "I":
        bits, signed = _gray_depth(img)
        if bits > 16:
            raise DataError(f"cannot use image {path}: its 32-bit integer pixels (Pillow mode I) have no defined "
                            f"8-bit scale; save it with 8 or 16 bits per sample")
        img = _signed_to_8bit(img, bits - 1, path) if signed else to_8bit(img, bits)
    elif img.mode == "F":
        img = _float_to_8bit(img, path)
    elif img.mode == "La":
        img = img.convert("LA")
    elif img.mode == "LAB":  # Pillow converts CIELab (a TIFF's) to RGB only, by its sRGB profile
        img = img.convert("RGB")
    return img if img.mode == mode else img.convert(mode)  # convert() would copy an RGB image (0.6 ms at 500 px)


UNIDENTIFIED = "cannot identify image file (empty, cut short, or of a type Pillow does not read)"


def load_image(path: str, channels: int = 3) -> Image.Image:
    """Decode an image file as 8-bit RGB for a model of 3 input channels, as gray (mode L) for one of 1 (`_as_mode`:
    integer grayscale scaled by its bits, float by its range, colour by its luminance); errors name the file."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        # Pillow's text for a file of no image type it knows repeats the path, as its open file's repr
        reason = UNIDENTIFIED if isinstance(err, UnidentifiedImageError) else err
        raise DataError(f"cannot read image {path}: {reason}; replace the file with a readable image, or remove it "
                        f"(the data's order then changes)") from err
    return _as_mode(img, path, IMAGE_MODES[channels])
