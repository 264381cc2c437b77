"""The real-mask finish (m2u.masking.realism): every effect shows, the mask stays exact, the build stays seeded."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from m2u.masking import MaskConfig, apply_mask
from m2u.masking.realism import REAL_COLOR_MIX, Finish, cut_strap, draw_finish, finish_texture, real_color
from m2u.masking.templates import COLORS


def _plain_finish(**changes) -> Finish:
    base = Finish(
        grain=0.0, weave=0.0, weave_period=8.0, weave_angle=0.3, folds=(), side_light=0.0, nose_shadow=0.0,
        nose_shadow_u=0.5, wire=False, valve=None, hair=(0.0, 0.0), texture_seed=1,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def _texture(height=128, width=384) -> np.ndarray:
    tex = np.zeros((height, width, 4), np.float32)
    tex[4:-4, 4:-4, 3] = 1.0
    tex[2:4, 4:-4, 3] = 0.4  # a soft edge
    tex[..., :3] = 0.6 * tex[..., 3:]
    return tex


@pytest.mark.parametrize(
    "effect",
    [
        {"grain": 0.08},
        {"weave": 0.06},
        {"folds": ((0.5, 0.1, 0.12),)},
        {"side_light": 0.3},
        {"nose_shadow": 0.3},
        {"wire": True},
        {"valve": (0.3, 0.55, 0.9)},
    ],
)
def test_each_effect_changes_colour_only_inside_the_mask(effect):
    texture = _texture()
    plain = finish_texture(texture, _plain_finish())
    finished = finish_texture(texture, _plain_finish(**effect))
    assert np.array_equal(plain, texture)  # no effect: the texture as it was
    assert np.array_equal(finished[..., 3], texture[..., 3])  # alpha (the ground truth) untouched
    changed = np.abs(finished[..., :3] - texture[..., :3]).max(axis=2) > 1e-4
    assert changed.sum() > 20
    assert not changed[texture[..., 3] == 0].any()
    assert (finished[..., :3] <= finished[..., 3:] + 1e-6).all()  # premultiplied colour never over its alpha
    again = finish_texture(texture, _plain_finish(**effect))
    assert again.tobytes() == finished.tobytes()


def test_hair_cuts_a_strap_near_the_ear():
    curve = np.stack([np.linspace(0, 100, 12), np.zeros(12)], axis=1)
    assert cut_strap(curve, 0.0) is curve
    cut = cut_strap(curve, 0.4)
    assert cut[0].tolist() == [0.0, 0.0] and cut[-1, 0] == pytest.approx(60.0)


def test_real_colour_mix_is_mostly_dark_and_seeded():
    rng = np.random.default_rng(0)
    picks = [real_color(rng)[0] for _ in range(2000)]
    black = picks.count("black") / len(picks)
    assert black == pytest.approx(dict(REAL_COLOR_MIX)["black"], abs=0.04)
    assert max(set(picks), key=picks.count) == "black"
    assert all(p is None or p in COLORS for p in picks)
    assert [real_color(np.random.default_rng(5)) for _ in range(2)] == [
        real_color(np.random.default_rng(5))
    ] * 2


def test_draws_are_seeded_and_scaled_by_strength():
    a = draw_finish(np.random.default_rng(3), "cloth", 1.0, True)
    assert a == draw_finish(np.random.default_rng(3), "cloth", 1.0, True)
    off = draw_finish(np.random.default_rng(3), "cloth", 0.0, True)
    assert off.grain == off.weave == off.side_light == off.nose_shadow == 0 and off.valve is None
    assert not off.wire and off.hair == (0.0, 0.0) and all(depth == 0 for _, _, depth in off.folds)
    # Over many faces every effect appears; a pack template gets no wire or valve (its image has its own).
    finishes = [draw_finish(np.random.default_rng(s), "kn95", 1.0, True) for s in range(200)]
    assert any(f.valve for f in finishes) and any(f.wire for f in finishes) and any(f.folds for f in finishes)
    assert any(f.hair[0] > 0 for f in finishes) and any(f.hair[1] > 0 for f in finishes)
    packs = [draw_finish(np.random.default_rng(s), "kn95", 1.0, False) for s in range(50)]
    assert not any(f.valve or f.wire for f in packs)
    # The N95 template has a valve of its own: a second one drawn beside it read as two valves.
    assert not any(draw_finish(np.random.default_rng(s), "n95", 1.0, True).valve for s in range(200))


def test_realistic_masks_keep_the_mask_exact_and_are_byte_reproducible(synthetic_landmarks, skin_image):
    landmarks = synthetic_landmarks()
    config = MaskConfig(mask_type="random", color="random", pattern="random")
    colours = set()
    for seed in range(12):
        a = apply_mask(skin_image, landmarks, config, seed=seed)
        b = apply_mask(skin_image, landmarks, config, seed=seed)
        assert (
            a.image.tobytes() == b.image.tobytes()
            and a.mask.tobytes() == b.mask.tobytes()
            and a.meta == b.meta
        )
        # The image changes only under the mask and (faintly) its anti-aliased rim, as without realism; the
        # dataset's stored mask adds every changed pixel (m2u.datasets.work).
        changed = np.abs(a.image.astype(int) - skin_image.astype(int)).max(axis=2) > 8
        rim_or_mask = cv2.dilate(a.mask, np.ones((5, 5), np.uint8)) > 0
        assert not (changed & ~rim_or_mask).any()
        assert a.meta["finish"] is not None and a.meta["realism"] == 1.0
        colours.add(a.meta["color"])
    assert len(colours) >= 3


def test_realism_zero_is_the_clean_template_and_realism_changes_the_fabric(synthetic_landmarks, skin_image):
    landmarks = synthetic_landmarks()
    clean = apply_mask(skin_image, landmarks, MaskConfig(mask_type="cloth", realism=0.0), seed=4)
    real = apply_mask(skin_image, landmarks, MaskConfig(mask_type="cloth", realism=1.0), seed=4)
    assert clean.meta["finish"] is None
    inside = (clean.mask > 0) & (real.mask > 0)
    assert np.abs(real.image[inside].astype(int) - clean.image[inside].astype(int)).mean() > 1.0
    with pytest.raises(ValueError, match="realism"):
        MaskConfig(realism=1.5)


def test_dark_loops_follow_a_dark_fabric(synthetic_landmarks, skin_image):
    landmarks = synthetic_landmarks()
    config = MaskConfig(mask_type="surgical", color="black", color_weight=1.0, lighting=0.0)
    result = apply_mask(skin_image, landmarks, config, seed=0)
    # The loops leave the body sideways, outside the jaw: there every masked pixel is a loop, and it is dark.
    loops = (result.mask > 0).copy()
    loops[:, 70:186] = False
    assert loops.sum() > 10
    assert result.image[loops].mean() < 90


def test_a_print_is_drawn_per_face_from_the_seed_and_leaves_the_mask_exact(synthetic_landmarks, skin_image):
    from m2u.masking.appearance import pattern_texture

    landmarks = synthetic_landmarks()
    plain_config = MaskConfig(mask_type="cloth", realism=0.0)
    printed_config = dataclasses.replace(plain_config, pattern="print", pattern_weight=1.0)
    plain = apply_mask(skin_image, landmarks, plain_config, seed=3)
    first = apply_mask(skin_image, landmarks, printed_config, seed=3)
    again = apply_mask(skin_image, landmarks, printed_config, seed=3)
    other = apply_mask(skin_image, landmarks, printed_config, seed=4)
    assert first.image.tobytes() == again.image.tobytes() and first.meta == again.meta
    assert first.meta["pattern"].startswith("print-") and first.meta["pattern"] != other.meta["pattern"]
    assert first.mask.tobytes() == plain.mask.tobytes()  # the ground truth is the geometry's alone
    inside = first.mask > 0
    assert not np.array_equal(first.image[inside], other.image[inside])
    # Several inks, not one colour multiplied: at least two clearly different colours fill the mask.
    colours = np.unique((first.image[inside] // 48).reshape(-1, 3), axis=0, return_counts=True)[1]
    assert (colours > 0.03 * inside.sum()).sum() >= 2
    # Its name redraws it, as MaskConfig and the texture cache take it.
    redrawn = apply_mask(
        skin_image, landmarks, dataclasses.replace(printed_config, pattern=first.meta["pattern"]), seed=3
    )
    assert redrawn.mask.tobytes() == first.mask.tobytes()
    texture, multiply = pattern_texture(first.meta["pattern"], 96, 64)
    assert not multiply and texture.shape == (64, 96, 3)
    with pytest.raises(ValueError, match="print"):
        MaskConfig(pattern="print-x")


def test_realistic_random_patterns_include_prints_and_realism_zero_keeps_the_single_inks(
    synthetic_landmarks, skin_image
):
    landmarks = synthetic_landmarks()
    seen = {"real": [], "clean": []}
    for seed in range(40):
        for name, realism in (("real", 1.0), ("clean", 0.0)):
            config = MaskConfig(mask_type="cloth", pattern="random", realism=realism, verify=False)
            seen[name].append(apply_mask(skin_image, landmarks, config, seed=seed).meta["pattern"])
    prints = [p for p in seen["real"] if p and p.startswith("print-")]
    assert len(prints) >= 2 and None in seen["real"]  # mostly plain, some printed, some of them prints
    assert all(p in ("stripes", "dots", "check", "camo", "floral") for p in seen["clean"])


def test_a_drawn_gas_mask_keeps_its_own_rubber_grey():
    """Pastel and printed respirators looked like toys: with realism a drawn colour or print never reaches a gas
    mask (one the user names still does), while the other types keep their draws."""
    from m2u.masking.render import MaskConfig, _resolve

    drawn = MaskConfig(mask_type="gas", color="random", pattern="random")
    assert drawn.realism > 0
    assert all(_resolve(drawn, np.random.default_rng(s))[1:3] == (None, None) for s in range(40))
    named = MaskConfig(mask_type="gas", color="red", pattern="dots")
    assert _resolve(named, np.random.default_rng(0))[1:3] != (None, None)
    cloth = MaskConfig(mask_type="cloth", color="random", pattern="random")
    assert any(_resolve(cloth, np.random.default_rng(s))[1] is not None for s in range(40))


def test_patchwork_cells_have_straight_edges_at_full_size():
    from m2u.masking.appearance import TEXTURE_HEIGHT, TEXTURE_WIDTH, nearest_centre_cells

    rng = np.random.default_rng(0)
    centres = rng.uniform(0, 1, (40, 2)) * (TEXTURE_WIDTH, TEXTURE_HEIGHT)
    cells = nearest_centre_cells(centres, np.arange(40), 384, 256)
    # Every pixel takes the value of a centre as near as its nearest one, give or take a pixel: OpenCV's labels
    # follow a 5x5 distance mask, so an edge may wander by up to two pixels (checked against a brute-force search).
    y, x = np.mgrid[0:256, 0:384]
    at = (centres * (384 / TEXTURE_WIDTH, 256 / TEXTURE_HEIGHT)).astype(int)
    distance = np.hypot(x[..., None] - at[:, 0], y[..., None] - at[:, 1])
    taken = np.take_along_axis(distance, cells[..., None], axis=-1)[..., 0]
    assert (taken - distance.min(-1)).max() <= 2.0 and (cells == distance.argmin(-1)).mean() > 0.97
    # Edges cross the rows anywhere, not only every 8 pixels (the enlarged coarse grid of render version 4).
    steps = np.flatnonzero(np.diff(cells, axis=1).any(axis=0)) + 1
    assert len(steps) > 100 and (steps % 8 == 0).mean() < 0.3
