"""The piecewise-affine warp of a template's texture onto the face mesh (two triangles per mesh cell)."""

from __future__ import annotations

import functools

import cv2
import numpy as np


def grid_point(grid: np.ndarray, u: float, v: float) -> np.ndarray:
    """Bilinear interpolation of the mesh at texture coordinates (u, v)."""
    rows, cols = grid.shape[:2]
    x, y = u * (cols - 1), v * (rows - 1)
    c0, r0 = min(int(x), cols - 2), min(int(y), rows - 2)
    fx, fy = x - c0, y - r0
    top = grid[r0, c0] * (1 - fx) + grid[r0, c0 + 1] * fx
    bottom = grid[r0 + 1, c0] * (1 - fx) + grid[r0 + 1, c0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _band_index(shape: tuple[int, int], fixed: np.ndarray) -> np.ndarray:
    """For every pixel, the index of the mesh row band (between grid rows r and r+1, given in 1/16 px fixed point)
    covering it, or -1. The outer edges are drawn 3 px thick first, so a 1-2 px rim outside the mesh belongs to the
    nearest band: there the texture's own soft edge is sampled instead of being cut at the mesh boundary."""
    index = np.full(shape, -1, np.int32)
    last = len(fixed) - 2
    cv2.polylines(index, [fixed[0]], False, 0, 3, cv2.LINE_8, 4)
    cv2.polylines(index, [fixed[-1]], False, last, 3, cv2.LINE_8, 4)
    # Per band: its two side segments, and its outline (top row left to right, bottom row back).
    sides = np.stack([fixed[:-1, [0, -1]], fixed[1:, [0, -1]]], axis=2)  # (bands, 2 sides, 2 ends, 2)
    outlines = np.concatenate([fixed[:-1], fixed[1:, ::-1]], axis=1)
    for r in range(last + 1):
        cv2.polylines(index, list(sides[r]), False, r, 3, cv2.LINE_8, 4)
    for r in range(last + 1):
        cv2.fillPoly(index, [outlines[r]], r, cv2.LINE_8, 4)
    return index


def warp_texture(
    texture: np.ndarray,
    grid: np.ndarray,
    origin: np.ndarray,
    shape: tuple[int, int],
    column_gain: np.ndarray,
) -> np.ndarray:
    """Piecewise-affine warp of a premultiplied RGBA texture onto the mesh inside a box (zero outside the mesh);
    `column_gain` (one factor per texture column) scales the colour of each pixel by the column it samples.

    Each mesh cell is split along its p00-p11 diagonal into two triangles, each mapped by its own affine map. A
    pixel's cell comes from two rasterised band indices (row bands, column bands): a few dozen polygon fills
    instead of one per triangle. The per-pixel work is a handful of dense operations over the mesh's box with
    small lookup tables (one row per triangle), not per-pixel gathers of mesh points."""
    tex_h, tex_w = texture.shape[:2]
    cols = grid.shape[1]
    # Only the mesh's own box (straps may make the caller's box much larger).
    lo = np.maximum(np.floor(grid.min(axis=(0, 1)) - origin - 3), 0).astype(int)
    hi = np.minimum(np.ceil(grid.max(axis=(0, 1)) - origin + 4), (shape[1], shape[0])).astype(int)
    sub = (int(hi[1] - lo[1]), int(hi[0] - lo[0]))
    if min(sub) <= 0:
        # The mesh lies wholly outside the box: a face at the image's edge whose mask body is beyond it while its
        # straps reach in (the box is the image's part of both). Nothing of the body is drawn; the band index of
        # an empty or negative shape raised ValueError or OpenCV's layout error instead.
        return np.zeros((*shape, 4), np.float32)
    local = grid - origin - lo
    fixed = np.round(local * 16).astype(np.int32)
    row = _band_index(sub, fixed)
    col = _band_index(sub, np.ascontiguousarray(fixed.transpose(1, 0, 2)))
    inside = (row >= 0) & (col >= 0)
    cell = np.where(inside, row * (cols - 1) + col, 0)
    diagonal, affines = _cell_tables(local, tex_w, tex_h)
    ys = np.arange(sub[0], dtype=np.float32)[:, None]
    xs = np.arange(sub[1], dtype=np.float32)[None, :]
    # Which triangle of its cell a pixel is in: the side of the cell's p00-p11 diagonal (oriented so that < 0
    # is the triangle p00-p11-p10).
    side = diagonal[0].take(cell) * xs + diagonal[1].take(cell) * ys + diagonal[2].take(cell)
    triangle = 2 * cell + (side < 0)
    map_x = affines[0].take(triangle) * xs + affines[1].take(triangle) * ys + affines[2].take(triangle)
    map_y = affines[3].take(triangle) * xs + affines[4].take(triangle) * ys + affines[5].take(triangle)
    outside = ~inside
    map_x[outside] = -100.0
    map_y[outside] = -100.0
    sampled = cv2.remap(
        texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    nearest = np.clip(map_x + 0.5, 0, tex_w - 1).astype(np.int32)
    sampled[..., :3] *= column_gain.take(nearest)[..., None]
    warped = np.zeros((*shape, 4), np.float32)
    warped[lo[1] : hi[1], lo[0] : hi[0]] = sampled
    return warped


@functools.cache
def _mesh_topology(rows: int, cols: int, tex_w: int, tex_h: int) -> tuple[np.ndarray, ...]:
    """What a mesh's tables need besides its points: for each triangle (cell-major, p00-p01-p11 first, then
    p00-p11-p10) the flat indices of its corners, and its texture corner t0 with edges t1 - t0, t2 - t0."""
    flat = np.arange(rows * cols).reshape(rows, cols)
    p00, p01, p10, p11 = (
        flat[:-1, :-1].ravel(),
        flat[:-1, 1:].ravel(),
        flat[1:, :-1].ravel(),
        flat[1:, 1:].ravel(),
    )
    corners = (
        np.stack([p00, p00], 1).ravel(),
        np.stack([p01, p11], 1).ravel(),
        np.stack([p11, p10], 1).ravel(),
    )
    tu, tv = np.meshgrid(np.linspace(0.0, tex_w, cols) - 0.5, np.linspace(0.0, tex_h, rows) - 0.5)
    tex = np.stack([tu.ravel(), tv.ravel()], axis=-1)
    t0, t1, t2 = (tex[c] for c in corners)
    return (*corners, p00, p01, p11, t0, t1 - t0, t2 - t0)


def _cell_tables(grid: np.ndarray, tex_w: int, tex_h: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cell, the line through its p00-p11 diagonal as (a, b, c) with a·x + b·y + c < 0 on the p10 side:
    (3, cells). Per triangle (cell-major, the p00-p01-p11 triangle first), its image→texture affine map
    (m00, m01, m02, m10, m11, m12): (6, 2·cells). Zero-area slivers (allowed at straight corners, see
    geometry.check_mesh) cover no pixel centre; their map is the constant first texture corner."""
    rows, cols = grid.shape[:2]
    c0, c1, c2, q00, q01, q11, t0, f1, f2 = _mesh_topology(rows, cols, tex_w, tex_h)
    points = grid.reshape(-1, 2)
    p0 = points[c0]
    e1, e2 = points[c1] - p0, points[c2] - p0
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    degenerate = np.abs(det) < 1e-9
    inv_det = np.where(degenerate, 0.0, 1.0 / np.where(degenerate, 1.0, det))
    # A = F · E⁻¹ with E = [e1 e2], F = [f1 f2] (columns), E⁻¹ = [[e2y, −e2x], [−e1y, e1x]] / det; b = t0 − A·p0.
    i00, i01, i10, i11 = e2[:, 1] * inv_det, -e2[:, 0] * inv_det, -e1[:, 1] * inv_det, e1[:, 0] * inv_det
    a00 = f1[:, 0] * i00 + f2[:, 0] * i10
    a01 = f1[:, 0] * i01 + f2[:, 0] * i11
    a10 = f1[:, 1] * i00 + f2[:, 1] * i10
    a11 = f1[:, 1] * i01 + f2[:, 1] * i11
    b0 = t0[:, 0] - a00 * p0[:, 0] - a01 * p0[:, 1]
    b1 = t0[:, 1] - a10 * p0[:, 0] - a11 * p0[:, 1]
    affines = np.array([a00, a01, b0, a10, a11, b1], np.float32)

    p00, p01, p11 = points[q00], points[q01], points[q11]
    a, b = p00[:, 1] - p11[:, 1], p11[:, 0] - p00[:, 0]
    c = -(a * p00[:, 0] + b * p00[:, 1])
    # Orient the line so that p01 lies on its non-negative side.
    orientation = np.where(a * p01[:, 0] + b * p01[:, 1] + c < 0, -1.0, 1.0)
    diagonal = np.array([a * orientation, b * orientation, c * orientation], np.float32)
    return diagonal, affines
