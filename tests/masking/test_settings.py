"""Masking settings: the colour weight of random colours, seeds, the ranges of PlacementConfig and DetectorConfig,
and placement given as a mapping (config files, `mask_options`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from m2u.core.errors import SettingError
from m2u.masking import DetectorConfig, MaskConfig, PlacementConfig, apply_mask
from m2u.masking.cli import main
from m2u.masking.render import DEFAULT_COLOR_WEIGHT
from m2u.masking.sheet import render_contact_sheet


def _one_line_error(make, setting: str) -> SettingError:
    with pytest.raises(SettingError) as caught:
        make()
    assert caught.value.setting == setting, str(caught.value)
    assert len(str(caught.value).splitlines()) == 1
    return caught.value


# --- colour weight with color="random" ---------------------------------------------------------------------------


def test_a_given_colour_weight_holds_for_random_colours(synthetic_landmarks, skin_image):
    lm = synthetic_landmarks()
    drawn_weights, differs = [], 0
    for seed in range(8):
        drawn = apply_mask(skin_image, lm, MaskConfig(mask_type="cloth", color="random"), seed)
        given = apply_mask(
            skin_image, lm, MaskConfig(mask_type="cloth", color="random", color_weight=0.2), seed
        )
        # The same colour is drawn either way (the weight is drawn too, so no later draw shifts) ...
        assert given.meta["color"] == drawn.meta["color"]
        assert np.array_equal(given.mask, drawn.mask)
        # ... and the weight given is the one used, where without one each mask gets its realistic weight.
        assert given.meta["color_weight"] == 0.2
        drawn_weights.append(drawn.meta["color_weight"])
        differs += drawn.meta["color"] is not None and not np.array_equal(given.image, drawn.image)
    assert all(0.85 <= w <= 1.0 for w in drawn_weights)
    assert differs >= 3


def test_a_given_pattern_weight_holds_for_drawn_prints(synthetic_landmarks, skin_image):
    """`--pattern random` draws an opaque print on some masks at its own weight: a weight given holds there too."""
    from m2u.masking.realism import REAL_PRINT_WEIGHT

    lm = synthetic_landmarks()
    prints = 0
    for seed in range(40):
        drawn = apply_mask(skin_image, lm, MaskConfig(mask_type="cloth", pattern="random"), seed)
        given = apply_mask(
            skin_image, lm, MaskConfig(mask_type="cloth", pattern="random", pattern_weight=0.1), seed
        )
        assert given.meta["pattern"] == drawn.meta["pattern"]  # the same draws either way
        if drawn.meta["pattern"]:
            assert given.meta["pattern_weight"] == 0.1
        if str(drawn.meta["pattern"]).startswith("print-"):
            prints += 1
            assert drawn.meta["pattern_weight"] == REAL_PRINT_WEIGHT
    assert prints >= 1


def test_the_default_colour_weight_is_unchanged_for_named_colours(synthetic_landmarks, skin_image):
    lm = synthetic_landmarks()
    assert MaskConfig().color_weight is None
    unset = apply_mask(skin_image, lm, MaskConfig(color="black"), seed=3)
    explicit = apply_mask(
        skin_image, lm, MaskConfig(color="black", color_weight=DEFAULT_COLOR_WEIGHT), seed=3
    )
    assert unset.meta["color_weight"] == DEFAULT_COLOR_WEIGHT == 0.5
    assert np.array_equal(unset.image, explicit.image)
    # realism 0 (the colours of earlier versions): random colours took the configured weight, and still do
    plain = apply_mask(skin_image, lm, MaskConfig(color="random", realism=0.0), seed=3)
    assert plain.meta["color_weight"] == DEFAULT_COLOR_WEIGHT


def test_the_cli_colour_weight_reaches_random_colours(tmp_path, celeba_first):
    (photo,) = celeba_first(1)
    out = tmp_path / "out"
    args = [
        str(photo),
        "-o",
        str(out),
        "--color",
        "random",
        "--color-weight",
        "0.3",
        "--seed",
        "2",
        "--quiet",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (meta,) = out.glob("*.json")
    assert json.loads(meta.read_text())["faces"][0]["color_weight"] == 0.3
    help_text = CliRunner().invoke(main, ["--help"]).output
    assert "random ones included" in " ".join(help_text.split())


# --- seeds -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1.5, 3.0, True, "3", None])
def test_a_seed_must_be_an_integer(seed, synthetic_landmarks, skin_image):
    error = _one_line_error(lambda: apply_mask(skin_image, synthetic_landmarks(), MaskConfig(), seed), "seed")
    assert str(error) == f"seed: must be an integer, got {seed!r}"
    _one_line_error(lambda: render_contact_sheet(skin_image, _face(synthetic_landmarks()), seed=seed), "seed")


def test_a_numpy_integer_seed_is_the_same_seed(synthetic_landmarks, skin_image):
    config = MaskConfig(mask_type="random", color="random", pattern="random")
    lm = synthetic_landmarks()
    assert np.array_equal(
        apply_mask(skin_image, lm, config, np.int64(7)).image, apply_mask(skin_image, lm, config, 7).image
    )


def test_a_negative_seed_is_a_seed_on_every_path(synthetic_landmarks, skin_image):
    """m2u-mask and m2u-make-dataset take --seed -1 (they hash it per face); apply_mask and the contact sheet
    refused it in numpy's words, then in their own: one rule now, any integer, reproducible."""
    lm = synthetic_landmarks()
    first = apply_mask(skin_image, lm, MaskConfig(), -1)
    assert np.array_equal(first.image, apply_mask(skin_image, lm, MaskConfig(), -1).image)
    sheet = render_contact_sheet(skin_image, _face(lm), seed=-1)
    assert np.array_equal(sheet, render_contact_sheet(skin_image, _face(lm), seed=-1))


def _face(landmarks, **kw):
    from m2u.masking import Face

    return Face.from_landmarks(landmarks, **kw)


# --- PlacementConfig and DetectorConfig ranges -------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("jaw_margin", -0.05),
        ("jaw_margin", 1.5),
        ("bridge_fraction", -0.1),
        ("bridge_fraction", 1.2),
        ("eye_clearance", -0.01),
        ("top_drop", -0.1),
        ("feature_clearance", -0.2),
        ("min_cell_area_ratio", 1.0),
        ("min_cell_area_ratio", -0.1),
        ("cols", 1),
        ("rows", 1),
        ("min_eye_distance_px", 0.5),
    ],
)
def test_placement_values_out_of_range_are_refused(field, value):
    error = _one_line_error(lambda: PlacementConfig(**{field: value}), field)
    assert repr(value) in str(error)


def test_placement_bounds_are_accepted_and_lists_become_tuples():
    PlacementConfig(
        jaw_margin=0.0, bridge_fraction=1.0, eye_clearance=0.0, top_drop=0.0, feature_clearance=0.0
    )
    PlacementConfig(jaw_margin=1.0, bridge_fraction=0.0, min_cell_area_ratio=0.0)
    config = PlacementConfig(area_range=[0.3, 1.2])  # as a config file gives it
    assert config.area_range == (0.3, 1.2) and hash(config) == hash(PlacementConfig(area_range=(0.3, 1.2)))


@pytest.mark.parametrize(
    "options, field",
    [
        ({"upsample": 3, "max_upsample": 2}, "max_upsample"),
        ({"upsample": 5, "max_upsample": 5}, "upsample"),
        ({"max_upsample": -1, "upsample": 0}, "max_upsample"),
        ({"retry_threshold": 0.5}, "retry_threshold"),
        ({"hog_threshold": -1.0}, "retry_threshold"),  # below the retry's -0.4
        ({"upside_down_margin": -0.1}, "upside_down_margin"),
        ({"blazeface_max_side": 0}, "blazeface_max_side"),
        ({"max_side": 10}, "max_side"),
        ({"coarse_scale": 0.1}, "coarse_scale"),
        ({"blazeface_threshold": 1.0}, "blazeface_threshold"),
    ],
)
def test_detector_values_out_of_range_are_refused(options, field):
    _one_line_error(lambda: DetectorConfig(**options), field)


def test_upsample_alone_is_a_whole_setting():
    """`--detector-option upsample=2` was refused over `max_upsample`'s default 1, a value the user never gave:
    unset, it follows `upsample` as m2u-mask's --upsample sets it."""
    assert DetectorConfig(upsample=2).max_upsample == 2
    assert (
        DetectorConfig().max_upsample == 1
        and DetectorConfig(upsample=0).passes() == DetectorConfig(max_upsample=1).passes()
    )


def test_detector_settings_that_name_another_say_it_in_backticks():
    assert "`upsample` (3)" in str(
        _one_line_error(lambda: DetectorConfig(upsample=3, max_upsample=2), "max_upsample")
    )
    error = _one_line_error(lambda: DetectorConfig(retry_threshold=0.5), "retry_threshold")
    assert "`hog_threshold`" in str(error)
    # the bounds themselves are fine
    DetectorConfig(
        upsample=2, max_upsample=2, retry_threshold=0.0, upside_down_margin=0.0, blazeface_max_side=1
    )


# --- placement as a mapping ----------------------------------------------------------------------------------------


def test_placement_may_be_a_mapping(synthetic_landmarks, skin_image):
    from_mapping = MaskConfig(placement={"eye_clearance": 0.3, "area_range": [0.3, 1.2]})
    built = MaskConfig(placement=PlacementConfig(eye_clearance=0.3, area_range=(0.3, 1.2)))
    assert from_mapping == built
    lm = synthetic_landmarks()
    a, b = apply_mask(skin_image, lm, from_mapping, 1), apply_mask(skin_image, lm, built, 1)
    assert np.array_equal(a.image, b.image) and a.meta["placement"]["eye_clearance"] == 0.3


def test_a_placement_mapping_refuses_unknown_keys_and_bad_values_by_name():
    """Named as `placement` in words, not as a setting a command would turn into a --placement flag (none has
    one: it comes in m2u-make-dataset's --mask-option)."""
    for bad, said in (
        ({"eye_clearence": 0.3}, "unknown option(s) eye_clearence"),
        ({"eye_clearance": -1.0}, "eye_clearance: must be >= 0.0"),
        ("tight", 'must be a mapping of PlacementConfig\'s fields such as {"eye_clearance": 0.2}'),
    ):
        with pytest.raises(ValueError) as caught:
            MaskConfig(placement=bad)
        assert not isinstance(caught.value, SettingError) and "`placement`" in str(caught.value)
        assert said in str(caught.value) and len(str(caught.value).splitlines()) == 1


def test_mask_options_take_placement_as_a_mapping(synthetic_landmarks, skin_image):
    from m2u.datasets.config import BuildConfig
    from m2u.datasets.work import make_masker

    options = {"mask_type": "surgical", "placement": {"jaw_margin": 0.1}}
    mask = make_masker(BuildConfig(mask_options=options))
    _, _, meta = mask(skin_image, synthetic_landmarks(), 0)
    assert meta["placement"]["jaw_margin"] == 0.1
    from m2u.datasets.config import BuildError

    with pytest.raises(BuildError, match=r"^mask options: `placement`: unknown option\(s\) jaw"):
        make_masker(BuildConfig(mask_options={"placement": {"jaw": 0.1}}))
