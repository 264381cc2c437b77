"""read_image on every kind of awkward file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from m2u.core.inputs import discover
from m2u.masking import ImageReadError, read_image


@pytest.fixture()
def photo() -> Image.Image:
    base = np.zeros((40, 30, 3), np.uint8)
    base[:, :, 0] = np.linspace(0, 255, 30, dtype=np.uint8)[None, :]
    base[:, :, 1] = np.linspace(0, 255, 40, dtype=np.uint8)[:, None]
    base[:20, :, 2] = 200  # smooth, asymmetric content: JPEG keeps it, a wrong rotation or inversion does not
    return Image.fromarray(base)


def test_plain_rgb(tmp_path, photo):
    photo.save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (40, 30, 3)
    assert np.array_equal(out, np.asarray(photo))


def test_greyscale_becomes_rgb(tmp_path, photo):
    photo.convert("L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (40, 30, 3) and np.array_equal(out[..., 0], out[..., 2])


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 40 * 30).reshape(40, 30).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "s.png")
    out = read_image(tmp_path / "s.png")
    assert out.shape == (40, 30, 3)
    assert out.max() >= 250 and out.min() <= 5
    assert 100 < out[20, 15, 0] < 160  # mid-range stays mid-range (clipping would give 255)


def test_rgba_is_composited_on_white(tmp_path, photo):
    rgba = photo.convert("RGBA")
    alpha = np.full((40, 30), 255, np.uint8)
    alpha[:, :10] = 0
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "t.png")
    out = read_image(tmp_path / "t.png")
    assert (out[:, :10] == 255).all() and np.array_equal(out[:, 10:], np.asarray(photo)[:, 10:])


def test_palette_and_cmyk(tmp_path, photo):
    photo.convert("P").save(tmp_path / "p.png")
    photo.convert("CMYK").save(tmp_path / "c.jpg")
    for name in ("p.png", "c.jpg"):
        out = read_image(tmp_path / name)
        assert out.shape == (40, 30, 3)
        # Colours survive the conversion (a broken CMYK path gives an inverted or grey image).
        assert np.abs(out.astype(int) - np.asarray(photo).astype(int)).mean() < 40


def test_exif_orientation_is_applied(tmp_path, photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    photo.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (40, 30, 3)
    assert np.abs(out.astype(int) - np.asarray(photo).astype(int)).mean() < 20


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty"),
        (b"not an image at all", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "corrupt|truncated|not an image"),
    ],
)
def test_unreadable_files_raise_with_a_reason(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as info:
        read_image(path)
    assert info.value.reason and info.value.path == str(path)


def test_truncated_jpeg(tmp_path, photo):
    photo.resize((300, 400)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(tmp_path / "cut.jpg")


def test_pixel_limit_refuses_before_decoding(tmp_path, photo):
    photo.save(tmp_path / "a.png")
    with pytest.raises(ImageReadError, match="too large"):
        read_image(tmp_path / "a.png", max_pixels=1000)
    assert read_image(tmp_path / "a.png", max_pixels=1200).shape == (40, 30, 3)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="cannot open"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(tmp_path)


def test_ignored_files_are_named_and_hidden_images_counted(tmp_path):
    for name in ("a.jpg", "notes.txt", ".b.jpg", ".cache/c.png", "sub/.d/e.jpg", "sub/f.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    skipped = discover([tmp_path]).describe_skipped()
    plain = "1 file(s) in the input folders have no image suffix and were not read (.txt 1)"
    assert skipped.startswith(plain + "; 3 image file(s) in the input folders are hidden")
    assert discover([tmp_path / "sub"]).describe_skipped().startswith("1 image file(s)")
    # Files given one by one are all read, hidden or not: nothing to report.
    assert discover([tmp_path / "a.jpg"]).describe_skipped() == ""
