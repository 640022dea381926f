"""Reading images on the edge: any common format and mode becomes the model's input, and every broken file is
an `ImageReadError` with a one-line message that starts with the path."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from vitcodec.edge.preprocess import ImageReadError, load_image, to_pixels
from vitcodec.packages import InputSpec

GREY = InputSpec((28, 28), 1, (0.5,), (0.5,), 4)
RGB = InputSpec((32, 32), 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 16)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.full((28, 28), 1000, np.uint16)
    values[0, 0] = 65535
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = load_image(tmp_path / "deep.png")
    assert image.mode.startswith("I")
    pixels = to_pixels(image, GREY)
    assert pixels.dtype == np.uint8 and pixels.shape == (28, 28, 1)
    assert pixels[1, 1, 0] == round(1000 / 257) and pixels[0, 0, 0] == 255
    assert to_pixels(image, RGB).shape == (32, 32, 3)


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV", "I",
                                  "F", "I;16", "RGBX"])
def test_every_mode_converts(mode):
    image = Image.new(mode, (20, 12))
    assert to_pixels(image, GREY).shape == (28, 28, 1)
    assert to_pixels(image, RGB).shape == (32, 32, 3)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:, :5] = 255  # a bright left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "phone.jpg")
    assert image.size == (10, 20)  # upright: the stored 20x10 becomes 10 wide, 20 high
    assert np.asarray(image)[:3].mean() > 200  # the bright edge is now on top


def test_palette_with_transparency_and_cmyk_jpeg(tmp_path):
    palette = Image.new("P", (16, 16))
    palette.putpalette([0, 0, 0, 255, 255, 255] * 128)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "icon.gif")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "print.jpg")
    assert to_pixels(load_image(tmp_path / "icon.gif"), RGB).shape == (32, 32, 3)
    red = to_pixels(load_image(tmp_path / "print.jpg"), RGB)
    assert red[16, 16, 0] > 200 and red[16, 16, 1] < 60


@pytest.mark.parametrize("case", ["missing", "folder", "garbage", "truncated png", "truncated jpeg", "empty"])
def test_broken_files_raise_one_line_errors(tmp_path, case):
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    photo.save(tmp_path / "ok.png")
    photo.save(tmp_path / "ok.jpg")
    path = tmp_path / "input"
    if case == "folder":
        path.mkdir()
    elif case == "garbage":
        path.write_bytes(b"GIF89a" + bytes(range(256)))
    elif case == "truncated png":
        path.write_bytes((tmp_path / "ok.png").read_bytes()[:300])
    elif case == "truncated jpeg":
        path.write_bytes((tmp_path / "ok.jpg").read_bytes()[:400])
    elif case == "empty":
        path.write_bytes(b"")
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    expected = {"missing": "no such file", "folder": "is a folder, not a file"}.get(case, "not a readable image")
    assert expected in message
