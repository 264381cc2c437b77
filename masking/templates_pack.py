"""MaskTheFace-style template packs: a `masks.cfg` INI whose sections name a template image and its anchors a-f."""

from __future__ import annotations

import configparser
import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from m2u.core.imageio import header_problem
from m2u.masking.templates import TEXTURE_HEIGHT, TEXTURE_WIDTH, Template

ANCHOR_NAMES = ("a", "b", "c", "d", "e", "f")
POSE_SUFFIXES = ("_left", "_right")
# A section's name is a mask type on the command line and part of every output's file name: letters, digits, "_"
# and "-" only ("../x" wrote outside the output folder), and not one of m2u-mask's own words for several types.
SECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RESERVED_NAMES = ("random", "all")
# The anchors must span this share of the template each way (six equal points drew nothing a face could wear),
# and lie within this share of a side beyond its edges (MaskTheFace's own reach 12 % beyond, on gas_left).
MIN_ANCHOR_SPAN = 0.1
ANCHOR_REACH = 0.25


# MaskTheFace's templates are under 1,500 pixels a side; a template is scaled down to the face anyway.
MAX_TEMPLATE_SIDE = 4096
# A pose variant's anchors on its near side (where the face's ear is in view: MaskTheFace's `_left` c and f, `_right`
# a and d) mark where its ear loops end (gas masks: a point past the near filter), 16-30 % of the a-c span beyond the
# mask body. m2u lays a and d, c and f on the face's jaw, so the body came out shrunk (about 0.7 of the front
# template's area on the same face) and left the near cheek bare. Such anchors are moved to the body's edge: the
# body is what stays opaque after an opening by BODY_OPENING of the span (loops and straps are thinner), and a side
# is moved when both its anchors lie more than OUTER_SLACK of the span beyond it (the far sides of MaskTheFace's
# variants lie within 0.5 %; the N95 front template's sides, not moved, 8-9 %).
BODY_OPENING = 0.05
OPENING_PX = 15
OUTER_SLACK = 0.12


class TemplatePackError(ValueError):
    """A masks.cfg pack that cannot be loaded; the message says which section and why."""


def pack_paths(cfg_dir: Path, written: str) -> list[Path]:
    """Where a path written in a pack (a section's `template`, a `--code` texture) may lie, in the order tried, all
    inside the pack's folder. MaskTheFace's own repository writes such paths relative to the repository root
    (`masks/templates/surgical.png` in `masks/masks.cfg`), so a path that starts with the pack folder's own name is
    also read from that folder; packs laid out flat keep the image next to masks.cfg. Never a folder above the pack:
    searching those picked up whatever file of that name lay there (a template of another checkout, a user's file)."""
    relative = Path(written)
    candidates = [cfg_dir / relative]
    if len(relative.parts) > 1 and relative.parts[0] == cfg_dir.name:
        candidates.append(cfg_dir.joinpath(*relative.parts[1:]))
    # An absolute path, or one climbing out with "..", named a file outside the pack ("../other/x.png",
    # "/home/me/x.png" were read as written): only what stays inside the folder, as written, is tried.
    return [c for c in candidates if Path(os.path.normpath(c)).is_relative_to(os.path.normpath(cfg_dir))]


def _pack_image(cfg_dir: Path, template_path: str, where: str) -> Path:
    """The image a section's `template` names: where `pack_paths` says, then the bare file name next to masks.cfg or
    in its `templates` folder. TemplatePackError, said of `where` (masks.cfg and the section), when none is a file."""
    name = Path(template_path).name
    candidates = [*pack_paths(cfg_dir, template_path), cfg_dir / name, cfg_dir / "templates" / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise TemplatePackError(f"{where}: template image {template_path!r} not found (tried {tried})")


ANCHOR_QUADS = (("a", "b", "e", "d"), ("b", "c", "f", "e"))


def _turns(corners: np.ndarray) -> np.ndarray:
    """The sign of the turn at each corner of a quad walked in order (0 where three corners are in line)."""
    arriving = corners - np.roll(corners, 1, axis=0)
    leaving = np.roll(corners, -1, axis=0) - corners
    return np.sign(arriving[:, 0] * leaving[:, 1] - arriving[:, 1] * leaving[:, 0])


def _reflex_corner(corners: np.ndarray) -> int | None:
    """The index of a simple quad's one corner that turns against the other three (None when it is convex)."""
    turns = _turns(corners)
    for sign in (1, -1):
        if int(np.sum(turns == sign)) == 1 and int(np.sum(turns == -sign)) == 3:
            return int(np.flatnonzero(turns == sign)[0])
    return None


def _orientation(corners: np.ndarray) -> int:
    """+1 or -1, the way a simple quad (convex, or concave at one corner) is walked; 0 for a bow tie or a quad with
    corners in line."""
    turns = _turns(corners)
    for sign in (1, -1):
        if int(np.sum(turns == sign)) >= 3 and not np.any(turns == 0):
            return sign
    return 0


def _warp_quad(premul: np.ndarray, src: np.ndarray, dst: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One quad of the template image onto one half of texture space. A convex quad by its homography; a
    concave one (MaskTheFace's KN95_left at d, KN95_right at f) by two triangles split on the diagonal from its
    reflex corner, each by its affine map. A homography takes a concave quad's reflex corner across its horizon:
    a wedge of the half sampled outside the quad, a transparent gap down the middle of the mask that left the
    mouth bare (`m2u-mask --mask-type KN95` refused 54 of 121 CelebA photos for it)."""
    reflex = _reflex_corner(src)
    if reflex is None:
        h = cv2.getPerspectiveTransform(src, dst)
        return cv2.warpPerspective(premul, h, size, flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT)
    opposite = (reflex + 2) % 4
    first = [reflex, (reflex + 1) % 4, opposite]
    second = [opposite, (reflex + 3) % 4, reflex]
    warped = [
        cv2.warpAffine(
            premul,
            cv2.getAffineTransform(src[corners], dst[corners]),
            size,
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
        )
        for corners in (first, second)
    ]
    # Each texture pixel from exactly one triangle: the side of the split diagonal it lies on (pixel (x, y) at
    # (x, y), as OpenCV's warps place it).
    start, end = dst[reflex], dst[opposite]
    xs, ys = np.meshgrid(np.arange(size[0]), np.arange(size[1]))
    side = (end[0] - start[0]) * (ys - start[1]) - (end[1] - start[1]) * (xs - start[0])
    beside_first = np.sign(side) == np.sign(
        (end[0] - start[0]) * (dst[first[1]][1] - start[1])
        - (end[1] - start[1]) * (dst[first[1]][0] - start[0])
    )
    return np.where(beside_first[..., None], warped[0], warped[1])


def _body_extent(alpha: np.ndarray, span: float) -> tuple[int, int] | None:
    """The first and last column of a template's mask body: its largest opaque piece once an opening as wide as
    BODY_OPENING of the anchors' span has removed loops and straps (None when nothing that thick is left)."""
    size = BODY_OPENING * span
    # Opened at a scale where the kernel is at most OPENING_PX across: the same columns within a pixel or two of
    # the template, and MaskTheFace's 1,200-px N95 views open in milliseconds instead of 0.2 s each.
    scale = min(1.0, OPENING_PX / max(size, 1.0))
    opaque = (alpha >= 128).view(np.uint8)
    if scale < 1.0:
        opaque = cv2.resize(opaque * np.uint8(255), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        opaque = (opaque >= 128).view(np.uint8)
    kernel_px = max(3, round(size * scale)) | 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_px, kernel_px))
    body = cv2.morphologyEx(opaque, cv2.MORPH_OPEN, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(body, connectivity=8)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    first = int(stats[largest, cv2.CC_STAT_LEFT])
    last = first + int(stats[largest, cv2.CC_STAT_WIDTH]) - 1
    # Back to the template's columns: the outer edge of each end column at the small scale.
    width = alpha.shape[1]
    return int(first / scale), min(width - 1, int(np.ceil((last + 1) / scale)) - 1)


def side_view_anchors(
    anchors: dict[str, tuple[float, float]], alpha: np.ndarray
) -> dict[str, tuple[float, float]]:
    """A pose variant's anchors with an outer side (a and d, or c and f, both beyond the body by more than
    OUTER_SLACK of the a-c span) moved across to the body's outermost column, heights kept: the body's edge then
    meets m2u's outline of the face, as a front template's side does. Unchanged where nothing lies that far out,
    or where the move would fold a quad."""
    span = math.dist(anchors["a"], anchors["c"])
    extent = _body_extent(alpha, span)
    if extent is None:
        return anchors
    left, right = extent
    moved = dict(anchors)
    for pair, edge, beyond in ((("a", "d"), left, -1.0), (("c", "f"), right, 1.0)):
        if all(beyond * (anchors[k][0] - edge) > OUTER_SLACK * span for k in pair):
            for k in pair:
                moved[k] = (float(edge), anchors[k][1])
    for quad in ANCHOR_QUADS:
        before, after = (np.array([points[k] for k in quad], np.float64) for points in (anchors, moved))
        if _orientation(after) != _orientation(before):
            return anchors  # folded, flattened or mirrored by the move: the pack's own anchors, as written
    return moved


def template_from_image(name: str, rgba: np.ndarray, anchors: dict[str, tuple[float, float]]) -> Template:
    """Resample an RGBA template image into texture space: the quads a-b-e-d and b-c-f-e become the left and right
    halves of the (u, v) square (a, b, c at the top; d, e, f at the bottom), each by a homography (or, for a
    concave quad, two affine triangles: `_warp_quad`)."""
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise TemplatePackError(f"{name}: template image must be RGBA")
    img = rgba.astype(np.float32) / 255.0
    alpha = img[..., 3]
    premul = np.dstack([img[..., :3] * alpha[..., None], alpha])
    half = TEXTURE_WIDTH // 2
    dst = np.array([(0, 0), (half, 0), (half, TEXTURE_HEIGHT), (0, TEXTURE_HEIGHT)], np.float32)
    out = [
        _warp_quad(premul, np.array([anchors[k] for k in quad], np.float32), dst, (half, TEXTURE_HEIGHT))
        for quad in ANCHOR_QUADS
    ]
    tex = np.hstack(out)
    a = np.clip(tex[..., 3], 0.0, 1.0)
    rgb = np.where(a[..., None] > 1e-4, tex[..., :3] / np.maximum(a[..., None], 1e-4), 0.0)
    ones = np.ones_like(a)
    return Template(name, rgb.astype(np.float32), ones, ones.copy(), a.astype(np.float32), (), source="pack")


@dataclass
class TemplatePack:
    """Templates of one masks.cfg, by section name (pose variants `<name>_left` / `<name>_right` included)."""

    path: Path
    templates: dict[str, Template]
    skipped: tuple[str, ...] = ()  # sections without a template image (MaskTheFace's "empty", "inpaint")

    @property
    def names(self) -> tuple[str, ...]:
        """Base names (pose variants folded into their base)."""
        return tuple(n for n in self.templates if not n.endswith(POSE_SUFFIXES))

    def resolve(self, name: str) -> str:
        """The pack's own spelling of a template name (matched case-insensitively: `n95` finds MaskTheFace's
        `N95`); ValueError naming the pack's templates when it has none such."""
        if name in self.names:
            return name
        matches = [n for n in self.names if n.lower() == name.lower()]
        if len(matches) != 1:
            raise ValueError(f"template {name!r} is not in pack {self.path}; it has {', '.join(self.names)}")
        return matches[0]

    def get(self, name: str, pose: str = "front") -> Template:
        name = self.resolve(name)
        return self.templates.get(f"{name}_{pose}", self.templates[name])


def _parse_point(text: str, where: str) -> tuple[float, float]:
    try:
        x, y = (float(p) for p in text.split(","))
    except ValueError as exc:
        raise TemplatePackError(f"{where}: expected 'x, y', got {text!r}") from exc
    return x, y


@functools.cache
def _load_pack_cached(cfg_file: Path, mtime: float) -> TemplatePack:
    parser = configparser.ConfigParser()
    try:
        parser.read(
            os.fspath(cfg_file), encoding="utf-8"
        )  # a str: configparser's messages show a Path's repr
    except (configparser.DuplicateSectionError, configparser.DuplicateOptionError) as exc:
        twice = (
            f"[{exc.section}]"
            if isinstance(exc, configparser.DuplicateSectionError)
            else (f"{exc.option} in [{exc.section}]")
        )
        raise TemplatePackError(
            f"{cfg_file}: not a valid masks.cfg ({twice} is given twice, line {exc.lineno})"
        ) from None
    except configparser.MissingSectionHeaderError as exc:
        # configparser's own text repeats the path as a PosixPath(...) and the line as a Python string.
        raise TemplatePackError(
            f"{cfg_file}: not a valid masks.cfg (line {exc.lineno} comes before any [section] header)"
        ) from None
    except configparser.Error as exc:
        raise TemplatePackError(f"{cfg_file}: not a valid masks.cfg ({exc.message})") from exc
    except UnicodeDecodeError as exc:  # its message named a byte, not the file
        raise TemplatePackError(f"{cfg_file}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    if parser.defaults():
        # configparser lends a [DEFAULT] section's keys to every section: a bare pseudo-type ("empty") became a
        # template, and one lacking a key was blamed on the wrong section. MaskTheFace's format has none.
        raise TemplatePackError(
            f"{cfg_file}: not a valid masks.cfg (a [DEFAULT] section: its keys would be lent to every section; "
            "give each section its own template and anchors)"
        )
    templates, skipped = {}, []
    _check_section_names(cfg_file, parser.sections())
    for section in parser.sections():
        where = f"{cfg_file} [{section}]"
        try:
            # Read here, with MaskTheFace's interpolation ("%(name)s"): a bare "%" in a file name raised
            # configparser's InterpolationSyntaxError, naming neither the file nor the section.
            entries = dict(parser[section])
        except configparser.InterpolationError as exc:
            raise TemplatePackError(
                f"{where}: {exc.option}: {exc.message.splitlines()[0]} (a '%' is written '%%' in masks.cfg)"
            ) from None
        if not entries:
            # MaskTheFace lists pseudo-types ("empty", "inpaint") as bare sections: they are not templates.
            skipped.append(section)
            continue
        if "template" not in entries:
            raise TemplatePackError(f"{where}: missing 'template'")
        missing = [k for k in ANCHOR_NAMES if f"mask_{k}" not in entries]
        if missing:
            raise TemplatePackError(f"{where}: missing anchors {', '.join('mask_' + k for k in missing)}")
        anchors = {k: _parse_point(entries[f"mask_{k}"], where) for k in ANCHOR_NAMES}
        image_path = _pack_image(cfg_file.parent, entries["template"], where)
        problem = header_problem(image_path, MAX_TEMPLATE_SIDE)  # from the header, before decoding
        if problem:
            raise TemplatePackError(f"{where}: {image_path}: {problem}")
        rgba = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
        if rgba is None or rgba.ndim != 3 or rgba.shape[2] != 4:
            raise TemplatePackError(f"{where}: {image_path} is not an RGBA image")
        if (
            rgba.dtype != np.uint8
        ):  # a 16-bit PNG: its levels brought to 8 bits (read as 0..255 it was flat white)
            rgba = np.round(rgba.astype(np.float64) * 255.0 / np.iinfo(rgba.dtype).max).astype(np.uint8)
        if not rgba[..., 3].any():
            raise TemplatePackError(f"{where}: {image_path} is transparent everywhere: no mask to draw")
        _check_anchors(where, anchors, rgba.shape[1], rgba.shape[0])
        if section.endswith(POSE_SUFFIXES):
            anchors = side_view_anchors(anchors, rgba[..., 3])
        rgba = cv2.cvtColor(rgba, cv2.COLOR_BGRA2RGBA)
        templates[section] = template_from_image(section, rgba, anchors)
    if not templates:
        raise TemplatePackError(f"{cfg_file}: no templates")
    for name in templates:
        base = next((name.removesuffix(p) for p in POSE_SUFFIXES if name.endswith(p)), None)
        if base is not None and base not in templates:
            raise TemplatePackError(
                f"{cfg_file} [{name}]: a pose variant of [{base}], which the pack lacks (the type would be dropped)"
            )
    return TemplatePack(cfg_file, templates, tuple(skipped))


def _check_section_names(cfg_file: Path, sections: list[str]) -> None:
    seen: dict[str, str] = {}
    for section in sections:
        if not SECTION_NAME.fullmatch(section):
            raise TemplatePackError(
                f"{cfg_file} [{section}]: a section's name is a mask type and part of file names: letters, "
                "digits, '_' and '-' only (at most 64)"
            )
        if section.lower() in RESERVED_NAMES:
            raise TemplatePackError(
                f"{cfg_file} [{section}]: {section.lower()!r} is m2u-mask's word for several mask types; rename it"
            )
        if section.lower() in seen:
            raise TemplatePackError(
                f"{cfg_file}: [{seen[section.lower()]}] and [{section}] differ only in case (mask types are "
                "matched in any case); rename one"
            )
        seen[section.lower()] = section


def _check_anchors(where: str, anchors: dict[str, tuple[float, float]], width: int, height: int) -> None:
    """Anchors a-f on or near the template image (ANCHOR_REACH) and spread over it: others drew a distorted mask,
    reported ok, or none at all, blamed on every face."""
    reach_x, reach_y = ANCHOR_REACH * width, ANCHOR_REACH * height
    for key, (x, y) in anchors.items():
        near = -reach_x <= x <= width + reach_x and -reach_y <= y <= height + reach_y
        if not (math.isfinite(x) and math.isfinite(y)) or not near:
            raise TemplatePackError(
                f"{where}: mask_{key} ({x:g}, {y:g}) lies far outside the {width}x{height} template image"
            )
    for quad in ANCHOR_QUADS:
        turns = _turns(np.array([anchors[k] for k in quad], np.float64))
        if np.sum(turns > 0) == 2 and np.sum(turns < 0) == 2:  # a bow tie: no map lays it on a face unfolded
            raise TemplatePackError(
                f"{where}: anchors {'-'.join(quad)} cross each other: walked in that order they must go round the "
                "half of the mask they enclose"
            )
    xs, ys = [p[0] for p in anchors.values()], [p[1] for p in anchors.values()]
    if max(xs) - min(xs) < MIN_ANCHOR_SPAN * width or max(ys) - min(ys) < MIN_ANCHOR_SPAN * height:
        raise TemplatePackError(
            f"{where}: anchors a-f span {max(xs) - min(xs):g} x {max(ys) - min(ys):g} px of the {width}x{height} "
            "template: too close together to lay it on a face"
        )


def load_template_pack(path: str | os.PathLike) -> TemplatePack:
    """Load a MaskTheFace-style pack: a masks.cfg file, a folder holding one, or a MaskTheFace checkout (its
    unmodified `masks/masks.cfg`, whose template paths are relative to the checkout). Cached per process."""
    path = Path(path)
    cfg_file = path
    if path.is_dir():
        # A pack folder, or a MaskTheFace checkout (its pack lives in masks/masks.cfg).
        cfg_file = next((c for c in (path / "masks.cfg", path / "masks" / "masks.cfg") if c.is_file()), path)
    if not cfg_file.is_file():
        raise TemplatePackError(f"no masks.cfg at {path} (nor at {path / 'masks' / 'masks.cfg'})")
    return _load_pack_cached(cfg_file.resolve(), cfg_file.stat().st_mtime)
