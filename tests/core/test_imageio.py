"""read_image on every kind of awkward file."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from m2u.core.inputs import discover
from m2u.masking import ImageReadError, read_image

from ..conftest import SHARED


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


@pytest.mark.parametrize(
    "options", [{}, {"progressive": True}, {"restart_marker_blocks": 2}, {"subsampling": 0}], ids=str
)
def test_a_jpeg_lacking_only_its_end_marker_is_read_whole_and_every_cut_one_refused(tmp_path, photo, options):
    """A JPEG whole but for its end marker (FF D9), as some cameras and scripts leave them, was refused as cut:
    Pillow cannot tell the two apart (with the marker appended it decodes a cut file too, grey below the cut).
    Such a file reads as the whole file (its EXIF turn too); every file cut anywhere else is refused, a
    progressive one cut at the end of one of its scans (libjpeg-turbo alone decodes it without a warning) too."""
    from m2u.core.imageio import decode_image, jpeg_lacking_only_its_end, read_photo

    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: turned a quarter
    photo.resize((48, 64)).save(tmp_path / "full.jpg", quality=90, exif=exif, **options)
    data = (tmp_path / "full.jpg").read_bytes()
    whole = read_image(tmp_path / "full.jpg")
    assert whole.shape == (48, 64, 3)
    for end in (2, 1):  # the marker missing, or its last byte
        (tmp_path / "open.jpg").write_bytes(data[:-end])
        assert np.array_equal(read_image(tmp_path / "open.jpg"), whole)
        assert np.array_equal(read_photo(tmp_path / "open.jpg").rgb, whole)
    cuts = [n for n in range(3, len(data) - 2) if jpeg_lacking_only_its_end(data[:n])]
    assert cuts == [], "a cut file taken for a whole one"
    for n in (len(data) - 3, len(data) // 2):
        with pytest.raises(ImageReadError, match="truncated"):
            decode_image(data[:n])


def test_a_jpeg_lacking_its_end_marker_is_refused_as_cut_without_simplejpeg(tmp_path, photo, monkeypatch):
    """Without simplejpeg (an install that left it out, as the device kit does) the check cannot decode strictly:
    such a file is refused as truncated, as before the check, not an ImportError from inside the refusal."""
    import sys

    photo.resize((48, 64)).save(tmp_path / "full.jpg", quality=90)
    (tmp_path / "open.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:-2])
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # import simplejpeg raises ImportError
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(tmp_path / "open.jpg")


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


def test_a_decompression_bomb_is_refused_in_the_same_words(tmp_path):
    """Pillow refuses a declared size over twice its own limit while opening, before m2u's check runs: the reason
    reads as m2u's own, not Pillow's "could be decompression bomb DOS attack"."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 15000, 15000, 8, 2, 0, 0, 0)  # 225 MP of RGB, declared only
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(ImageReadError) as refused:
        read_image(tmp_path / "bomb.png")
    assert refused.value.reason == "image too large: 225.0 MP exceeds the limit of 100.0 MP"
    with pytest.raises(
        ImageReadError
    ) as refused:  # a limit asked for above Pillow's own: its ceiling is said
        read_image(tmp_path / "bomb.png", max_pixels=500_000_000)
    assert refused.value.reason.startswith("image too large: 225.0 MP exceeds Pillow's ceiling of 179.0 MP")


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


def test_links_to_folders_are_counted_not_followed(tmp_path):
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    (tmp_path / "elsewhere" / "b.jpg").write_bytes(b"x")
    (tmp_path / "photos" / "loop").symlink_to("..")  # a loop: never walked round
    (tmp_path / "photos" / "sub" / "out").symlink_to(tmp_path / "elsewhere")
    found = discover([tmp_path / "photos"])
    assert [e.relative for e in found.entries] == ["a.jpg"]
    skipped = found.describe_skipped()
    assert (
        skipped
        == "2 symbolic link(s) to folders in the input folders were not followed; give such a folder itself to read it"
    )


def _camera_exif(orientation: int, width: int, height: int) -> Image.Exif:
    from PIL import ExifTags

    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "m2u-camera"
    exif[ExifTags.Base.DateTime] = "2026:12:06 10:00:00"
    sizes = exif.get_ifd(ExifTags.IFD.Exif)
    sizes[ExifTags.Base.ExifImageWidth], sizes[ExifTags.Base.ExifImageHeight] = width, height
    return exif


@pytest.mark.parametrize("suffix", [".jpg", ".JPEG", ".png", ".webp", ".tiff"])
def test_a_written_copy_keeps_the_photos_profile_and_exif_upright(tmp_path, photo, suffix):
    """A turned camera photo with a colour profile: the copy is upright, keeps the profile and the EXIF, says no
    turn is left to apply and gives the sizes its pixels have."""
    from PIL import ExifTags, ImageCms

    from m2u.core.imageio import read_photo, write_photo

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    stored = photo.transpose(
        Image.Transpose.ROTATE_90
    )  # 30x40 stored; orientation 6 turns it back to 40 high
    source = tmp_path / "camera.jpg"
    stored.save(source, quality=98, icc_profile=profile, exif=_camera_exif(6, 40, 30).tobytes())

    read = read_photo(source)
    assert read.rgb.shape == (40, 30, 3) and read.alpha is None and read.icc_profile == profile
    target = write_photo(tmp_path / f"copy{suffix}", read.rgb, like=read)

    with Image.open(target) as written:
        assert written.size == (30, 40) and written.info.get("icc_profile") == profile
        exif = written.getexif()
        assert (
            ExifTags.Base.Orientation not in exif
        )  # the pixels are upright: a viewer must not turn them again
        assert (
            exif[ExifTags.Base.Make] == "m2u-camera" and exif[ExifTags.Base.DateTime] == "2026:12:06 10:00:00"
        )
        sizes = exif.get_ifd(ExifTags.IFD.Exif)
        assert (sizes[ExifTags.Base.ExifImageWidth], sizes[ExifTags.Base.ExifImageHeight]) == (30, 40)
    assert np.abs(read_photo(target).rgb.astype(int) - read.rgb.astype(int)).max() <= (
        6 if "j" in suffix.lower() else 0
    )


def test_a_png_with_imagemagicks_text_exif_is_turned_and_its_copy_keeps_that_exif(tmp_path, photo):
    """ImageMagick keeps a PNG's EXIF as hex in a "Raw profile type exif" text chunk, not an eXIf chunk: the photo
    is turned by it and the copy carries it, without the orientation."""
    from PIL import ExifTags, PngImagePlugin

    from m2u.core.imageio import read_photo, write_photo

    block = b"Exif\x00\x00" + _camera_exif(6, 40, 30).tobytes()
    hex_text = block.hex()
    lines = "\n".join(hex_text[i : i + 72] for i in range(0, len(hex_text), 72))
    text = PngImagePlugin.PngInfo()
    text.add_text("Raw profile type exif", f"\nexif\n{len(block):8d}\n{lines}\n")
    source = tmp_path / "magick.png"
    photo.transpose(Image.Transpose.ROTATE_90).save(source, pnginfo=text)

    read = read_photo(source)
    assert np.array_equal(read.rgb, np.asarray(photo))
    assert read.exif is not None
    with Image.open(write_photo(tmp_path / "copy.png", read.rgb, like=read)) as written:
        exif = written.getexif()
        assert ExifTags.Base.Orientation not in exif and exif[ExifTags.Base.Make] == "m2u-camera"


@pytest.mark.parametrize(
    "suffix, keeps_alpha", [(".png", True), (".webp", True), (".tif", True), (".jpg", False)]
)
def test_a_written_copy_keeps_transparency_where_its_format_can(tmp_path, photo, suffix, keeps_alpha):
    from m2u.core.imageio import read_photo, write_photo

    alpha = np.full((40, 30), 255, np.uint8)
    alpha[:, :7] = 0
    source = tmp_path / "clear.png"
    Image.fromarray(np.dstack([np.asarray(photo), alpha]), "RGBA").save(source)
    read = read_photo(source)
    assert read.alpha is not None and np.array_equal(read.alpha, alpha)
    copy = read_photo(write_photo(tmp_path / f"copy{suffix}", read.rgb, like=read))
    assert (copy.alpha is not None and np.array_equal(copy.alpha, alpha)) == keeps_alpha
    assert keeps_alpha or copy.alpha is None


def test_a_bmp_copy_and_an_unknown_suffix(tmp_path, photo):
    from m2u.core.imageio import photo_format, read_photo, write_photo

    photo.save(tmp_path / "a.png", icc_profile=b"not written to a BMP")
    read = read_photo(tmp_path / "a.png")
    assert np.array_equal(read_photo(write_photo(tmp_path / "a.bmp", read.rgb, like=read)).rgb, read.rgb)
    assert photo_format(".GIF") is None and photo_format(".jfif") == "JPEG"
    with pytest.raises(ValueError, match="cannot write a photo as .gif"):
        write_photo(tmp_path / "a.gif", read.rgb)
    assert not (tmp_path / "a.gif").exists()


def test_the_thumbnail_showing_the_photo_as_it_was_is_not_kept():
    """A camera's EXIF holds a small copy of the photo (IFD1): in a restored copy it would still show the mask."""
    from PIL import ExifTags

    from m2u.core.imageio import read_photo

    folder = SHARED / "faces" / "real-masked"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    with_thumbnail = []
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as img:
            if img.getexif().get_ifd(ExifTags.IFD.IFD1):
                with_thumbnail.append(path)
    assert with_thumbnail, "no photo there has an EXIF thumbnail: nothing to test"
    for path in with_thumbnail:
        with Image.open(path) as img:
            make = img.getexif().get(ExifTags.Base.Make)
        exif = Image.Exif()
        exif.load(read_photo(path).exif)
        assert not exif.get_ifd(ExifTags.IFD.IFD1) and exif.get(ExifTags.Base.Make) == make, path.name


def test_a_profile_that_does_not_describe_the_rgb_copy_is_not_passed_on(tmp_path, photo):
    """A CMYK photo's pixels are converted to RGB without its profile: the CMYK profile would mislabel the copy."""
    from PIL import ImageCms

    from m2u.core.imageio import read_photo

    lab = ImageCms.ImageCmsProfile(
        ImageCms.createProfile("LAB")
    ).tobytes()  # any profile of another colour space
    photo.convert("CMYK").save(tmp_path / "print.jpg", icc_profile=lab)
    photo.save(tmp_path / "broken.png", icc_profile=b"not a profile at all" * 8)
    assert read_photo(tmp_path / "print.jpg").icc_profile is None
    assert read_photo(tmp_path / "broken.png").icc_profile is None
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    photo.save(tmp_path / "rgb.png", icc_profile=srgb)
    assert read_photo(tmp_path / "rgb.png").icc_profile == srgb


def _exif_block(*entries: tuple[int, int, int, bytes]) -> bytes:
    """An EXIF block written by hand (little-endian TIFF, one IFD): entries of (tag, type, count, 4 value bytes),
    for tags of a type Pillow would not write."""
    import struct

    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI4s", *entry) for entry in entries)
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


def test_a_photo_whose_exif_cannot_be_written_back_is_still_turned_and_read(tmp_path, photo):
    """A camera's EXIF with a tag of the wrong type (XResolution as text): Pillow reads it but cannot write it,
    and its exif_transpose failed: the photo was refused or left on its side. It is turned; the copy goes
    without that EXIF."""
    import struct

    from m2u.core.imageio import read_photo

    wrong = _exif_block((0x011A, 2, 3, b"72\x00\x00"), (0x0112, 3, 1, struct.pack("<H", 6) + b"\x00\x00"))
    photo.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "camera.jpg", quality=98, exif=wrong)
    read = read_photo(tmp_path / "camera.jpg")
    assert read.rgb.shape == (40, 30, 3) and read.exif is None
    assert np.abs(read.rgb.astype(int) - np.asarray(photo).astype(int)).mean() < 3  # upright as stored before


def test_an_exif_block_too_large_for_jpeg_is_left_out_not_the_photo(tmp_path, photo):
    from PIL import ExifTags

    from m2u.core.imageio import read_photo, write_photo

    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "m2u-camera"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = (
        "x" * 100_000
    )  # a PNG holds it, a JPEG cannot
    photo.save(tmp_path / "notes.png", exif=exif.tobytes())
    read = read_photo(tmp_path / "notes.png")
    assert read.exif is not None and len(read.exif) > 65_536
    with Image.open(write_photo(tmp_path / "copy.jpg", read.rgb, like=read)) as copy:
        assert copy.size == (30, 40) and "exif" not in copy.info
    with Image.open(write_photo(tmp_path / "copy.png", read.rgb, like=read)) as copy:
        assert copy.getexif()[ExifTags.Base.Make] == "m2u-camera"


@pytest.mark.parametrize("suffix", [".png", ".webp", ".tif"])
def test_a_copy_keeps_half_transparent_pixels_as_they_were(tmp_path, photo, suffix):
    """read_photo's RGB is the photo shown on white; given the alpha again it would be blended twice (lighter)."""
    from m2u.core.imageio import read_photo, write_photo

    alpha = np.full((40, 30), 255, np.uint8)
    alpha[:, :10] = 128
    Image.fromarray(np.dstack([np.asarray(photo), alpha]), "RGBA").save(
        tmp_path / f"soft{suffix}", lossless=True
    )
    with Image.open(tmp_path / f"soft{suffix}") as source:
        expected = np.asarray(source.convert("RGBA")).copy()
    read = read_photo(tmp_path / f"soft{suffix}")
    changed = read.rgb.copy()
    changed[30:, 20:] = (0, 255, 0)  # a restored patch, in the opaque part
    with Image.open(write_photo(tmp_path / f"copy{suffix}", changed, like=read)) as copy:
        written = np.asarray(copy.convert("RGBA"))
    expected[30:, 20:, :3] = (0, 255, 0)
    assert np.array_equal(written, expected)


def test_a_colour_marked_transparent_is_kept_transparent(tmp_path, photo):
    """An RGB (or grey) PNG may mark one colour transparent (tRNS) instead of carrying an alpha channel."""
    from m2u.core.imageio import read_photo, write_photo

    pixels = np.asarray(photo).copy()
    pixels[:5] = (1, 2, 3)
    Image.fromarray(pixels).save(tmp_path / "keyed.png", transparency=(1, 2, 3))
    read = read_photo(tmp_path / "keyed.png")
    assert read.alpha is not None and (read.alpha[:5] == 0).all() and (read.alpha[5:] == 255).all()
    assert (read.rgb[:5] == 255).all()  # shown on white, as a viewer shows it, to the detector and the model
    with Image.open(write_photo(tmp_path / "copy.png", read.rgb, like=read)) as copy:
        assert (np.asarray(copy.convert("RGBA"))[..., 3] == read.alpha).all()


def test_a_16_bit_grey_level_marked_transparent_is_transparency(tmp_path):
    """Pillow's convert("RGBA") ignores a 16-bit grey PNG's transparent level (tRNS): shown grey, alpha lost."""
    from m2u.core.imageio import read_photo

    levels = np.full((20, 30), 40000, np.uint16)
    levels[:4] = 1234
    Image.fromarray(levels).save(tmp_path / "deep.png", transparency=1234)
    assert (read_image(tmp_path / "deep.png")[:4] == 255).all()  # on white, as every other transparent pixel
    alpha = read_photo(tmp_path / "deep.png").alpha
    assert alpha is not None and (alpha[:4] == 0).all() and (alpha[4:] == 255).all()


def test_exif_pillow_cannot_parse_leaves_the_photo_as_stored_without_a_warning(tmp_path, photo):
    """Pillow's "Corrupt EXIF data" warning names no file and came once per run, whatever the files."""
    import warnings

    photo.save(tmp_path / "odd.jpg", exif=b"Exif\x00\x00II*\x00" + b"\xff" * 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "odd.jpg").shape == (40, 30, 3)


def test_the_digest_cache_reads_a_file_again_only_once_it_changed(tmp_path, monkeypatch):
    """One mechanism for every cache of file digests (m2u-pipeline's faces, a URL dataset's local copy)."""
    import hashlib

    from m2u.core.imageio import DigestCache

    path = tmp_path / "a.jpg"
    path.write_bytes(b"one")
    reads = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda handle, name: reads.append(1) or real(handle, name))
    cache = DigestCache()
    first = cache.sha256(path)
    assert first == hashlib.sha256(b"one").hexdigest() and len(reads) == 1
    again = DigestCache(cache.entries)  # as a caller saves and gives it back
    assert again.sha256(path) == first and len(reads) == 1
    path.write_bytes(b"two")  # same size, other bytes
    assert again.sha256(path) == hashlib.sha256(b"two").hexdigest() and len(reads) == 2
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ImageReadError):
        again.sha256(tmp_path / "fifo")  # never blocks on a FIFO


def test_a_16_bit_grey_file_is_scaled_from_16_bits_whatever_its_values(tmp_path):
    """A dark 16-bit photo (no level above 255) was read as 8 bits, 256 times brighter; one level of 256 more and
    the same photo came out black: the scale is the file's bit depth, not a guess from its values."""
    levels = (np.arange(20 * 30).reshape(20, 30) % 250).astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / "dark.png")
    levels[0, 0] = 256
    Image.fromarray(levels).save(tmp_path / "one_brighter.png")
    dark, brighter = read_image(tmp_path / "dark.png"), read_image(tmp_path / "one_brighter.png")
    assert dark.max() == 0  # 249 of 65535: black in 8 bits
    assert np.array_equal(dark[1:], brighter[1:])  # one pixel does not rescale the others
    bright = (np.arange(20 * 30).reshape(20, 30) * 100).astype(np.uint16)
    Image.fromarray(bright).save(tmp_path / "bright.png")
    assert np.array_equal(read_image(tmp_path / "bright.png")[..., 0], (bright >> 8).astype(np.uint8))
