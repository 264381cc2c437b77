"""Text labels drawn on image strips: the column headers of contact sheets, training grids and report grids."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["HEADER_HEIGHT", "column_header", "draw_labels"]


def _fit_label(label: str, width: int) -> tuple[str, float]:
    """The largest font scale (0.3-0.5) at which `label` fits `width` pixels, shortening it if needed."""
    for scale in (0.5, 0.45, 0.4, 0.35, 0.3):
        if cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= width:
            return label, scale
    while len(label) > 1 and cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.3, 1)[0][0] > width:
        label = label[:-1]
    return label, 0.3


HEADER_HEIGHT = 18


def draw_labels(canvas: np.ndarray, labels: Sequence[str], column_width: int, pad: int) -> None:
    """White labels in the top HEADER_HEIGHT rows of `canvas`, one per column (one font size for all)."""
    fitted = [_fit_label(label, column_width) for label in labels]
    scale = min(s for _, s in fitted)
    for c, (text, _) in enumerate(fitted):
        x0 = pad + c * (column_width + pad)
        cv2.putText(
            canvas,
            text,
            (x0, HEADER_HEIGHT - 5),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )


def column_header(width: int, labels: Sequence[str]) -> np.ndarray:
    """A dark HEADER_HEIGHT-row strip naming equal-width columns of an image `width` pixels wide (RGB uint8): the
    training grids' column labels."""
    strip = np.full((HEADER_HEIGHT, width, 3), 48, np.uint8)
    draw_labels(strip, labels, width // len(labels), 0)
    return strip
