"""A contact sheet: every mask type, colour preset and pattern on one face, as one image for people to look at."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np

from m2u.masking.appearance import PATTERNS
from m2u.masking.detect import Face
from m2u.masking.geometry import MaskingError
from m2u.masking.render import MaskConfig, apply_mask, check_seed
from m2u.masking.templates import MASK_TYPES

# Beyond the plain types: a few colours on the surgical mask, every pattern on the cloth mask.
SHEET_VARIANTS: tuple[tuple[str, MaskConfig], ...] = (
    *((t, MaskConfig(mask_type=t)) for t in MASK_TYPES),
    *(
        (f"surgical {c}", MaskConfig(mask_type="surgical", color=c, color_weight=0.8))
        for c in ("pink", "black", "#c8a2c8")
    ),
    *(
        (
            f"cloth {p}",
            MaskConfig(mask_type="cloth", color="white", color_weight=0.9, pattern=p, pattern_weight=0.8),
        )
        for p in PATTERNS
    ),
)


def _crop_box(face: Face, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """A square around the face with room for straps, clipped to the image."""
    lm = face.landmarks
    centre = (lm.min(axis=0) + lm.max(axis=0)) / 2
    half = 0.8 * float(np.max(lm.max(axis=0) - lm.min(axis=0)))
    x0, y0 = np.maximum(np.floor(centre - half), 0).astype(int)
    x1 = int(min(np.ceil(centre[0] + half), shape[1]))
    y1 = int(min(np.ceil(centre[1] + half), shape[0]))
    return int(x0), int(y0), x1, y1


def sheet_face(faces: Sequence[Face]) -> Face | None:
    """The face a sheet shows: the largest whose landmarks can be used (no `problem`, e.g. upside down), else the
    largest (its tiles then say why it failed); None without faces."""
    usable = [face for face in faces if not face.problem]
    candidates = usable or list(faces)
    return candidates[0] if candidates else None


def face_caution(face: Face) -> str:
    """What a sheet drawn on `face` must say about it ("" when nothing): a face only the low-threshold retry found
    may be no face at all (m2u-mask's report says so of such faces too)."""
    if face.retry:
        return f"found only by the low-threshold retry (score {face.score:.3f}): may not be a face"
    return ""


def _banner(caution: str, width: int) -> np.ndarray:
    """A strip above the tiles saying `caution` (black on amber, wrapped to the sheet's width)."""
    per_line = max(10, width // 9)  # about 9 px per character at this font scale
    words, lines = caution.split(), [""]
    for word in words:
        if lines[-1] and len(lines[-1]) + 1 + len(word) > per_line:
            lines.append("")
        lines[-1] = f"{lines[-1]} {word}".strip()
    strip = np.full((8 + 22 * len(lines), width, 3), (255, 191, 0), np.uint8)
    for k, line in enumerate(lines):
        cv2.putText(strip, line, (8, 22 + 22 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def pack_variants(pack: str) -> tuple[tuple[str, MaskConfig], ...]:
    """Every template of a MaskTheFace-style pack, then a few colours and patterns on its first template."""
    plain = tuple((c.mask_type, c) for c in MaskConfig(mask_type="all", pack=pack).expand())
    first = plain[0][1]
    colours = tuple(
        (f"{first.mask_type} {c}", dataclasses.replace(first, color=c, color_weight=0.8))
        for c in ("pink", "black")
    )
    patterns = tuple(
        (f"{first.mask_type} {p}", dataclasses.replace(first, pattern=p, pattern_weight=0.8))
        for p in PATTERNS[:2]
    )
    return plain + colours + patterns


def render_contact_sheet(
    image: np.ndarray, face: Face, tile: int = 256, columns: int = 5, seed: int = 0, pack: str | None = None
) -> np.ndarray:
    """RGB sheet of SHEET_VARIANTS (or, with `pack`, of the pack's templates: `pack_variants`) on one face, each
    tile labelled (a failed variant shows its reason). A face that may be no face (`face_caution`) gets a banner
    above the tiles saying so."""
    check_seed(seed)  # before any tile: one sentence naming `seed`
    x0, y0, x1, y1 = _crop_box(face, image.shape)
    tiles = []
    for label, config in SHEET_VARIANTS if pack is None else pack_variants(pack):
        try:
            rendered = apply_mask(image, face, config, seed).image
            caption = label
        except MaskingError as exc:
            rendered, caption = image, f"{label}: {exc.reason}"
        crop = cv2.resize(rendered[y0:y1, x0:x1], (tile, tile), interpolation=cv2.INTER_AREA)
        cv2.rectangle(crop, (0, 0), (tile, 22), (0, 0, 0), -1)
        cv2.putText(
            crop, caption[:40], (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA
        )
        tiles.append(crop)
    while len(tiles) % columns:
        tiles.append(np.full((tile, tile, 3), 255, np.uint8))
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    caution = face_caution(face)
    if caution:
        rows.insert(0, _banner(f"Face {caution}", rows[0].shape[1]))
    return np.vstack(rows)
