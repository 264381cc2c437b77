"""apply_mask on synthetic faces: geometry, determinism, degenerate input, appearance."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from m2u.masking import MASK_TYPES, MaskConfig, MaskingError, apply_mask
from m2u.masking.geometry import EYES, MOUTH, NOSTRILS, build_mesh


def _assert_geometry(result, landmarks):
    pts = np.round(landmarks).astype(int)
    covered = result.mask[pts[:, 1], pts[:, 0]] > 0
    assert covered[NOSTRILS].all() and covered[MOUTH].all()
    assert not covered[EYES].any()
    count, _ = cv2.connectedComponents(result.mask, connectivity=8)
    assert count - 1 == 1


@pytest.mark.parametrize("mask_type", MASK_TYPES)
def test_every_type_covers_nose_and_mouth_not_eyes(mask_type, synthetic_landmarks, skin_image):
    landmarks = synthetic_landmarks()
    result = apply_mask(skin_image, landmarks, MaskConfig(mask_type=mask_type, verify=False), seed=1)
    assert result.image.shape == skin_image.shape and result.image.dtype == np.uint8
    assert result.mask.shape == skin_image.shape[:2] and set(np.unique(result.mask)) <= {0, 255}
    _assert_geometry(result, landmarks)
    # The image changes exactly where the mask is (and only faintly at its soft rim).
    changed = np.abs(result.image.astype(int) - skin_image.astype(int)).max(axis=2) > 8
    assert changed[result.mask > 0].mean() > 0.9
    assert (changed & (cv2.dilate(result.mask, np.ones((5, 5), np.uint8)) == 0)).sum() == 0
    json.dumps(result.meta)  # JSON-serialisable
    assert result.meta["type"] == mask_type and len(result.meta["landmarks"]) == 68


@pytest.mark.parametrize("mask_type", ["surgical", "cloth", "kn95", "n95"])
def test_masks_reach_up_the_nose_and_under_the_eyes_as_real_ones_do(
    mask_type, synthetic_landmarks, skin_image
):
    """PlacementConfig's defaults (render version 2 on; its middle, without the per-face height of version 3) put
    the top edge where real masks' labels have it (benchmarks/mask_placement.py): over the upper nose bridge and
    close under the eyes, which the earlier defaults left bare, and never over an eye."""
    from m2u.masking.geometry import PlacementConfig
    from m2u.masking.render import RENDER_VERSION

    landmarks = synthetic_landmarks()  # eye distance 60 px, origin between the eyes
    eye_distance = float(np.hypot(*(landmarks[42:48].mean(0) - landmarks[36:42].mean(0))))
    upper_bridge = landmarks[27] + 0.4 * (landmarks[30] - landmarks[27])
    under_eyes = landmarks[[40, 47]] + [0.0, 0.2 * eye_distance]  # below the lower eyelids
    probes = np.round(np.vstack([upper_bridge, under_eyes])).astype(int)

    def covered(placement):
        config = MaskConfig(mask_type=mask_type, straps=False, placement=placement)
        result = apply_mask(skin_image, landmarks, config, seed=3)
        _assert_geometry(result, landmarks)
        return result.mask[probes[:, 1], probes[:, 0]] > 0, result.meta

    now, meta = covered(PlacementConfig(height_spread=(0.0, 0.0)))
    earlier, _ = covered(
        {
            "jaw_margin": 0.07,
            "bridge_fraction": 0.42,
            "eye_clearance": 0.16,
            "top_drop": 0.06,
            "height_spread": [0, 0],
        }
    )
    assert now.all() and not earlier.any()
    assert meta["render_version"] == RENDER_VERSION and meta["placement"]["bridge_fraction"] == 0.14


@pytest.mark.parametrize("roll, yaw", [(30.0, 0.0), (-25.0, 0.0), (0.0, 0.5), (0.0, -0.6), (15.0, 0.4)])
def test_rolled_and_turned_faces(roll, yaw, synthetic_landmarks, skin_image):
    landmarks = synthetic_landmarks(roll_degrees=roll, yaw=yaw)
    result = apply_mask(skin_image, landmarks, MaskConfig(verify=False), seed=0)
    _assert_geometry(result, landmarks)
    expected_pose = "front" if abs(yaw) < 0.3 else ("right" if yaw > 0 else "left")
    assert result.meta["pose"] == expected_pose


def test_same_seed_is_byte_identical_and_random_uses_the_seed(synthetic_landmarks, skin_image):
    landmarks = synthetic_landmarks()
    config = MaskConfig(mask_type="random", color="random", pattern="random")
    a = apply_mask(skin_image, landmarks, config, seed=7)
    b = apply_mask(skin_image, landmarks, config, seed=7)
    assert (
        a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes() and a.meta == b.meta
    )
    picks = {
        (r.meta["type"], r.meta["color"], r.meta["pattern"])
        for r in (apply_mask(skin_image, landmarks, config, seed=s) for s in range(12))
    }
    assert len(picks) > 3
    assert {t for t, _, _ in picks} <= set(MASK_TYPES)


def test_works_on_an_aligned_crop_from_landmarks_alone(synthetic_landmarks, skin_image):
    # The dataset builder passes a bare (68, 2) array for a 256x256 aligned crop: no detector box needed.
    landmarks = synthetic_landmarks(center=(128, 100), eye_distance=70)
    result = apply_mask(skin_image, np.asarray(landmarks, np.float64), MaskConfig(), seed=3)
    assert result.mask.any()


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda lm: np.full_like(lm, 50.0), "collapsed"),
        (lambda lm: lm * 0.05, "too small"),
        (lambda lm: np.where(np.arange(68)[:, None] == 30, np.nan, lm), "NaN"),
    ],
)
def test_degenerate_landmarks_raise_with_a_reason(damage, reason, synthetic_landmarks, skin_image):
    with pytest.raises(MaskingError, match=reason):
        apply_mask(skin_image, damage(synthetic_landmarks()), MaskConfig(), seed=0)


@pytest.mark.parametrize(
    "landmarks, said",
    [
        ("hello", "expected 68 landmarks of shape (68, 2) as numbers, got 'hello'"),
        (np.full((68, 2), "1.5"), "expected 68 landmarks of shape (68, 2) as numbers, got array("),
        ([{"x": 1}] * 68, "expected 68 landmarks of shape (68, 2) as numbers, got [{'x': 1}, "),
        ("huge", "landmarks contain coordinates beyond 1e+09 px from the origin"),
    ],
)
def test_landmarks_that_are_no_pixels_are_one_line_before_any_drawing(
    landmarks, said, synthetic_landmarks, skin_image, recwarn
):
    """A string gave numpy's own "could not convert string to float: 'hello'", and landmarks about 1e20 numpy's
    RuntimeWarning (an overflowing cast to int) before the mask was refused as falling outside the image."""
    if isinstance(landmarks, str) and landmarks == "huge":
        landmarks = synthetic_landmarks().astype(np.float64) * 1e20
    with pytest.raises(MaskingError) as refused:
        apply_mask(skin_image, landmarks, MaskConfig(), seed=0)
    assert str(refused.value).startswith(said) and "\n" not in str(refused.value)
    assert not recwarn.list, [str(w.message) for w in recwarn.list]


def test_folded_jaw_is_refused_or_repaired_never_broken(synthetic_landmarks, skin_image):
    landmarks = synthetic_landmarks()
    # Swap the two halves of the jaw: the contour crosses itself, as a failed landmark fit can.
    folded = landmarks.copy()
    folded[0:8], folded[9:17] = landmarks[9:17][::-1].copy(), landmarks[0:8][::-1].copy()
    try:
        result = apply_mask(skin_image, folded, MaskConfig(), seed=0)
    except MaskingError as exc:
        assert exc.reason
    else:
        assert result.meta["fallback"] is not None
        _assert_geometry(result, folded)


@pytest.mark.parametrize("center", [(128, 250), (255, 255)])
def test_a_face_whose_mask_body_lies_beyond_the_image_edge_is_drawn_or_refused_never_a_crash(
    center, synthetic_landmarks, skin_image
):
    """Eyes on the bottom (or bottom-right) edge: the mask body lies below the image while its straps reach in.
    The warp of a mesh wholly outside the box raised ValueError ("negative dimensions") or OpenCV's layout error
    for seeds 1 and 5 of these (an error row for the whole photo in m2u-mask, its other faces lost)."""
    landmarks = synthetic_landmarks(center=center)
    for seed in range(6):
        try:
            result = apply_mask(skin_image, landmarks, MaskConfig(), seed=seed)
        except MaskingError as exc:
            assert exc.reason
            continue
        changed = np.any(result.image != skin_image, axis=2)
        assert not np.any((result.mask > 0) & ~changed)


def test_mesh_has_no_fold_overs_and_records_anchors(synthetic_landmarks):
    from m2u.masking.geometry import cell_areas

    mesh = build_mesh(synthetic_landmarks(yaw=0.4))
    frame_areas = cell_areas(mesh.grid)
    assert (frame_areas > 0).all() or (frame_areas < 0).all()
    assert set(mesh.anchors) == set("abcdef")
    # b (top centre) lies between the eyes' bottom and the nose tip.
    lm = synthetic_landmarks(yaw=0.4)
    assert lm[EYES][:, 1].max() < mesh.anchors["b"][1] < lm[30, 1]


def test_alpha_blended_edges_have_no_halo(synthetic_landmarks):
    # A dark mask on a mid-grey photo: additive compositing (MaskTheFace) leaves edge pixels brighter than both.
    grey = np.full((256, 256, 3), 120, np.uint8)
    result = apply_mask(
        grey,
        synthetic_landmarks(),
        # realism 0: a valve (light plastic) would rightly be brighter than the grey; the edges are what is tested.
        MaskConfig(
            mask_type="cloth", color="black", color_weight=1.0, lighting=0.0, straps=False, realism=0.0
        ),
        seed=0,
    )
    assert result.image.max() <= 120
    rim = (cv2.dilate(result.mask, np.ones((3, 3), np.uint8)) > 0) & (result.mask == 0)
    assert rim.any() and (result.image[rim] <= 120).all()


def test_default_colours_are_not_tinted_blue(synthetic_landmarks, skin_image):
    for mask_type in ("surgical", "n95", "kn95"):
        result = apply_mask(skin_image, synthetic_landmarks(), MaskConfig(mask_type=mask_type), seed=0)
        r, g, b = result.image[result.mask > 0].reshape(-1, 3).mean(axis=0)
        assert b - r < 10, (mask_type, r, g, b)


def test_colour_and_pattern_weights_change_the_fabric(synthetic_landmarks, skin_image):
    lm = synthetic_landmarks()
    plain = apply_mask(skin_image, lm, MaskConfig(mask_type="cloth"), seed=0)
    red = apply_mask(skin_image, lm, MaskConfig(mask_type="cloth", color="#ff0000", color_weight=1.0), seed=0)
    half = apply_mask(
        skin_image, lm, MaskConfig(mask_type="cloth", color="#ff0000", color_weight=0.5), seed=0
    )
    inside = plain.mask > 0
    reds = [img.image[inside][:, 0].astype(float).mean() for img in (plain, half, red)]
    assert reds[0] < reds[1] < reds[2]
    striped = apply_mask(
        skin_image,
        lm,
        MaskConfig(mask_type="cloth", color="white", color_weight=1.0, pattern="stripes", pattern_weight=1.0),
        seed=0,
    )
    white = apply_mask(skin_image, lm, MaskConfig(mask_type="cloth", color="white", color_weight=1.0), seed=0)
    assert striped.image[inside].std() > white.image[inside].std() + 5


def test_lighting_follows_the_photo(synthetic_landmarks):
    lm = synthetic_landmarks()
    bright = np.full((256, 256, 3), 220, np.uint8)
    dark = np.full((256, 256, 3), 50, np.uint8)
    config = MaskConfig(mask_type="surgical")
    on_bright = apply_mask(bright, lm, config, seed=0)
    on_dark = apply_mask(dark, lm, config, seed=0)
    inside = on_bright.mask > 0
    assert on_dark.image[inside].mean() < on_bright.image[inside].mean() - 20


def test_bad_config_and_image_are_clear_errors(synthetic_landmarks):
    with pytest.raises(ValueError, match="unknown mask type"):
        MaskConfig(mask_type="balaclava")
    with pytest.raises(ValueError, match="colour"):
        MaskConfig(color="not-a-colour")
    with pytest.raises(ValueError, match="color_weight"):
        MaskConfig(color_weight=1.5)
    with pytest.raises(ValueError, match="uint8 RGB"):
        apply_mask(np.zeros((64, 64), np.uint8), synthetic_landmarks(), MaskConfig(), seed=0)


@pytest.mark.parametrize("config", [None, {"mask_type": "n95"}, "n95"])
def test_a_config_that_is_not_a_config_object_is_a_setting_error(config, synthetic_landmarks, skin_image):
    """apply_mask(image, face, None) or a dict of options, and FaceDetector({"model": "hog"}), failed deep inside
    with AttributeError ('dict' object has no attribute 'mask_type')."""
    from m2u.core.errors import SettingError
    from m2u.masking import FaceDetector

    with pytest.raises(SettingError, match="config: must be MaskConfig, got"):
        apply_mask(skin_image, synthetic_landmarks(), config, seed=0)
    if config is not None:  # None is the default detector
        with pytest.raises(SettingError, match="config: must be DetectorConfig or None, got"):
            FaceDetector(config)


def test_straps_of_two_colours_keep_their_colours_and_the_coverage(
    synthetic_landmarks, skin_image, monkeypatch
):
    # Shipped templates give all their straps one colour (drawn as a coverage image and a constant); a pack or a
    # custom template may not, and goes through the per-colour compositing instead: same coverage, own colours.
    from m2u.masking import render
    from m2u.masking.templates import get_template

    base = get_template("surgical")
    upper, lower = base.straps
    red, blue = (0.9, 0.1, 0.1), (0.1, 0.1, 0.9)
    landmarks = synthetic_landmarks()
    results = {}
    for upper_rgb, lower_rgb in ((red, red), (red, blue), (blue, blue)):
        template = dataclasses.replace(
            base,
            straps=(dataclasses.replace(upper, rgb=upper_rgb), dataclasses.replace(lower, rgb=lower_rgb)),
        )
        monkeypatch.setattr(render, "get_template", lambda _type, template=template: template)
        # realism 0: loops cut short by hair (realism) would leave fewer loop pixels to compare.
        results[upper_rgb, lower_rgb] = apply_mask(
            skin_image, landmarks, MaskConfig(lighting=0.0, realism=0.0), seed=0
        )
    mixed = results[red, blue]
    assert all(np.array_equal(r.mask, mixed.mask) for r in results.values())
    # Against all red, the two-colour mask differs on the lower loops, which are blue; against all blue, on the
    # upper loops, which are red.
    for same_as, colour_channel, other_channel in ((results[red, red], 2, 0), (results[blue, blue], 0, 2)):
        differs = np.any(same_as.image != mixed.image, axis=-1)
        assert differs.sum() > 50
        pixels = mixed.image[differs].astype(int)
        assert (pixels[:, colour_channel] - pixels[:, other_channel]).mean() > 40


def test_each_face_wears_its_mask_higher_or_lower_by_its_seed(synthetic_landmarks, skin_image):
    """Render version 3: how high a face wears its mask is drawn from its seed (PlacementConfig.height_spread), the
    same for the same seed, spread both ways and further down than up. Worn lower the whole top edge drops; worn
    higher only the middle rides up the bridge (never nearer the inner eye corners than the clearance), the cheeks
    stay; worn lower it stops where the nose's wings would show; no spread is the middle itself."""
    from m2u.masking.geometry import PlacementConfig, draw_top_shift

    landmarks = synthetic_landmarks()  # upright: image y is the face's y
    config = MaskConfig(mask_type="surgical", straps=False)
    shifts = [apply_mask(skin_image, landmarks, config, seed=seed).meta["top_shift"] for seed in range(60)]
    assert shifts[:5] == [
        apply_mask(skin_image, landmarks, config, seed=s).meta["top_shift"] for s in range(5)
    ]
    above, below = PlacementConfig().height_spread
    assert -2.5 * above <= min(shifts) < 0 < max(shifts) <= 2.5 * below
    assert np.percentile(shifts, 90) > -np.percentile(shifts, 10)  # further down than up
    assert draw_top_shift(np.random.default_rng(7), PlacementConfig(height_spread=(0, 0))) == 0.0
    for bad in ((-0.1, 0.1), (0.1,), (0.1, 0.2, 0.3)):
        with pytest.raises(ValueError, match="height_spread"):
            PlacementConfig(height_spread=bad)

    placement = PlacementConfig()
    eye_x = landmarks[36:42, 0].mean()
    middle_x = landmarks[27, 0]

    def top_edge(shift):
        top = build_mesh(landmarks, placement, shift).grid[0]  # the top row, a -> b -> c, left to right
        return float(np.interp(middle_x, top[:, 0], top[:, 1])), float(np.interp(eye_x, top[:, 0], top[:, 1]))

    middle, cheek = top_edge(0.0)
    lower_middle, lower_cheek = top_edge(0.2)
    higher_middle, higher_cheek = top_edge(-0.2)
    eye_distance = 60.0
    assert lower_middle > middle + 0.15 * eye_distance and lower_cheek > cheek + 0.15 * eye_distance
    assert higher_middle < middle - 0.05 * eye_distance and abs(higher_cheek - cheek) < 0.05 * eye_distance
    # Never nearer the inner eye corners than the clearance, never past the nose's wings (as far as they clear it).
    inner_corners = landmarks[[39, 42], 1].max() + placement.eye_clearance * eye_distance
    assert top_edge(-1.0)[0] >= inner_corners - 0.5
    # The shift recorded is the one used: what the middle moved, after those limits.
    flat, raised = build_mesh(landmarks, placement, 0.0), build_mesh(landmarks, placement, -1.0)
    assert -1.0 < raised.top_shift < 0 and flat.top_shift == 0.0
    moved = raised.anchors["b"][1] - flat.anchors["b"][1]
    assert abs(moved - raised.top_shift * eye_distance) < 0.01
    nose_limit = landmarks[31:36, 1].min() - placement.feature_clearance * eye_distance
    assert lower_middle < top_edge(2.0)[0] <= nose_limit + 0.5


def _verify_refusing_first(monkeypatch) -> list[int]:
    """render._verify made to refuse its first mask (as covering an eye) and check the rest as it does; the list
    returned gains an item per check."""
    from m2u.masking import render

    real_verify = render._verify
    checked: list[int] = []

    def refuses_first(mask, points, box):
        checked.append(1)
        if len(checked) == 1:
            raise MaskingError("mask covers eye landmarks [39]")
        real_verify(mask, points, box)

    monkeypatch.setattr(render, "_verify", refuses_first)
    return checked


def test_a_shifted_mask_that_fails_the_render_checks_is_drawn_unshifted_before_the_face_is_refused(
    synthetic_landmarks, skin_image, monkeypatch
):
    import m2u.masking.render as render

    landmarks = synthetic_landmarks()
    config = MaskConfig(mask_type="surgical", straps=False)
    seed = next(s for s in range(50) if apply_mask(skin_image, landmarks, config, seed=s).meta["top_shift"])
    shifted = apply_mask(skin_image, landmarks, config, seed=seed)
    checked = _verify_refusing_first(monkeypatch)
    retried = apply_mask(skin_image, landmarks, config, seed=seed)
    assert len(checked) == 2 and retried.meta["fallback"] == "unshifted" and retried.meta["top_shift"] == 0.0
    assert retried.mask.tobytes() != shifted.mask.tobytes()
    assert retried.meta["color"] == shifted.meta["color"]  # the same draws otherwise
    monkeypatch.setattr(render, "_verify", lambda *a: (_ for _ in ()).throw(MaskingError("always")))
    with pytest.raises(MaskingError, match="always"):
        apply_mask(skin_image, landmarks, config, seed=seed)


@pytest.mark.parametrize("name", ["3055_005574", "2138_011302"])
def test_a_head_strap_stops_short_of_the_eyes(celeba_dir, name):
    """On these half-turned faces the gas mask's head strap bound for the far ear ran to the outer eye corner."""
    from pathlib import Path

    from m2u.masking import DetectorConfig, FaceDetector, read_image
    from m2u.masking.batch import face_seed

    photo = celeba_dir / f"{name}.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} not in the shared photos")
    image = read_image(photo)
    face = FaceDetector(DetectorConfig()).detect(image)[0]
    seed = face_seed(0, Path(name), 0)
    config = MaskConfig(mask_type="gas", color="random")
    straps = (apply_mask(image, face, config, seed).mask > 0) & ~(
        apply_mask(image, face, dataclasses.replace(config, straps=False), seed).mask > 0
    )
    points = face.landmarks
    eye_distance = float(np.linalg.norm(points[42:48].mean(0) - points[36:42].mean(0)))
    eyes = np.zeros(image.shape[:2], np.uint8)
    for eye in (points[36:42], points[42:48]):
        cv2.fillConvexPoly(eyes, cv2.convexHull(eye.astype(np.float32)).astype(np.int32), 1)
    reach = int(0.3 * eye_distance) | 1
    near = cv2.dilate(eyes, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (reach, reach))) > 0
    assert straps.any() and not (straps & near).any()


def test_a_draw_checks_the_landmarks_once_and_build_mesh_still_checks_its_own(
    synthetic_landmarks, skin_image, monkeypatch
):
    """apply_mask checked the 68 points, then build_mesh checked them again in each of its attempts (a shifted
    and an unshifted top edge: three checks of one face here). Once per draw now; build_mesh, public, still
    refuses points it is given that are not landmarks."""
    import m2u.masking.geometry as geometry
    import m2u.masking.render as render

    landmarks = synthetic_landmarks()
    config = MaskConfig(mask_type="surgical")
    seed = next(s for s in range(50) if apply_mask(skin_image, landmarks, config, seed=s).meta["top_shift"])
    calls = []
    real_check = geometry.check_landmarks

    def counted(points):
        calls.append(1)
        return real_check(points)

    monkeypatch.setattr(geometry, "check_landmarks", counted)
    monkeypatch.setattr(render, "check_landmarks", counted)
    verified = _verify_refusing_first(monkeypatch)  # the shifted mask refused: the unshifted one is drawn
    result = apply_mask(skin_image, landmarks, config, seed=seed)
    assert result.meta["fallback"] == "unshifted" and len(verified) == 2
    assert len(calls) == 1
    calls.clear()
    build_mesh(landmarks)
    assert len(calls) == 1
    broken = landmarks.astype(np.float64)
    broken[30] = np.nan
    with pytest.raises(MaskingError, match="NaN"):
        build_mesh(broken)
    with pytest.raises(MaskingError, match=r"shape \(68, 2\)"):
        build_mesh(landmarks[:60])


def test_a_face_whose_mask_body_is_mostly_beyond_the_image_edge_is_refused_not_drawn_as_straps(
    synthetic_landmarks, skin_image
):
    """A face at the image's bottom edge, cut just below the nose tip: the mask's body lay mostly below the image
    and apply_mask drew what was left of it, or only an ear loop, as a masked face (a pair whose "mask" is a
    strap). Now refused when less than MIN_VISIBLE_BODY of the body lies inside, and a body wholly outside (the
    straps alone) is refused even with `verify` off."""
    from m2u.masking.geometry import build_mesh
    from m2u.masking.render import MIN_VISIBLE_BODY, image_outline, visible_body_share

    landmarks = synthetic_landmarks()
    config = MaskConfig(mask_type="surgical")
    for bottom, body in (
        (int(landmarks[30, 1]), r"only \d+% of the mask's body"),
        (int(landmarks[EYES, 1].max()) + 1, "only its straps"),
    ):
        cut = np.ascontiguousarray(skin_image[:bottom])
        share = visible_body_share(build_mesh(landmarks).grid, image_outline(cut.shape[1], bottom))
        assert share < MIN_VISIBLE_BODY
        for seed in range(4):
            with pytest.raises(MaskingError, match=body):
                apply_mask(cut, landmarks, config, seed=seed)
        if body == "only its straps":
            with pytest.raises(MaskingError, match=body):
                apply_mask(cut, landmarks, dataclasses.replace(config, verify=False), seed=0)
        else:  # unchecked, what lies inside is drawn
            drawn = apply_mask(cut, landmarks, dataclasses.replace(config, verify=False), seed=0)
            assert drawn.mask.any()
    # Mostly inside (cut below the mouth): drawn.
    bottom = int(landmarks[57, 1]) + 4
    cut = np.ascontiguousarray(skin_image[:bottom])
    assert MIN_VISIBLE_BODY < visible_body_share(build_mesh(landmarks).grid, image_outline(256, bottom)) < 1
    result = apply_mask(cut, landmarks, config, seed=0)
    whole = apply_mask(skin_image, landmarks, config, seed=0)
    assert result.meta["mask_pixels"] > 0.5 * whole.meta["mask_pixels"]


def test_the_visible_share_of_a_body_is_its_area_on_the_photo():
    from m2u.masking.render import image_outline, visible_body_share

    rows, cols = np.meshgrid(np.linspace(10, 30, 5), np.linspace(-10.5, 29.5, 9), indexing="ij")
    grid = np.stack([cols, rows], axis=-1)  # a 40 x 20 px rectangle, x -10.5..29.5, y 10..30
    assert visible_body_share(grid, image_outline(100, 100)) == pytest.approx(
        0.75
    )  # the image starts at -0.5
    assert visible_body_share(grid, image_outline(100, 20.5)) == pytest.approx(0.75 * 0.5)  # and ends at 20
    assert visible_body_share(grid + [200, 0], image_outline(100, 100)) == 0.0
    # A photo's outline turned by 45 degrees (an aligned crop's), either way round: x + y = 20 and x - y = 20 cut
    # a corner of 50 px² each off it.
    diamond = np.array([[20.0, 0], [120, 100], [20, 200], [-80, 100]])
    for photo in (diamond, diamond[::-1]):
        assert visible_body_share(grid + [10.5, 0], photo) == pytest.approx(1 - 2 * 50 / 800)
