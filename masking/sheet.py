"""A contact sheet: every mask type, colour preset and pattern on one face, as one image for people to look at."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from m2u.masking.appearance import PATTERNS
from m2u.masking.detect import Face
from m2u.masking.geometry import MaskingError
from m2u.masking.render import MaskConfig, apply_mask
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
    tile labelled (a failed variant shows its reason)."""
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
    return np.vstack(rows)
