"""apply_mask: put a template on a face (mesh and straps, compositing; the warp in warp, colour and light in shading)."""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from m2u.core.checks import build_checked, check_types
from m2u.core.errors import SettingError
from m2u.core.imageio import as_rgb_image
from m2u.masking.appearance import (
    PATTERNS,
    PRINT,
    check_pattern_image,
    color_to_hex,
    is_print,
    parse_color,
    print_pattern,
)
from m2u.masking.detect import Face
from m2u.masking.geometry import (
    EYES,
    MOUTH,
    NOSTRILS,
    MaskingError,
    Mesh,
    PlacementConfig,
    build_checked_mesh,
    check_landmarks,
    draw_top_shift,
)
from m2u.masking.realism import (
    REAL_PATTERN_SHARE,
    REAL_PRINT_SHARE,
    REAL_PRINT_WEIGHT,
    Finish,
    cut_strap,
    draw_finish,
    finish_texture,
    real_color,
    real_type,
)
from m2u.masking.shading import cylinder_gain, lighting_gain, premultiplied_texture
from m2u.masking.templates import (
    ALL_TYPES,
    COLORS,
    MASK_TYPES,
    RANDOM,
    Template,
    canonical_mask_type,
    get_template,
)
from m2u.masking.templates_pack import load_template_pack, pack_paths
from m2u.masking.warp import grid_point, warp_texture

# Which drawing of the masks this code makes: raised whenever the same face, configuration and seed would give other
# pixels or another refusal, so a dataset build never resumes across engines (m2u.datasets.build fingerprints it) and
# every result says which one drew it (meta["render_version"]). 1: every engine before 2026-12-06; 2: masks placed
# higher on the nose and wider over the cheeks, where real masks sit (PlacementConfig's defaults); 3: each face's mask
# worn higher or lower on the nose by a seeded draw (PlacementConfig.height_spread), as real masks spread; 4: the 68
# points of a face rolled by more than 15 degrees fitted again on the face turned upright
# (m2u.masking.detect.fit_upright), a black-and-white photo's mask drawn grey, straps ending short of the eyes, a
# pack's side view that fails the checks drawn as its front template; 5: a patchwork print's cells with straight edges
# at full size (they were 8-pixel staircases), a pack's side view with its outer anchors on its body's edge
# (templates_pack.side_view_anchors); 6: a face whose mask body lies mostly beyond the photo's edge refused
# (MIN_VISIBLE_BODY), where 5 drew its straps (every face drawn has 5's pixels).
RENDER_VERSION = 6
# The seed's second stream (np.random.default_rng([seed, PLACEMENT_STREAM])): the placement's own draws.
PLACEMENT_STREAM = 1
# What a record written before render versions existed (a build state, a commit marker, a face pack) was drawn by.
FIRST_RENDER_VERSION = 1


@dataclass(frozen=True)
class MaskConfig:
    """What mask to draw and how. `mask_type` is one of MASK_TYPES (any case: MaskTheFace's `N95`, `KN95`), a
    template of `pack` (matched case-insensitively), "random" (a real mask chosen with the seed) or "all" (every
    type: `expand()` gives one configuration per type; apply_mask takes only single types). `color` is a name from
    COLORS, #rrggbb, "random" or None (the template's own colours); `pattern` one of PATTERNS ("print": a
    multi-colour print drawn for each face; "print-<seed>" redraws one), an image file, "random" or None. Weights
    blend them into the fabric (0..1). `placement` may be given as a mapping of PlacementConfig's fields (a config
    file's or `mask_options`' nested keys)."""

    mask_type: str = "surgical"
    color: str | None = None
    # How strongly the colour dyes the fabric (0..1). None: DEFAULT_COLOR_WEIGHT for a named colour, and for
    # color="random" with realism each mask's own realistic weight (0.85..1, realism.real_color). A value given is
    # used for every colour, random ones included.
    color_weight: float | None = None
    pattern: str | None = None
    # How strongly the pattern covers the fabric (0..1). None: DEFAULT_PATTERN_WEIGHT, and for a print drawn by
    # pattern="random" with realism the opaque print's own weight (REAL_PRINT_WEIGHT). A value given holds for
    # every pattern, drawn prints included.
    pattern_weight: float | None = None
    # How strongly the face's own shading (brightness and its gradient under the mask) is carried onto the mask.
    lighting: float = 0.7
    straps: bool = True  # ear loops / head straps
    # Real-mask variety (m2u.masking.realism), 0..1: fabric grain and weave, creases, side light, the nose's shadow,
    # nose wires, valves, loops hidden by hair, and the real colour mix for color="random" (dark masks first). 0
    # draws exactly the clean templates of earlier versions.
    realism: float = 1.0
    pack: str | None = None  # a MaskTheFace-style masks.cfg (or its folder) to take templates from
    # A pixel belongs to the binary mask when the composited mask covers at least this fraction of it.
    coverage_threshold: float = 0.5
    # Refuse (MaskingError) results whose mask misses the mouth or nostrils, covers an eye or falls apart.
    verify: bool = True
    placement: PlacementConfig = field(default_factory=PlacementConfig)

    def __post_init__(self) -> None:
        if isinstance(self.placement, Mapping):
            # A config file or `mask_options` nests placement as a mapping: built here (before the type check),
            # unknown keys and bad values refused naming `placement`. A ValueError, not a SettingError: no command
            # has a --placement flag to name (it comes in `mask_options`, m2u-make-dataset's --mask-option).
            try:
                placement = build_checked(PlacementConfig, dict(self.placement), "placement")
            except SettingError as error:
                raise ValueError(f"`placement`: {error.message}") from None
            object.__setattr__(self, "placement", placement)
        elif not isinstance(self.placement, PlacementConfig):
            raise ValueError(
                f'`placement` must be a mapping of PlacementConfig\'s fields such as {{"eye_clearance": 0.2}}, '
                f"got {self.placement!r}"
            )
        check_types(self)
        for name in ("color_weight", "pattern_weight", "lighting", "realism"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {value}")
        if not 0.0 < self.coverage_threshold < 1.0:
            raise ValueError(f"coverage_threshold must be within (0, 1), got {self.coverage_threshold}")
        # m2u-mask's words in any case, as mask types are ("Random", "Dots"); a pattern file keeps its name.
        if isinstance(self.color, str) and self.color.lower() == RANDOM:
            object.__setattr__(self, "color", RANDOM)
        if (
            isinstance(self.pattern, str)
            and self.pattern.lower() in (RANDOM, *PATTERNS)
            and not os.path.isfile(self.pattern)
        ):
            object.__setattr__(self, "pattern", self.pattern.lower())
        if self.color not in (None, RANDOM):
            parse_color(self.color)
        if (
            self.pattern is not None
            and self.pattern not in (RANDOM, *PATTERNS)
            and not is_print(self.pattern)
        ):
            if not os.path.isfile(self.pattern):
                raise ValueError(
                    f"pattern {self.pattern!r} is neither a file nor one of {', '.join(PATTERNS)}"
                )
            check_pattern_image(self.pattern)  # before any work: its size decides the memory each face takes
        object.__setattr__(self, "mask_type", canonical_mask_type(self.mask_type))
        if self.pack is None and self.mask_type not in (*MASK_TYPES, RANDOM, ALL_TYPES):
            raise ValueError(
                f"unknown mask type {self.mask_type!r}; choose one of {', '.join(MASK_TYPES)}, random or all"
            )
        if self.pack is not None:
            # Loaded (once per process) whatever the type: a bad pack is refused here, before any photo is read.
            pack = load_template_pack(self.pack)
            if self.mask_type not in (RANDOM, ALL_TYPES):
                object.__setattr__(self, "mask_type", pack.resolve(self.mask_type))

    def expand(self) -> tuple[MaskConfig, ...]:
        """The single-type configurations this one stands for: one per type (of the pack, or MASK_TYPES) for
        "all", else itself."""
        if self.mask_type != ALL_TYPES:
            return (self,)
        types = load_template_pack(self.pack).names if self.pack else MASK_TYPES
        return tuple(dataclasses.replace(self, mask_type=t) for t in types)


# m2u's own `--code` extras (MaskTheFace has no random draws): a bare `random` would be ambiguous.
RANDOM_COLOR_CODE = "random_color"
RANDOM_PATTERN_CODE = "random_pattern"


def parse_mask_code(code: str, base: MaskConfig = MaskConfig()) -> tuple[MaskConfig, ...]:
    """MaskTheFace's `--code`: comma-separated `type`, `type-#rrggbb` / `type-<colour name>` or
    `type-<pattern or texture image>` entries, each a configuration of its own (the other fields from `base`);
    also `type-random_color` and `type-random_pattern` (a bare `random` is refused: it could be either).
    A texture path that is not a file as given is also looked up relative to the MaskTheFace checkout holding
    `base.pack` (its `--code` examples name `masks/textures/...`). ValueError names a bad entry."""
    entries = [entry.strip() for entry in code.split(",") if entry.strip()]
    if not entries:
        raise ValueError("the mask code is empty: give entries like 'cloth-#e54294, N95, surgical_blue'")
    configs = []
    names = load_template_pack(base.pack).names if base.pack else MASK_TYPES
    for entry in entries:
        mask_type, extra = _split_code_entry(entry, names)
        if mask_type.strip().lower() == ALL_TYPES:
            raise ValueError(f"mask code entry {entry!r}: 'all' is not one mask; list the types instead")
        color, pattern = base.color, base.pattern
        lowered = extra.strip().lower()
        if lowered == RANDOM:
            # Both a colour and a pattern may be random: reading it as either would surprise half the users.
            raise ValueError(
                f"mask code entry {entry!r}: 'random' could be a colour or a pattern; write "
                f"'{mask_type.strip()}-{RANDOM_COLOR_CODE}' or '{mask_type.strip()}-{RANDOM_PATTERN_CODE}'"
            )
        if lowered == RANDOM_COLOR_CODE:
            color = RANDOM
        elif lowered == RANDOM_PATTERN_CODE:
            pattern = RANDOM
        elif extra.startswith("#") or lowered in COLORS:
            color = lowered
        elif extra:
            pattern = _code_texture(extra, base.pack)
        try:
            configs.append(
                dataclasses.replace(base, mask_type=mask_type.strip(), color=color, pattern=pattern)
            )
        except ValueError as exc:
            raise ValueError(f"mask code entry {entry!r}: {exc}") from None
    return tuple(configs)


def _split_code_entry(entry: str, names: Sequence[str]) -> tuple[str, str]:
    """A `--code` entry as (type, what follows its "-"): after the longest type name it starts with (in any case;
    a pack's section names may hold "-" themselves, so "surgical-v2-#ff0000" is type "surgical-v2"), else at its
    first "-" (the type then refused by name if there is none such)."""
    lowered = entry.lower()
    for name in sorted(names, key=len, reverse=True):
        if lowered == name.lower() or lowered.startswith(name.lower() + "-"):
            return entry[: len(name)], entry[len(name) + 1 :]
    mask_type, _, extra = entry.partition("-")
    return mask_type, extra


def _code_texture(text: str, pack: str | None) -> str:
    if text in PATTERNS or os.path.isfile(text) or pack is None:
        return text
    cfg = load_template_pack(pack).path  # masks.cfg
    found = next((path for path in pack_paths(cfg.parent, text) if path.is_file()), None)
    return text if found is None else str(found)


def inputs_per_config(configs: Sequence[MaskConfig], n_inputs: int) -> list[tuple[MaskConfig, list[int]]]:
    """Configurations cycled over inputs 0..n-1 (MaskTheFace's `--code`: input i gets entry i mod len), as
    (configuration, input indices) groups in the configurations' order; every input in exactly one group."""
    if not configs:
        raise ValueError("no mask configurations to cycle over")
    groups = [(config, list(range(k, n_inputs, len(configs)))) for k, config in enumerate(configs)]
    return [(config, indices) for config, indices in groups if indices]


@dataclass
class MaskResult:
    image: np.ndarray  # uint8 RGB, same shape as the input
    mask: np.ndarray  # uint8 (H, W), 255 where the mask covers the pixel
    meta: dict[str, Any]


# ---------------------------------------------------------------------------------------------------------------


# Quadratic Bézier basis at 12 points: a strap's curve is this (12, 3) times its (start, control, end) points.
_STRAP_T = np.linspace(0.0, 1.0, 12)[:, None]
_STRAP_BASIS = np.hstack([(1 - _STRAP_T) ** 2, 2 * (1 - _STRAP_T) * _STRAP_T, _STRAP_T**2])


def _strap_polylines(
    template: Template, mesh: Mesh, landmarks: np.ndarray, hidden: tuple[float, float] = (0.0, 0.0)
) -> list[tuple[np.ndarray, float, tuple[float, float, float]]]:
    """Image-space polylines (points, width px, rgb) for the template's straps on the visible sides; `hidden`: per
    side, the share of each strap near the ear that hair covers (not drawn)."""
    frame = mesh.frame
    eyes = frame.to_frame(landmarks[EYES])
    out = []
    for strap, ends in zip(template.straps, template.strap_ends):
        if ends is None:
            continue
        ears = frame.to_frame(landmarks[[strap.ear_landmark, 16 - strap.ear_landmark]])
        for side, (u, ear, sign) in enumerate(((ends[0], ears[0], -1.0), (ends[1], ears[1], 1.0))):
            # A strap on the side the face turns away from is hidden behind the cheek.
            if (side == 0 and mesh.yaw < -0.4) or (side == 1 and mesh.yaw > 0.4):
                continue
            start = frame.to_frame(grid_point(mesh.grid, u, strap.v))
            end = ear + np.array([sign * strap.ear_offset[0], strap.ear_offset[1]])
            length = float(np.hypot(*(end - start)))
            control = 0.5 * (start + end) + np.array([0.0, strap.bow * length])
            curve = cut_strap(_STRAP_BASIS @ np.stack([start, control, end]), hidden[side])
            curve = _short_of_the_eyes(curve, eyes, strap.width)
            if len(curve) >= 2:
                out.append((frame.to_image(curve), strap.width * frame.scale, strap.rgb))
    return out


# How near an eye landmark a strap may come, in eye distances (the face frame's unit) beyond its half width: a head
# strap bound for the far ear of a half-turned face ran to the outer eye corner (benchmarks/strap_clearance.py: on
# the first 200 CelebA photos, 37 of 199 gas masks and 2 N95 had strap pixels within 0.15 eye distances of an eye's
# outline; with this clearance none).
STRAP_EYE_CLEARANCE = 0.25


def _short_of_the_eyes(curve: np.ndarray, eyes: np.ndarray, width: float) -> np.ndarray:
    """A strap polyline (face frame, from the mask outwards) ending before its first point within
    STRAP_EYE_CLEARANCE (plus half its width) of an eye landmark: there it passes behind the head."""
    distance = np.hypot(*(curve[:, None, :] - eyes[None, :, :]).transpose(2, 0, 1)).min(axis=1)
    near = np.flatnonzero(distance < STRAP_EYE_CLEARANCE + width / 2)
    return curve if not len(near) else curve[: near[0]]


def _keep_attached(coverage: np.ndarray, body_alpha: np.ndarray, threshold: float) -> np.ndarray | None:
    """A 0/1 factor removing what is not attached to the mask's main body (None when everything is attached):
    strap stretches that re-emerge from under the mask's edge, and sub-pixel specks where a sharp template corner is
    sampled (they would be separate mask pieces)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (coverage >= threshold).view(np.uint8), connectivity=8
    )
    if count <= 2:
        return None
    areas = stats[:, cv2.CC_STAT_AREA]
    main = 1 + int(np.argmax(areas[1:]))
    # Only strap-only pieces and specks go; a real second piece of the body stays, and verification refuses it.
    body_labels = np.unique(labels[(body_alpha >= threshold) & (labels > 0)])
    removable = [
        k for k in range(1, count) if k != main and (k not in body_labels or areas[k] < 0.01 * areas[main])
    ]
    if not removable:
        return None
    detached = np.isin(labels, removable).astype(np.uint8)
    # Their soft rims go too (one pixel around), so nothing faint is left floating.
    return 1.0 - cv2.dilate(detached, np.ones((3, 3), np.uint8)).astype(np.float32) * (labels != main)


@functools.cache
def _placement_fields(placement: PlacementConfig) -> tuple[tuple[str, Any], ...]:
    return tuple(asdict(placement).items())


Resolved = tuple[str, tuple | None, str | None, float, float]
# The colour weight of a named colour when MaskConfig.color_weight is None (the weight of earlier versions).
DEFAULT_COLOR_WEIGHT = 0.5
# The pattern weight when MaskConfig.pattern_weight is None (the weight of earlier versions).
DEFAULT_PATTERN_WEIGHT = 0.5
_SINGLE_INK = tuple(p for p in PATTERNS if p != PRINT)
GAS_TYPE = "gas"  # the patterns of realism=0 (and of earlier versions)


def _resolve(config: MaskConfig, rng: np.random.Generator) -> Resolved:
    """(mask type, colour or None, pattern or None, colour weight, pattern weight) for one face, drawn from `rng`
    where random ("print" becomes that face's "print-<seed>")."""
    pack_names = load_template_pack(config.pack).names if config.pack else ()
    if config.mask_type == RANDOM and not pack_names and config.realism > 0:
        mask_type = real_type(rng)
    elif config.mask_type == RANDOM:
        choices = pack_names or MASK_TYPES
        mask_type = str(choices[int(rng.integers(len(choices)))])
    else:
        mask_type = config.mask_type
    color_name = config.color
    color_weight = DEFAULT_COLOR_WEIGHT if config.color_weight is None else config.color_weight
    if color_name == RANDOM and config.realism > 0:
        # The weight is drawn whatever is configured, so the draws after it (and the outputs of defaults) stay.
        color_name, real_weight = real_color(rng)
        if config.color_weight is None:
            color_weight = real_weight
    elif color_name == RANDOM:
        names = sorted(COLORS)
        color_name = names[int(rng.integers(len(names)))]
    pattern = config.pattern
    pattern_weight = DEFAULT_PATTERN_WEIGHT if config.pattern_weight is None else config.pattern_weight
    if pattern == RANDOM and config.realism == 0:
        pattern = _SINGLE_INK[int(rng.integers(len(_SINGLE_INK)))]
    elif pattern == RANDOM:
        printed = rng.random() < REAL_PATTERN_SHARE
        pick = _SINGLE_INK[int(rng.integers(len(_SINGLE_INK)))]
        pattern = pick if printed else None
        if printed and rng.random() < REAL_PRINT_SHARE:
            # Printed cloth is opaque: its inks replace the fabric's colour (the template's shading stays).
            pattern = print_pattern(rng)
            if config.pattern_weight is None:
                pattern_weight = REAL_PRINT_WEIGHT
    if pattern == PRINT:
        pattern = print_pattern(rng)
    if mask_type == GAS_TYPE and config.realism > 0:
        # Respirators are moulded rubber in the template's own dark grey: a drawn pastel or print looked like a toy
        # (drawn all the same above, so every other face's draws stay as they were).
        color_name = None if config.color == RANDOM else color_name
        pattern = None if config.pattern == RANDOM else pattern
    color = None if color_name is None else parse_color(color_name)
    return mask_type, color, pattern, color_weight, pattern_weight


def warm_templates(config: MaskConfig) -> None:
    """Draw (or load) every template `config` can pick, so the first faces do not pay for it."""
    if config.pack:
        load_template_pack(config.pack)
        return
    for mask_type in MASK_TYPES if config.mask_type in (RANDOM, ALL_TYPES) else (config.mask_type,):
        get_template(mask_type)


def _verify(mask: np.ndarray, landmarks: np.ndarray, box: tuple[int, int, int, int]) -> None:
    h, w = mask.shape
    pts = np.round(landmarks).astype(int)
    visible = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
    covered = np.zeros(len(pts), bool)
    covered[visible] = mask[pts[visible, 1], pts[visible, 0]] > 0
    idx = np.arange(len(pts))
    must = np.r_[idx[NOSTRILS], idx[MOUTH]]
    missed = [int(i) for i in must if visible[i] and not covered[i]]
    if missed:
        raise MaskingError(f"mask misses nose/mouth landmarks {missed}")
    on_eyes = [int(i) for i in idx[EYES] if covered[i]]
    if on_eyes:
        raise MaskingError(f"mask covers eye landmarks {on_eyes}")
    x0, y0, x1, y1 = box
    count, _ = cv2.connectedComponents(mask[y0:y1, x0:x1], connectivity=8)
    if count - 1 != 1:
        raise MaskingError(f"mask is {count - 1} separate pieces, not one")


# The least share of a mask's body (its mesh's area) that must lie inside the image for the face to be masked while
# `verify` is on. A face at the image's edge can have its mask's body beyond it while the straps reach in: m2u-mask
# then wrote a "masked" face whose mask was an ear loop or a sliver (a CelebA photo cut just above the nose tip: 18
# of 20 seeds drawn so, down to 2 mask pixels). Below half the body the pair is mostly a bare face; none gets this
# far without a body inside at all, verify or not ("only its straps").
MIN_VISIBLE_BODY = 0.5


def _signed_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def image_outline(width: int, height: int) -> np.ndarray:
    """The outline of a `width` x `height` image (pixel centres at integers): its four corners, clockwise on
    screen."""
    return np.array(
        [[-0.5, -0.5], [width - 0.5, -0.5], [width - 0.5, height - 0.5], [-0.5, height - 0.5]], np.float64
    )


def visible_body_share(grid: np.ndarray, photo: np.ndarray) -> float:
    """The share (0..1) of a mesh's area (the outline of its rows x cols x 2 image points) that lies on `photo`, a
    convex outline (an image's, `image_outline`; an aligned crop's photo part): the mesh's outline clipped to it
    (Sutherland-Hodgman, exact for a simple polygon clipped to a convex one)."""
    outline = np.concatenate([grid[0], grid[1:, -1], grid[-1, -2::-1], grid[-2:0:-1, 0]]).astype(np.float64)
    whole = abs(_signed_area(outline))
    corners = np.asarray(photo, np.float64)
    turn = 1.0 if _signed_area(corners) > 0 else -1.0  # inside is to the left of each edge, or to its right
    clipped = outline
    for a, b in zip(corners, np.roll(corners, -1, axis=0), strict=True):
        if whole <= 0 or len(clipped) < 3:
            return 0.0
        edge = b - a
        side = turn * (edge[0] * (clipped[:, 1] - a[1]) - edge[1] * (clipped[:, 0] - a[0]))
        kept = []
        for k in range(len(clipped)):
            after = (k + 1) % len(clipped)
            if side[k] >= 0:
                kept.append(clipped[k])
            if (side[k] >= 0) != (side[after] >= 0):
                t = side[k] / (side[k] - side[after])
                kept.append(clipped[k] + t * (clipped[after] - clipped[k]))
        clipped = np.array(kept).reshape(-1, 2)
    return min(1.0, abs(_signed_area(clipped)) / whole) if len(clipped) >= 3 else 0.0


def _check_body_visible(grid: np.ndarray, photo: np.ndarray, verify: bool) -> None:
    """MaskingError when the mask's body lies beyond the photo's edge: wholly (whatever `verify`: the straps alone
    are no mask), or all but less than MIN_VISIBLE_BODY of it (with `verify`)."""
    share = visible_body_share(grid, photo)
    if share <= 0.0:
        raise MaskingError("the mask's body lies outside the image (only its straps would be drawn)")
    if verify and share < MIN_VISIBLE_BODY:
        said = f"only {math.floor(share * 100)}%" if share >= 0.01 else "under 1%"
        raise MaskingError(
            f"{said} of the mask's body lies inside the image (the face is at its edge; at least "
            f"{MIN_VISIBLE_BODY:.0%} must)"
        )


def _mask_box(points: np.ndarray, pad: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixel box (x0, y0, x1, y1) the mask and its straps can touch, clipped to the image."""
    x0, y0 = np.floor(points.min(axis=0) - pad).astype(int)
    x1, y1 = np.ceil(points.max(axis=0) + pad).astype(int) + 1
    x0, y0, x1, y1 = max(int(x0), 0), max(int(y0), 0), min(int(x1), width), min(int(y1), height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise MaskingError("the mask falls outside the image")
    return x0, y0, x1, y1


def _strap_layers(
    straps: list, origin: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None, list]:
    """(coverage, premultiplied colour or None, colours) of the straps in the box.

    One anti-aliased canvas per colour, composited over each other (premultiplied); with a single colour (every
    shipped template) the colour is a constant and only the coverage is an image (colour None)."""
    strap_alpha = np.zeros(shape, np.float32)
    strap_rgb: np.ndarray | None = None
    colours = list(dict.fromkeys(rgb for _, _, rgb in straps))
    for rgb in colours:
        canvas = np.zeros(shape, np.uint8)
        for curve, strap_width, strap_rgb_ in straps:
            if strap_rgb_ == rgb:
                pts = np.round((curve - origin) * 16).astype(np.int32)
                cv2.polylines(canvas, [pts], False, 255, max(2, round(strap_width)), cv2.LINE_AA, 4)
        a = canvas.astype(np.float32)
        a *= np.float32(1 / 255)
        if len(colours) == 1:
            strap_alpha = a
            continue
        # Over what is there: rgb·a + below·(1 − a).
        strap_rgb = np.zeros((*shape, 3), np.float32) if strap_rgb is None else strap_rgb
        strap_rgb *= (1 - a)[..., None]
        strap_rgb += np.asarray(rgb, np.float32) * a[..., None]
        strap_alpha += a * (1 - strap_alpha)
    return strap_alpha, strap_rgb, colours


def _body_over_straps(
    body: np.ndarray,
    straps: tuple[np.ndarray, np.ndarray | None, list],
    threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(premultiplied colour in [0, 1], coverage): the mask body over its straps, detached bits dropped."""
    body_rgb, body_alpha = body[..., :3], body[..., 3]
    strap_alpha, strap_rgb, colours = straps
    # Mask body over straps: coverage = body + straps where the body leaves room.
    below = 1.0 - body_alpha
    strap_visible = strap_alpha * below
    alpha = body_alpha + strap_visible
    keep = _keep_attached(alpha, body_alpha, threshold)
    if keep is not None:
        body_rgb *= keep[..., None]
        strap_visible *= keep
        alpha *= keep
    colour = body_rgb
    if strap_rgb is not None:
        strap_rgb *= (below * (1.0 if keep is None else keep))[..., None]
        colour += strap_rgb
    elif colours:
        colour += np.asarray(colours[0], np.float32) * strap_visible[..., None]
    return colour, alpha


def _paint(
    image: np.ndarray,
    box: tuple[int, int, int, int],
    colour: np.ndarray,
    alpha: np.ndarray,
    config: MaskConfig,
    eye_distance: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(masked image, 0/255 mask): the lit mask composited over the face inside `box`."""
    x0, y0, x1, y1 = box
    region = image[y0:y1, x0:x1]
    # The face's light on mask and straps, in 8-bit units; then over the face. OpenCV's saturating add rounds to
    # 8 bits and caps what the light made brighter than white (colour is never negative).
    if config.lighting > 0:
        colour *= (lighting_gain(region, alpha, config.lighting, eye_distance) * np.float32(255))[..., None]
    else:
        colour *= np.float32(255)
    below_mask = region.astype(np.float32)
    below_mask *= (1.0 - alpha)[..., None]
    out = image.copy()
    out[y0:y1, x0:x1] = cv2.add(below_mask, colour, dtype=cv2.CV_8U)
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[y0:y1, x0:x1] = (alpha >= config.coverage_threshold).view(np.uint8) * np.uint8(255)
    return out, mask


def _result_meta(
    config: MaskConfig,
    seed: int,
    resolved: Resolved,
    template: Any,
    mesh: Any,
    landmarks: np.ndarray,
    mask: np.ndarray,
    finish: Finish | None,
) -> dict[str, Any]:
    mask_type, color, pattern, color_weight, pattern_weight = resolved
    return {
        "type": mask_type,
        "template_source": template.source if not config.pack else str(config.pack),
        "template": template.name,
        "color": None if color is None else color_to_hex(color),
        "color_weight": color_weight,
        "pattern": pattern,
        "pattern_weight": pattern_weight,
        "anchors": {k: [round(x, 2), round(y, 2)] for k, (x, y) in mesh.anchors.items()},
        "landmarks": np.round(landmarks, 2).tolist(),
        "pose": mesh.pose,
        "yaw": round(mesh.yaw, 3),
        "roll_degrees": round(mesh.roll_degrees, 2),
        "fallback": mesh.fallback,
        "top_shift": round(mesh.top_shift, 4),
        "mask_pixels": int(np.count_nonzero(mask)),
        "seed": int(seed),
        "placement": dict(_placement_fields(config.placement)),  # a dict of its own for each result
        "realism": config.realism,
        "finish": None if finish is None else finish.record(),
        "render_version": RENDER_VERSION,
    }


def _dyed(rgb: tuple[float, float, float], color: tuple, weight: float) -> tuple[float, float, float]:
    """A strap colour dyed with the fabric colour by `weight`."""
    r, g, b = (float(weight * c + (1 - weight) * x) for c, x in zip(color, rgb, strict=True))
    return (r, g, b)


def check_seed(seed: object) -> int:
    """`seed` as an int for numpy's generator: any integer, as every m2u command takes it (m2u-mask and
    m2u-make-dataset hash theirs per face), taken modulo 2**64 (numpy's generators take no negative one; 2**64 draws
    as 0).
    SettingError naming `seed` for anything else (a float seed would give other bytes than its int)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise SettingError("seed", f"must be an integer, got {seed!r}")
    return int(seed) % 2**64


def apply_mask(
    image: np.ndarray,
    face: Face | np.ndarray,
    config: MaskConfig = MaskConfig(),
    seed: int = 0,
    *,
    photo: np.ndarray | None = None,
) -> MaskResult:
    """Put a mask on one face. Works from the 68 landmarks alone (a Face or a (68, 2) array), so it runs equally
    on full photos and on aligned crops. Pure: the same inputs and seed (any integer, check_seed) give byte-identical
    outputs. Raises MaskingError (with `.reason`) when the mask cannot be placed correctly, among others when the
    mask's body lies beyond the image's edge (a face at the edge: MIN_VISIBLE_BODY). `photo`: where an aligned
    crop's pixels are the photo's (its convex outline in the crop's pixels, e.g. the photo's corners mapped into
    the crop; the rest is border fill), the part the body must lie on; None: the whole image."""
    seed = check_seed(seed)
    as_rgb_image(image)
    height, width = image.shape[:2]
    photo = image_outline(width, height) if photo is None else np.asarray(photo, np.float64)
    if photo.ndim != 2 or photo.shape[0] < 3 or photo.shape[1] != 2 or not np.isfinite(photo).all():
        raise ValueError(f"photo must be a convex outline of (N >= 3, 2) finite points, got {photo.shape}")
    if not isinstance(config, MaskConfig):  # a dict or None failed deep inside with AttributeError
        raise SettingError("config", f"must be MaskConfig, got {config!r}")
    if config.mask_type == ALL_TYPES:
        raise ValueError("mask type 'all' stands for several masks: apply each of MaskConfig.expand()")
    if isinstance(face, Face) and face.problem:
        raise MaskingError(
            face.problem
        )  # e.g. the detector found it upside down: its landmarks are not usable
    # Checked here, before any drawing: the drawing casts them to integers (an overflow warning for huge ones).
    landmarks = check_landmarks(face.landmarks if isinstance(face, Face) else face)
    rng = np.random.default_rng(seed)
    resolved = _resolve(config, rng)
    finish = draw_finish(rng, resolved[0], config.realism, not config.pack) if config.realism > 0 else None
    # From a stream of its own: the ground-truth mask depends on the geometry alone, never on which colour or print
    # the appearance draws took, and a seed keeps the appearance it drew before render version 3.
    top_shift = draw_top_shift(np.random.default_rng([seed, PLACEMENT_STREAM]), config.placement)
    # A face whose shifted mask fails the render checks (an eye landmark covered or a nostril left bare, mostly on
    # faces a few pixels across) gets the unshifted mask before it is refused, as a failed mesh does in build_mesh.
    # A pack's side view (`<name>_left` / `_right`) is then tried as its front template: a side view's own shape
    # may leave the mouth or a nostril bare where the front one, on m2u's turned mesh, covers them (MaskTheFace's
    # did on 20 of 144 turned CelebA faces while their outer anchors, past the ear loops, were laid on the jaw; the
    # loader now moves those to the body's edge, templates_pack.side_view_anchors, and none of 139 falls back).
    attempts = [(top_shift, True), *([(0.0, True)] if top_shift else [])]
    if config.pack:
        attempts += [(shift, False) for shift, _ in attempts]
    drew_a_side_view = False
    for attempt, (shift, side_view) in enumerate(attempts):
        try:
            result = _draw(image, landmarks, config, seed, resolved, finish, shift, side_view, photo)
        except _RenderCheckError as error:
            drew_a_side_view |= error.side_view
            # The front-template attempts redraw only what a side view drew: a front face's would be its first
            # attempts again, refused again (two wasted draws per refusal).
            if attempt == len(attempts) - 1 or (not attempts[attempt + 1][1] and not drew_a_side_view):
                raise
            continue
        fallback = [
            *(["unshifted"] if shift != top_shift else []),
            *([] if side_view else ["front template"]),
        ]
        if fallback:  # after the mesh's own (build_mesh's), if it took one
            result.meta["fallback"] = ", ".join([*filter(None, [result.meta.get("fallback")]), *fallback])
        return result
    raise AssertionError("unreachable: the last attempt returns or raises")


def _is_grey(image: np.ndarray) -> bool:
    """Whether every pixel of an RGB image has three equal channels (a black-and-white photo)."""
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))


class _RenderCheckError(MaskingError):
    """A drawn mask that fails `_verify`: the one refusal a shift of the top edge can cause and apply_mask retries
    unshifted (build_mesh retries its own mesh checks; a face too small or implausible fails either way).
    `side_view`: whether the mask drawn was a pack's pose variant (apply_mask then tries the front template)."""

    def __init__(self, reason: str, side_view: bool = False):
        super().__init__(reason)
        self.side_view = side_view


def _draw(
    image: np.ndarray,
    landmarks: np.ndarray,
    config: MaskConfig,
    seed: int,
    resolved: tuple,
    finish: Finish | None,
    top_shift: float,
    side_view: bool = True,
    photo: np.ndarray | None = None,
) -> MaskResult:
    """apply_mask's drawing of the resolved mask with the top edge shifted by `top_shift`; `side_view=False`
    draws a pack's front template whatever the face's pose; `photo`: apply_mask's (None: the whole image)."""
    mask_type, color, pattern, color_weight, pattern_weight = resolved
    mesh = build_checked_mesh(landmarks, config.placement, top_shift)  # checked once, by apply_mask
    if config.pack:
        pack = load_template_pack(config.pack)
        template = pack.get(mask_type, mesh.pose if side_view else "front")
        drawn_side_view = template is not pack.get(mask_type, "front")
    else:
        template, drawn_side_view = get_template(mask_type), False

    height, width = image.shape[:2]
    photo = image_outline(width, height) if photo is None else photo
    _check_body_visible(mesh.grid, photo, config.verify)
    straps = []
    if config.straps:
        straps = _strap_polylines(template, mesh, landmarks, finish.hair if finish else (0.0, 0.0))
        if finish is not None and color is not None:
            # Real loops are dyed with the fabric (black masks have black loops).
            straps = [(p, w, _dyed(rgb, color, color_weight)) for p, w, rgb in straps]
    points = np.vstack([mesh.grid.reshape(-1, 2), *[p for p, _, _ in straps]])
    box = _mask_box(points, 4 + max([w for _, w, _ in straps], default=0.0), width, height)
    x0, y0, x1, y1 = box
    origin = np.array([x0, y0], np.float64)
    shape = (y1 - y0, x1 - x0)

    mid = mesh.grid[mesh.grid.shape[0] // 2]
    mask_width = float(np.hypot(*np.diff(mid, axis=0).T).sum())
    texture = premultiplied_texture(template, mask_width, color, color_weight, pattern, pattern_weight)
    if finish is not None:
        texture = finish_texture(texture, finish)  # a new array: the cached texture stays clean
    body = warp_texture(texture, mesh.grid, origin, shape, cylinder_gain(texture.shape[1], mesh.yaw))
    colour, alpha = _body_over_straps(body, _strap_layers(straps, origin, shape), config.coverage_threshold)
    out, mask = _paint(image, box, colour, alpha, config, mesh.eye_distance)
    if _is_grey(image[y0:y1, x0:x1]):
        # A black-and-white photo (around this face: a grey print pasted in a colour collage too) gets a grey mask:
        # a coloured one made a pair no camera takes (and a dataset's masked side the only one in colour). Its grey
        # pixels keep their level (OpenCV's weights sum to 1).
        region = out[y0:y1, x0:x1]
        region[:] = cv2.cvtColor(cv2.cvtColor(region, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    if config.verify:
        try:
            _verify(mask, landmarks, box)
        except MaskingError as error:
            raise _RenderCheckError(error.reason, drawn_side_view) from None
    meta = _result_meta(config, seed, resolved, template, mesh, landmarks, mask, finish)
    return MaskResult(out, mask, meta)
