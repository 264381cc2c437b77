"""MaskTheFace-style template packs: a `masks.cfg` INI whose sections name a template image and its anchors a-f."""

from __future__ import annotations

import configparser
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from m2u.core.imageio import header_problem
from m2u.masking.templates import TEXTURE_HEIGHT, TEXTURE_WIDTH, Template

ANCHOR_NAMES = ("a", "b", "c", "d", "e", "f")
POSE_SUFFIXES = ("_left", "_right")


# MaskTheFace's templates are under 1,500 pixels a side; a template is scaled down to the face anyway.
MAX_TEMPLATE_SIDE = 4096


class TemplatePackError(ValueError):
    """A masks.cfg pack that cannot be loaded; the message says which section and why."""


def _pack_image(cfg_dir: Path, template_path: str) -> Path:
    """The image a section's `template` names. MaskTheFace's own repository writes these paths relative to the
    repository root (`masks/templates/surgical.png` in `masks/masks.cfg`); packs laid out flat keep the image next
    to masks.cfg. Tried in that order: next to masks.cfg, relative to each of its two parent folders, then the
    bare file name next to masks.cfg or in its `templates` folder."""
    relative = Path(template_path)
    candidates = [cfg_dir / relative, *(parent / relative for parent in list(cfg_dir.parents)[:2])]
    candidates += [cfg_dir / relative.name, cfg_dir / "templates" / relative.name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise TemplatePackError(f"template image {template_path!r} not found (tried {tried})")


def template_from_image(name: str, rgba: np.ndarray, anchors: dict[str, tuple[float, float]]) -> Template:
    """Resample an RGBA template image into texture space: the quads a-b-e-d and b-c-f-e become the left and right
    halves of the (u, v) square (a, b, c at the top; d, e, f at the bottom), each by a homography."""
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise TemplatePackError(f"{name}: template image must be RGBA")
    img = rgba.astype(np.float32) / 255.0
    alpha = img[..., 3]
    premul = np.dstack([img[..., :3] * alpha[..., None], alpha])
    half = TEXTURE_WIDTH // 2
    out = []
    for quad in (("a", "b", "e", "d"), ("b", "c", "f", "e")):
        src = np.array([anchors[k] for k in quad], np.float32)
        dst = np.array([(0, 0), (half, 0), (half, TEXTURE_HEIGHT), (0, TEXTURE_HEIGHT)], np.float32)
        h = cv2.getPerspectiveTransform(src, dst)
        out.append(
            cv2.warpPerspective(
                premul, h, (half, TEXTURE_HEIGHT), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT
            )
        )
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
        parser.read(cfg_file, encoding="utf-8")
    except configparser.Error as exc:
        raise TemplatePackError(f"{cfg_file}: not a valid masks.cfg ({exc})") from exc
    templates, skipped = {}, []
    for section in parser.sections():
        where = f"{cfg_file} [{section}]"
        entries = parser[section]
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
        image_path = _pack_image(cfg_file.parent, entries["template"])
        problem = header_problem(image_path, MAX_TEMPLATE_SIDE)  # from the header, before decoding
        if problem:
            raise TemplatePackError(f"{where}: {image_path}: {problem}")
        rgba = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
        if rgba is None or rgba.ndim != 3 or rgba.shape[2] != 4:
            raise TemplatePackError(f"{where}: {image_path} is not an RGBA image")
        rgba = cv2.cvtColor(rgba, cv2.COLOR_BGRA2RGBA)
        templates[section] = template_from_image(section, rgba, anchors)
    if not templates:
        raise TemplatePackError(f"{cfg_file}: no templates")
    return TemplatePack(cfg_file, templates, tuple(skipped))


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
