"""The one image reader (fiber_det.data.utils.read_image): 16-bit images scaled, degenerate and
oversized images refused naming the file, EXIF orientation never applied, 8-bit images as PIL."""

import numpy as np
import pytest
from PIL import Image

from fiber_det.data.utils import UnusableImageError, read_image

from .tiny_data import write_image


def test_16_bit_grey_png_is_scaled_not_saturated(tmp_path):
    grey = np.array([[0, 255, 256, 4095], [32768, 40000, 65280, 65535]], dtype=np.uint16)
    grey = np.repeat(grey, 4, axis=0)  # 8 x 4 pixels
    Image.fromarray(grey).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as img:
        assert img.mode == "I;16"  # the mode whose convert("RGB") clips at 255
    rgb = read_image(str(tmp_path / "g16.png"), "RGB")
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 0, 1, 15]  # high byte: 65535 -> 255, 256 -> 1
    assert rgb[4, :, 0].tolist() == [128, 156, 255, 255]
    assert (rgb == rgb[:, :, :1]).all()  # grey in all three channels


def test_16_bit_colour_png_keeps_its_high_byte(tmp_path):
    cv2 = pytest.importorskip("cv2")
    rgb16 = np.zeros((4, 4, 3), dtype=np.uint16)
    rgb16[..., 0], rgb16[..., 1], rgb16[..., 2] = 65535, 32768, 300
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[:, :, ::-1])  # cv2 writes BGR
    rgb = read_image(str(tmp_path / "c16.png"), "RGB")
    assert rgb[0, 0].tolist() == [255, 128, 1]
    assert read_image(str(tmp_path / "c16.png"))[0, 0].tolist() == [1, 128, 255]  # BGR


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "CMYK", "1"])
def test_8_bit_images_read_exactly_as_pil_converts_them(tmp_path, mode):
    path = write_image(tmp_path / "x.png", 16, 12, seed=1)
    src = Image.open(path).convert(mode)
    out = tmp_path / ("y.jpg" if mode == "CMYK" else "y.png")
    src.save(out)
    expected = np.asarray(Image.open(out).convert("RGB"))
    assert np.array_equal(read_image(str(out), "RGB"), expected)
    assert np.array_equal(read_image(str(out), "BGR"), expected[:, :, ::-1])


@pytest.mark.parametrize("size", [(1, 40), (40, 1), (1, 1), (3, 400), (500, 4)])
def test_degenerate_image_is_an_error_naming_the_file(tmp_path, size):
    path = write_image(tmp_path / "thin.png", *size)
    with pytest.raises(
        UnusableImageError, match=rf"thin\.png is {size[0]}x{size[1]} pixels: degen"
    ):
        read_image(path)


def test_small_but_usable_images_are_read(tmp_path):
    for size in [(2, 2), (4, 400), (400, 4)]:
        assert read_image(write_image(tmp_path / "ok.png", *size)).shape == (size[1], size[0], 3)


def test_oversized_image_is_an_error_naming_the_file(tmp_path, monkeypatch):
    path = write_image(tmp_path / "big.png", 64, 48)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 3072 pixels > 2 x the limit
    with pytest.raises(UnusableImageError, match=r"big\.png is too large.*MAX_IMAGE_PIXELS"):
        read_image(path)


def test_floating_point_image_is_refused(tmp_path):
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(UnusableImageError, match=r"f\.tif has floating-point pixels"):
        read_image(str(tmp_path / "f.tif"))


def test_exif_orientation_is_not_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    pixels = np.zeros((20, 60, 3), dtype=np.uint8)
    pixels[:, :30] = 255  # left half white: a rotation would move it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(path, exif=exif, quality=100)
    with Image.open(path) as img:
        assert img.getexif()[0x0112] == 6
        stored = np.asarray(img.convert("RGB"))
    out = read_image(str(path), "RGB")
    assert out.shape == (20, 60, 3)  # the stored layout, not the displayed 60 x 20
    assert np.array_equal(out, stored)
