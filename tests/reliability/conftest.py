"""The bad-input corpus: generated per test session (never committed), one file per kind of trouble.

`Corpus.expected` maps each input's file name to what every tool must make of it:
  "unreadable" - cannot be read at all (a row with an error status and a reason, never a crash),
  "no_face"    - a readable image without a face,
  "face"       - a readable photo with at least one real face (only when ../shared is present).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2u.core.imageio import IMAGE_SUFFIXES

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("M2U_SHARED", REPO_ROOT.parent / "shared"))
CELEBA_DIR = SHARED / "faces" / "celeba"

RUNNING_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
UNREADABLE_NAME = "no-permission.png"
HUGE_SIDE = 8000  # 64 MP: under read_image's 100 MP limit, so it must be read in full


@dataclass
class Corpus:
    folder: Path
    expected: dict[str, str] = field(default_factory=dict)
    # Inputs that are the same bytes under two names (both must be accounted for, separately).
    duplicates: tuple[str, str] = ("dup-1.png", "dup-2.png")

    def names(self, kind: str) -> set[str]:
        return {name for name, expected in self.expected.items() if expected == kind}


def _photo(size: tuple[int, int] = (48, 40), seed: int = 0) -> Image.Image:
    """A small smooth RGB picture without a face."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _celeba_faces(count: int) -> list[Image.Image]:
    if not CELEBA_DIR.is_dir():
        return []
    files = sorted(p for p in CELEBA_DIR.iterdir() if p.suffix.lower() == ".jpg")[:count]
    return [Image.open(p).convert("RGB") for p in files]


def build_corpus(folder: Path, with_faces: bool = True) -> Corpus:
    """Write every kind of bad (and a few good) inputs into `folder`."""
    folder.mkdir(parents=True)
    corpus = Corpus(folder)
    expected = corpus.expected

    def put(name: str, data: bytes, kind: str) -> None:
        (folder / name).write_bytes(data)
        expected[name] = kind

    jpeg = _encoded(_photo((64, 64)), "JPEG", quality=90)
    png = _encoded(_photo((64, 64), seed=1), "PNG")
    put("empty.jpg", b"", "unreadable")
    put("truncated.jpg", jpeg[: len(jpeg) // 2], "unreadable")
    put("truncated.png", png[: len(png) // 2], "unreadable")
    put("text-named.png", b"this is a text file, not a picture\n", "unreadable")
    put("random-bytes.jpg", np.random.default_rng(2).bytes(4096), "unreadable")
    put("png-named.jpg", png, "no_face")  # wrong extension: the content decides
    put("grey.png", _encoded(_photo().convert("L"), "PNG"), "no_face")
    grey16 = (np.asarray(_photo().convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    put("grey16.png", _encoded(Image.fromarray(grey16), "PNG"), "no_face")
    rgba = _photo().convert("RGBA")
    rgba.putalpha(128)
    put("rgba.png", _encoded(rgba, "PNG"), "no_face")
    put("palette.png", _encoded(_photo().convert("P"), "PNG"), "no_face")
    put("cmyk.jpg", _encoded(_photo().convert("CMYK"), "JPEG"), "no_face")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    put("exif-rotated.jpg", _encoded(_photo(), "JPEG", exif=exif), "no_face")
    # A flat colour compresses to a few hundred kB even at 64 MP.
    put(
        "huge-8000x8000.png",
        _encoded(Image.new("RGB", (HUGE_SIDE, HUGE_SIDE), (90, 120, 150)), "PNG"),
        "no_face",
    )
    put("one-pixel.png", _encoded(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "no_face")
    put("no-face-noise.png", _encoded(_photo((120, 90), seed=3), "PNG"), "no_face")
    # Hostile names; "with space" and "with-space" also give the same sanitised dataset key.
    for index, name in enumerate(
        [
            "with space.png",
            "with-space.png",
            "ünïcødé 写真.png",
            "写真.png",
            "several.dots.in.name.png",
            "a..b.png",
            "-leading-dash.png",
            "--help.png",
        ]
    ):
        put(name, _encoded(_photo(seed=10 + index), "PNG"), "no_face")
    dup = _encoded(_photo(seed=30), "PNG")
    for name in corpus.duplicates:
        put(name, dup, "no_face")
    # Symbolic links: to a good file, to nothing, and two loops.
    os.symlink("grey.png", folder / "link-to-grey.png")
    expected["link-to-grey.png"] = "no_face"
    os.symlink("does-not-exist.png", folder / "dangling-link.png")
    expected["dangling-link.png"] = "unreadable"
    os.symlink("loop-b.png", folder / "loop-a.png")
    os.symlink("loop-a.png", folder / "loop-b.png")
    os.symlink("self-loop.png", folder / "self-loop.png")
    expected.update({"loop-a.png": "unreadable", "loop-b.png": "unreadable", "self-loop.png": "unreadable"})
    # Unreadable permissions: root reads it anyway, so it is only "unreadable" for other users.
    put(UNREADABLE_NAME, _encoded(_photo(seed=40), "PNG"), "no_face" if RUNNING_AS_ROOT else "unreadable")
    os.chmod(folder / UNREADABLE_NAME, 0)
    # Not an image suffix: not an input of a folder scan (documented), so it must not appear in any report.
    (folder / "notes.txt").write_text("a text file beside the photos\n")

    faces = _celeba_faces(3) if with_faces else []
    if faces:
        face = faces[0]
        put("face.jpg", _encoded(face, "JPEG", quality=95), "face")
        # Stored lying on its side with an EXIF tag saying so: read upright, the face must be found.
        rotated = face.transpose(Image.Transpose.ROTATE_90)
        tag = Image.Exif()
        # 6: "rotate 90° clockwise to display", undoing ROTATE_90 (counter-clockwise). (This was 8, which rotates
        # counter-clockwise once more: the photo was read upside down and masked on the forehead as "ok".)
        tag[0x0112] = 6
        put("face-exif-rotated.jpg", _encoded(rotated, "JPEG", quality=95, exif=tag), "face")
        width = sum(f.width for f in faces) + 40 * (len(faces) + 1)
        canvas = Image.new("RGB", (width, max(f.height for f in faces) + 80), (235, 235, 235))
        x = 40
        for f in faces:
            canvas.paste(f, (x, 40))
            x += f.width + 40
        put("many-faces.jpg", _encoded(canvas, "JPEG", quality=95), "face")
    for name in expected:
        assert Path(name).suffix.lower() in IMAGE_SUFFIXES, name
    return corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("corpus") / "in")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Untrained tiny M-Seg and generator model files: m2u-unmask's bookkeeping does not need good weights."""
    import torch

    from m2u.training.checkpoint import save_model
    from m2u.training.models import CARU2Net, GeneratorConfig, MSeg, MSegConfig

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models")
    mseg = save_model(folder / "mseg.safetensors", MSeg(MSegConfig(base_channels=4, levels=3)))
    generator = save_model(
        folder / "generator.safetensors", CARU2Net(GeneratorConfig(width_multiplier=0.125, stages=3))
    )
    return mseg, generator


def photo_list(tmp_path: Path, count: int, noise_side: int = 40) -> Path:
    """A list file of `count` photos: CelebA faces when ../shared is present (shards get written), else noise
    pictures of `noise_side` pixels (every input is then a manifest-only no_face row; larger noise keeps the
    detector busy for longer)."""
    import cv2

    if CELEBA_DIR.is_dir():
        files = sorted(p for p in CELEBA_DIR.iterdir() if p.suffix == ".jpg")[:count]
    else:
        folder = tmp_path / "noise"
        folder.mkdir()
        rng = np.random.default_rng(0)
        files = []
        for i in range(count):
            files.append(folder / f"noise_{i:03d}.png")
            cv2.imwrite(str(files[-1]), rng.integers(0, 256, (noise_side, noise_side, 3), dtype=np.uint8))
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{f}\n" for f in files))
    return listing


def synthetic_members(size: int, seed: int) -> dict[str, bytes]:
    """A synthetic pair's shard members (PNG, no metadata) at `size` px: a sample for shards the tests write by hand."""
    from m2u.datasets.synthetic import make_synthetic_sample
    from m2u.datasets.writer import sample_members

    sample = make_synthetic_sample(size, seed)
    return sample_members(
        masked=sample.masked,
        unmasked=sample.unmasked,
        mask=sample.mask,
        meta={},
        image_format="png",
        quality=95,
    )
