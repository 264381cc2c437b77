"""MaskTheFace users: its repository layout, its names (N95, KN95, all), its --code, and --contact-sheet --pack.

The pack tests arrange a copy of ../shared/mask-templates/maskthefacE like MaskTheFace's own repository
(masks/masks.cfg, masks/templates/*.png, template paths relative to the repository root) in tmp_path at test time.
"""

from __future__ import annotations

import configparser
import csv
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from m2u.masking import batch as mask_batch
from m2u.masking import cli as mask_cli
from m2u.masking.detect import DetectorConfig
from m2u.masking.geometry import MaskingError
from m2u.masking.render import MaskConfig, _code_texture, inputs_per_config, parse_mask_code
from m2u.masking.sheet import pack_variants
from m2u.masking.templates import MASK_TYPES
from m2u.masking.templates_pack import TemplatePackError, load_template_pack


@pytest.fixture
def checkout(masktheface_templates_dir: Path, tmp_path: Path) -> Path:
    """A MaskTheFace checkout as its repository lays it out, with one texture of our own (a generated check)."""
    root = tmp_path / "MaskTheFace"
    (root / "masks" / "templates").mkdir(parents=True)
    shutil.copy(masktheface_templates_dir / "masks.cfg", root / "masks" / "masks.cfg")
    for png in masktheface_templates_dir.glob("*.png"):
        shutil.copy(png, root / "masks" / "templates" / png.name)
    check = ((np.indices((64, 64)).sum(0) // 8) % 2 * 200 + 30).astype(np.uint8)
    (root / "masks" / "textures" / "check").mkdir(parents=True)
    cv2.imwrite(str(root / "masks" / "textures" / "check" / "check_1.png"), np.dstack([check] * 3))
    return root


@pytest.fixture
def face_photo(celeba_first, tmp_path: Path) -> Path:
    target = tmp_path / "in" / "face.jpg"
    target.parent.mkdir()
    shutil.copy(celeba_first(1)[0], target)
    return target


def _report(out: Path) -> list[dict[str, str]]:
    with (out / "report.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_unmodified_repository_layout_loads_from_root_folder_or_file(checkout):
    cfg_text = (checkout / "masks" / "masks.cfg").read_text()
    assert "template:   masks/templates/surgical.png" in cfg_text  # paths relative to the repository root
    packs = [load_template_pack(p) for p in (checkout, checkout / "masks", checkout / "masks" / "masks.cfg")]
    assert {"surgical", "N95", "KN95", "cloth", "gas"} <= set(packs[0].names)
    assert all(p.names == packs[0].names for p in packs)
    # Case-insensitive: our spelling finds MaskTheFace's.
    assert packs[0].resolve("n95") == "N95" and packs[0].resolve("KN95") == "KN95"


def test_masktheface_names_without_a_pack():
    assert MaskConfig(mask_type="N95").mask_type == "n95"
    assert MaskConfig(mask_type="KN95").mask_type == "kn95"
    assert [c.mask_type for c in MaskConfig(mask_type="all").expand()] == list(MASK_TYPES)
    with pytest.raises(ValueError, match="unknown mask type 'balaclava'"):
        MaskConfig(mask_type="balaclava")


def test_mask_code_entries_and_cycling(tmp_path):
    configs = parse_mask_code(
        "cloth-#e54294, N95, surgical_blue, cloth-dots, gas-red", MaskConfig(color_weight=0.7)
    )
    assert [(c.mask_type, c.color, c.pattern) for c in configs] == [
        ("cloth", "#e54294", None),
        ("n95", None, None),
        ("surgical_blue", None, None),
        ("cloth", None, "dots"),
        ("gas", "red", None),
    ]
    assert all(c.color_weight == 0.7 for c in configs)
    groups = inputs_per_config(configs[:3], 7)
    assert [indices for _, indices in groups] == [[0, 3, 6], [1, 4], [2, 5]]
    with pytest.raises(ValueError, match="mask code entry 'hat-#000000'"):
        parse_mask_code("cloth, hat-#000000")
    with pytest.raises(ValueError, match="empty"):
        parse_mask_code(" , ")
    with pytest.raises(ValueError, match="'all' is not one mask"):
        parse_mask_code("cloth, all")


def test_mask_code_random_says_whether_colour_or_pattern():
    colour, pattern = parse_mask_code("surgical-random_color, cloth-Random_Pattern")
    assert (colour.mask_type, colour.color, colour.pattern) == ("surgical", "random", None)
    assert (pattern.mask_type, pattern.color, pattern.pattern) == ("cloth", None, "random")
    with pytest.raises(
        ValueError, match="'random' could be a colour or a pattern; write 'surgical-random_color'"
    ):
        parse_mask_code("surgical-random")


def test_make_dataset_refuses_all_with_a_clear_message():
    from m2u.datasets.build import BuildConfig, BuildError, make_masker

    with pytest.raises(BuildError, match="`variants` K with `mask_type` random"):
        make_masker(BuildConfig(mask_options={"mask_type": "all"}))
    with pytest.raises(BuildError, match="mask options: unknown mask type 'hat'"):
        make_masker(BuildConfig(mask_options={"mask_type": "hat"}))


def test_m2u_mask_takes_the_checkout_and_masktheface_names(checkout, face_photo, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        mask_cli.main,
        [str(face_photo), "-o", str(out), "--pack", str(checkout), "--mask-type", "N95", "--quiet"],
    )
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in _report(out)] == ["ok"]
    meta = json.loads((out / "face_N95.json").read_text())
    assert meta["faces"][0]["type"] == "N95" and meta["faces"][0]["template"].startswith("N95")


def test_all_gives_every_type_of_the_pack_per_face(checkout, face_photo, tmp_path):
    out = tmp_path / "out"
    args = [str(face_photo), "-o", str(out), "--pack", str(checkout), "--mask-type", "all", "--quiet"]
    result = CliRunner().invoke(mask_cli.main, args)
    assert result.exit_code == 0, result.output
    names = load_template_pack(checkout).names
    rows = _report(out)
    assert sorted(r["mask_type"] for r in rows) == sorted(names)
    written = {p.name for p in out.glob("*.jpg")}
    ok = {r["mask_type"] for r in rows if r["status"] == "ok"}
    assert written == {f"face_{t}.jpg" for t in ok} and len(ok) >= len(names) - 1


def test_code_cycles_over_the_inputs_with_checkout_textures(checkout, face_photo, tmp_path):
    for k in range(1, 4):
        shutil.copy(face_photo, face_photo.with_name(f"face{k}.jpg"))
    code = "cloth-#e54294, N95, surgical_blue, cloth-masks/textures/check/check_1.png"
    out = tmp_path / "out"
    result = CliRunner().invoke(
        mask_cli.main,
        [str(face_photo.parent), "-o", str(out), "--pack", str(checkout), "--code", code, "--quiet"],
    )
    assert result.exit_code == 0, result.output
    by_file = {Path(r["path"]).name: r for r in _report(out)}
    expected = {"face.jpg": "cloth", "face1.jpg": "N95", "face2.jpg": "surgical_blue", "face3.jpg": "cloth"}
    assert {name: row["mask_type"] for name, row in by_file.items()} == expected
    first = json.loads((out / "face_cloth.json").read_text())["faces"][0]
    last = json.loads((out / "face3_cloth.json").read_text())["faces"][0]
    assert first["color"] == "#e54294" and first["pattern"] is None
    assert last["pattern"] == str(checkout / "masks/textures/check/check_1.png")


def test_contact_sheet_honours_pack(checkout, face_photo, tmp_path):
    sheet = tmp_path / "sheet.png"
    result = CliRunner().invoke(
        mask_cli.main,
        [str(face_photo), "-o", str(tmp_path / "o"), "--pack", str(checkout), "--contact-sheet", str(sheet)],
    )
    assert result.exit_code == 0, result.output
    image = cv2.imread(str(sheet))
    variants = pack_variants(str(checkout))
    assert [label for label, _ in variants[:3]] == list(load_template_pack(checkout).names[:3])
    assert image.shape[:2] == (256 * math.ceil(len(variants) / 5), 256 * 5)


def test_refusals_are_their_own_status(face_photo, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise MaskingError("fold-over: 3 mesh triangles flipped")

    monkeypatch.setattr(mask_batch, "apply_mask", refuse)
    out = tmp_path / "out"
    result = CliRunner().invoke(mask_cli.main, [str(face_photo), "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    (row,) = _report(out)
    assert row["status"] == "refused" and "fold-over" in row["reason"]
    assert "1 refused, 0 errors" in result.output


def test_min_score_raises_every_pass_threshold():
    plain = DetectorConfig()
    assert [t for _, _, t in plain.passes()] == [0.0, -0.4, 0.0]
    strict = DetectorConfig(min_score=-0.1)
    assert [t for _, _, t in strict.passes()] == [0.0, -0.1, 0.0]
    assert [t for _, _, t in DetectorConfig(min_score=0.2).passes()] == [0.2, 0.2]


def test_low_threshold_finds_are_recorded_with_their_score_and_filtered_by_min_score(celeba_dir, tmp_path):
    # A CelebA photo whose face only the low-threshold retry finds (score -0.20 with dlib's HOG).
    photo = celeba_dir / "10071_119464.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} not in the shared photos")
    out = tmp_path / "out"
    result = CliRunner().invoke(mask_cli.main, [str(photo), "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    (row,) = _report(out)
    face = json.loads((out / "10071_119464_surgical.json").read_text())["faces"][0]
    assert face["retry"] is True and -0.4 <= face["score"] < 0
    assert row["status"] == "ok" and f"low-threshold retry (score {face['score']:.3f})" in row["reason"]
    # --min-score 0: the retry pass no longer accepts it; the upsampled pass finds it with a score above 0.
    strict = tmp_path / "strict"
    result = CliRunner().invoke(mask_cli.main, [str(photo), "-o", str(strict), "--min-score", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    face = json.loads((strict / "10071_119464_surgical.json").read_text())["faces"][0]
    assert face["retry"] is False and face["score"] >= 0
    stricter = tmp_path / "stricter"
    CliRunner().invoke(mask_cli.main, [str(photo), "-o", str(stricter), "--min-score", "5", "--quiet"])
    assert [r["status"] for r in _report(stricter)] == ["no_face"]


def test_the_readme_table1_recipe_builds_with_the_checkouts_templates(checkout, face_photo, tmp_path):
    """README: `m2u-pipeline run --preset paper ... --set 'dataset.mask_options={mask_type: random, pack: ...}'`."""
    import yaml

    from m2u.core.imageio import read_image
    from m2u.datasets.build import make_masker
    from m2u.masking.detect import FaceDetector
    from m2u.pipelines.config import load_config

    override = yaml.safe_load(f"{{mask_type: random, pack: {checkout}}}")
    config = load_config("paper", extra={"dataset": {"mask_options": override}})
    assert config.dataset.limit == 12000 and config.dataset.mask_options["pack"] == str(checkout)
    masker = make_masker(config.dataset)
    image = read_image(face_photo)
    types = {masker(image, FaceDetector().detect(image)[0], seed)[2]["type"] for seed in range(12)}
    assert types <= set(load_template_pack(checkout).names) and len(types) >= 3


def test_contact_sheet_says_which_options_it_does_not_use(checkout, face_photo, tmp_path):
    sheet = tmp_path / "sheet.png"
    command = [str(face_photo), "--contact-sheet", str(sheet)]  # no -o: a contact sheet writes no folder
    plain = CliRunner().invoke(mask_cli.main, command)
    assert plain.exit_code == 0 and sheet.is_file() and "warning" not in plain.output, plain.output
    sheet.unlink()
    chosen = CliRunner().invoke(
        mask_cli.main, [*command, "-o", str(tmp_path / "o"), "--mask-type", "N95", "--workers", "2"]
    )
    assert chosen.exit_code == 0 and sheet.is_file(), chosen.output
    assert (
        "warning: --contact-sheet shows every mask type and preset on one face: -o, --mask-type, --workers not used"
        in chosen.output
    )
    assert not (tmp_path / "o").exists()
    too_large = CliRunner().invoke(mask_cli.main, [*command, "--max-pixels", "100"])  # honoured, as by a run
    assert too_large.exit_code == 1 and "no input image with a face" in too_large.output
    assert "(1 could not be read, first " in too_large.output and "image too large" in too_large.output
    assert "(--max-pixels raises the limit)" in too_large.output  # what to do, as a run's row says it


def test_pack_paths_never_reach_a_folder_above_the_pack(checkout, tmp_path):
    """A pack copied flat into a folder of its own (masks.cfg next to its images' folder under another name) names its
    images `masks/templates/...`; a MaskTheFace checkout beside it holds files by those names. Only the pack's own
    folder is searched: the checkout's files, one folder above the pack, are never taken for the pack's."""
    pack = checkout / "mine"
    (pack / "art").mkdir(parents=True)
    section = (checkout / "masks" / "masks.cfg").read_text().split("\n\n")[0]
    assert section.startswith("[surgical]") and "masks/templates/surgical.png" in section
    (pack / "masks.cfg").write_text(section.replace("[surgical]", "[mine]") + "\n")
    with pytest.raises(TemplatePackError, match=r"'masks/templates/surgical.png' not found") as refused:
        load_template_pack(pack)
    assert str(checkout / "masks" / "templates") not in str(refused.value)
    # Next to masks.cfg it is found, by its name.
    shutil.copy(checkout / "masks" / "templates" / "surgical.png", pack / "surgical.png")
    assert load_template_pack(pack / "masks.cfg").names == ("mine",)
    # A --code texture written from the checkout's root is not looked up above the pack either.
    assert _code_texture("masks/textures/check/check_1.png", str(pack)) == "masks/textures/check/check_1.png"
    assert _code_texture("masks/textures/check/check_1.png", str(checkout)) == str(
        checkout.resolve() / "masks" / "textures" / "check" / "check_1.png"
    )


def _opaque_pack(
    folder: Path, anchors: dict[str, tuple[int, int]], sections: tuple[str, ...] = ("tpl",)
) -> Path:
    """A pack of one opaque 200 x 200 template with the anchors given, under each section name given."""
    folder.mkdir(parents=True)
    image = np.full((200, 200, 4), 255, np.uint8)
    image[..., :3] = (np.indices((200, 200)).sum(0)[..., None] * 255 // 398).astype(np.uint8)  # a smooth ramp
    cv2.imwrite(str(folder / "tpl.png"), image)
    entries = "".join(f"mask_{k} = {x}, {y}\n" for k, (x, y) in anchors.items())
    (folder / "masks.cfg").write_text(
        "".join(f"[{name}]\ntemplate = tpl.png\n{entries}\n" for name in sections)
    )
    return folder


_SQUARE = {"a": (15, 20), "b": (100, 20), "c": (190, 20), "d": (15, 180), "e": (100, 180), "f": (190, 180)}


@pytest.mark.parametrize("written", ["../beside/tpl.png", "{beside}/tpl.png"])
def test_a_template_path_out_of_the_pack_is_not_read_and_the_error_names_the_section(tmp_path, written):
    """`..` or an absolute path reached a file outside the pack's folder (read as written), though the README
    promises never a folder above the pack; the refusal named neither masks.cfg nor the section."""
    beside = _opaque_pack(tmp_path / "beside", _SQUARE)
    pack = tmp_path / "pack"
    pack.mkdir()
    cfg = (beside / "masks.cfg").read_text().replace("tpl.png", written.format(beside=beside))
    (pack / "masks.cfg").write_text(cfg)
    with pytest.raises(TemplatePackError, match=r"masks.cfg \[tpl\]: template image .* not found") as refused:
        load_template_pack(pack)
    assert str(beside) not in str(refused.value).split("(tried")[1]
    # The pack's own copy, by its file name, is what it draws.
    shutil.copy(beside / "tpl.png", pack / "tpl.png")
    assert load_template_pack(pack / "masks.cfg").names == ("tpl",)


def test_a_percent_sign_in_masks_cfg_is_a_pack_error_naming_the_section(tmp_path):
    """MaskTheFace's ConfigParser interpolation reads "%": a bare one (a file "100%.png") raised configparser's
    InterpolationSyntaxError, not a TemplatePackError (m2u-mask --pack printed a traceback)."""
    pack = _opaque_pack(tmp_path / "pack", _SQUARE)
    (pack / "tpl.png").rename(pack / "100%.png")
    cfg = (pack / "masks.cfg").read_text()
    (pack / "masks.cfg").write_text(cfg.replace("tpl.png", "100%.png"))
    with pytest.raises(TemplatePackError, match=r"\[tpl\]: template: '%' must be followed by .*'%%'"):
        load_template_pack(pack)
    (pack / "masks.cfg").write_text(cfg.replace("tpl.png", "100%%.png"))  # written as configparser reads it
    assert load_template_pack(pack).names == ("tpl",)


def test_a_concave_anchor_quad_is_laid_out_without_a_gap(tmp_path):
    """MaskTheFace's KN95_left / KN95_right have a concave quad a-b-e-d (d inside the triangle a-b-e's reach): a
    homography took d across its horizon and left a transparent wedge down the middle of the texture, so the
    mask had a gap over the mouth and most turned faces were refused. Two affine triangles cover the quad."""
    anchors = {"a": (15, 70), "b": (60, 28), "c": (190, 20), "d": (58, 112), "e": (92, 185), "f": (195, 90)}
    template = load_template_pack(_opaque_pack(tmp_path / "pack", anchors)).templates["tpl"]
    alpha = template.alpha
    assert alpha.shape[1] % 2 == 0
    # The whole image is opaque: every texture pixel maps inside it (a 2-px rim allowed for the filter's edge).
    assert float(alpha[2:-2, 2:-2].min()) > 0.99
    # and the split diagonal leaves no seam in the colours either: the gradient runs on smoothly across it
    rows = template.rgb[2:-2, 2 : alpha.shape[1] // 2 - 2].mean(axis=2)
    assert float(np.abs(np.diff(rows, axis=0)).max()) < 0.08


def test_anchors_that_cross_are_refused_naming_the_quad(tmp_path):
    anchors = {
        "a": (15, 20),
        "b": (100, 20),
        "c": (190, 20),
        "d": (100, 180),
        "e": (15, 180),
        "f": (190, 180),
    }
    with pytest.raises(TemplatePackError, match=r"\[tpl\]: anchors a-b-e-d cross each other"):
        load_template_pack(_opaque_pack(tmp_path / "pack", anchors))


def test_masktheface_kn95_pose_variants_have_no_gap_down_the_middle(checkout):
    """The pose variants with concave quads are drawn whole (with the homography, m2u-mask --mask-type KN95 refused
    55 of 121 CelebA photos, 54 of them for a bare mouth; with the split, 1)."""
    pack = load_template_pack(checkout)
    for name in ("KN95_left", "KN95_right"):
        alpha = pack.templates[name].alpha
        middle = alpha.shape[1] // 2
        assert float(alpha[20:-20, middle - 4 : middle + 4].min()) > 0.99, name


def test_mask_code_takes_pack_names_that_hold_a_dash(tmp_path):
    """`--code` split each entry at its first "-", so a pack's "surgical-v2" was read as type "surgical"."""
    square = {"a": (15, 20), "b": (100, 20), "c": (190, 20), "d": (15, 180), "e": (100, 180), "f": (190, 180)}
    pack = str(_opaque_pack(tmp_path / "pack", square, ("surgical", "surgical-v2")))
    configs = parse_mask_code(
        "surgical-v2, SURGICAL-V2-#ff0000, surgical-#00ff00, surgical", MaskConfig(pack=pack)
    )
    assert [(c.mask_type, c.color) for c in configs] == [
        ("surgical-v2", MaskConfig().color),
        ("surgical-v2", "#ff0000"),
        ("surgical", "#00ff00"),
        ("surgical", MaskConfig().color),
    ]
    with pytest.raises(ValueError, match="'surgical-v3'|surgical-v3"):
        parse_mask_code("surgical-v3-#ff0000", MaskConfig(pack=pack))


def _side_view_pack(folder: Path, slot: bool = False) -> Path:
    """A tiny pack shaped like MaskTheFace's side views: an opaque front template [tpl] (anchors on its edges) and
    [tpl_left] / [tpl_right], whose body ends 60 px short of the outer anchors, which mark the ends of two thin
    loops. `slot`: the side views also have a transparent slot up the middle of the body, where the mouth goes."""
    folder.mkdir(parents=True)
    front = np.zeros((120, 200, 4), np.uint8)
    front[10:110, 10:190] = (90, 140, 200, 255)
    cv2.imwrite(str(folder / "front.png"), front)
    side = np.zeros((120, 200, 4), np.uint8)
    side[10:110, 10:130] = (90, 140, 200, 255)
    for start, end in (((129, 25), (190, 15)), ((129, 95), (190, 105))):
        cv2.line(side, start, end, (250, 250, 250, 255), 3)
    if slot:
        side[45:110, 30:75] = 0
    cv2.imwrite(str(folder / "left.png"), side)
    cv2.imwrite(str(folder / "right.png"), side[:, ::-1])
    left = {"a": (10, 10), "b": (50, 10), "c": (190, 15), "d": (10, 109), "e": (50, 109), "f": (190, 105)}
    # Mirrored: x -> 199 - x, and the left and right anchors swap.
    swap = {"a": "c", "b": "b", "c": "a", "d": "f", "e": "e", "f": "d"}
    right = {k: (199 - left[swap[k]][0], left[swap[k]][1]) for k in left}
    sections = {
        "tpl": (
            "front.png",
            {"a": (10, 10), "b": (100, 10), "c": (189, 10), "d": (10, 109), "e": (100, 109), "f": (189, 109)},
        ),
        "tpl_left": ("left.png", left),
        "tpl_right": ("right.png", right),
    }
    (folder / "masks.cfg").write_text(
        "".join(
            f"[{name}]\ntemplate = {image}\n"
            + "".join(f"mask_{k} = {x}, {y}\n" for k, (x, y) in anchors.items())
            for name, (image, anchors) in sections.items()
        )
    )
    return folder


@pytest.mark.parametrize("yaw, side", [(-0.6, "tpl_left"), (0.6, "tpl_right")])
def test_a_side_view_covers_the_face_as_its_front_template_does(
    yaw, side, tmp_path, synthetic_landmarks, skin_image
):
    """A side view's outer anchors mark where its loops end, past the mask body: laid on the jaw, they shrank the
    body to about 0.7 of the front template's area (MaskTheFace's pack on turned CelebA faces) and left the near
    cheek bare. The loader moves them to the body's edge: the side view covers what the front template covers."""
    from m2u.masking import apply_mask

    pack = _side_view_pack(tmp_path / "pack")
    landmarks = synthetic_landmarks(yaw=yaw)
    config = MaskConfig(mask_type="tpl", pack=str(pack))
    result = apply_mask(skin_image, landmarks, config, seed=3)
    assert result.meta["template"] == side and result.meta["fallback"] is None
    (tmp_path / "front").mkdir()
    front_only = tmp_path / "front" / "masks.cfg"  # the same pack without its side views
    front_only.write_text((pack / "masks.cfg").read_text().split("[tpl_left]")[0])
    shutil.copy(pack / "front.png", tmp_path / "front" / "front.png")
    front = apply_mask(skin_image, landmarks, MaskConfig(mask_type="tpl", pack=str(front_only)), seed=3)
    assert front.meta["template"] == "tpl"
    assert 0.95 <= result.meta["mask_pixels"] / front.meta["mask_pixels"] <= 1.05
    # the body fills the whole texture: the near half is not cut short at the loops' share
    alpha = load_template_pack(pack).templates[side].alpha
    assert float(alpha[4:-4, 4:-4].mean()) > 0.97
    # and the draw stays seeded: the same seed gives the same bytes
    again = apply_mask(skin_image, landmarks, config, seed=3)
    assert again.image.tobytes() == result.image.tobytes() and again.mask.tobytes() == result.mask.tobytes()


def test_front_templates_keep_their_anchors_as_written(tmp_path):
    """Only pose variants are moved: a front template with the same loops past its body draws as it did."""
    from m2u.masking.templates_pack import template_from_image

    pack = _side_view_pack(tmp_path / "pack")
    text = (pack / "masks.cfg").read_text()
    (pack / "masks.cfg").write_text(
        text + "\n" + text.split("[tpl_right]")[0].split("[tpl_left]")[1].join(["[loops]", ""])
    )
    rgba = cv2.cvtColor(cv2.imread(str(pack / "left.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
    written = {"a": (10, 10), "b": (50, 10), "c": (190, 15), "d": (10, 109), "e": (50, 109), "f": (190, 105)}
    loaded = load_template_pack(pack).templates["loops"]
    assert np.array_equal(loaded.alpha, template_from_image("loops", rgba, written).alpha)
    assert float(loaded.alpha[:, -60:].mean()) < 0.2  # the loops' share of the texture stays as drawn


def test_side_view_anchors_stay_as_written_unless_past_the_body_and_safe_to_move():
    from m2u.masking.templates_pack import side_view_anchors

    alpha = np.zeros((120, 200), np.uint8)
    alpha[10:110, 10:130] = 255
    cv2.line(alpha, (129, 25), (190, 15), 255, 3)  # a loop: thinner than the body, not part of it
    past = {"a": (10, 10), "b": (50, 10), "c": (190, 15), "d": (10, 109), "e": (50, 109), "f": (190, 105)}
    moved = side_view_anchors(past, alpha)
    # across to the body's last column (129; the loop's root may add a pixel), heights kept, the rest as written
    assert {k: moved[k] for k in "abde"} == {k: past[k] for k in "abde"}
    assert moved["c"][0] == moved["f"][0] and 129 <= moved["c"][0] <= 130
    assert (moved["c"][1], moved["f"][1]) == (15, 105)
    on_the_body = {**past, "c": (129, 15), "f": (126, 105)}
    assert side_view_anchors(on_the_body, alpha) == on_the_body
    # b and e beyond the body's edge: moving c and f there would mirror the quad b-c-f-e
    folding = {**past, "b": (150, 10), "e": (150, 109)}
    assert side_view_anchors(folding, alpha) == folding


def test_a_side_view_that_leaves_the_mouth_bare_falls_back_to_the_front_template(
    tmp_path, synthetic_landmarks, skin_image
):
    """A side view whose own shape leaves the mouth bare (here a slot up its middle) is drawn as the pack's front
    template, and the result says so."""
    from m2u.masking import apply_mask

    pack = _side_view_pack(tmp_path / "pack", slot=True)
    result = apply_mask(
        skin_image, synthetic_landmarks(yaw=-0.6), MaskConfig(mask_type="tpl", pack=str(pack)), seed=0
    )
    assert result.meta["template"] == "tpl" and "front template" in result.meta["fallback"]


def test_a_front_face_refused_by_the_checks_is_not_drawn_again_as_the_front_template(
    tmp_path, synthetic_landmarks, skin_image, monkeypatch
):
    """The front-template retries are for side views: a front face whose pack template fails the checks is refused
    after its own attempts (shifted, unshifted), not drawn twice more as the same template."""
    import m2u.masking.render as render
    from m2u.masking import MaskingError, apply_mask

    pack = _side_view_pack(tmp_path / "pack")
    front = cv2.imread(str(pack / "front.png"), cv2.IMREAD_UNCHANGED)
    front[45:110, 70:130] = 0  # a slot up the middle, where the mouth goes
    cv2.imwrite(str(pack / "front.png"), front)
    draws: list[bool] = []
    real_draw = render._draw

    def counted(*args, **kwargs):
        draws.append(args[-1] if len(args) == 8 else kwargs.get("side_view", True))
        return real_draw(*args, **kwargs)

    monkeypatch.setattr(render, "_draw", counted)
    config = MaskConfig(mask_type="tpl", pack=str(pack))
    seed = next(
        s
        for s in range(50)
        if render.draw_top_shift(np.random.default_rng([s, render.PLACEMENT_STREAM]), config.placement)
    )
    with pytest.raises(MaskingError):
        apply_mask(skin_image, synthetic_landmarks(yaw=0.0), config, seed=seed)
    assert draws == [True, True]  # shifted, unshifted: both the front template, nothing redrawn


def test_masktheface_side_views_cover_a_turned_face_as_the_front_template(checkout, celeba_dir, tmp_path):
    """On this turned CelebA face MaskTheFace's surgical side views (outer anchors past the ear loops) left a mouth
    corner bare and fell back to the front template; cloth's was drawn at 0.75 of the front one's area (now 0.93)."""
    from m2u.masking import apply_mask, read_image
    from m2u.masking.detect import FaceDetector

    photo = celeba_dir / "3026_006167.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} not in the shared photos")
    image = read_image(photo)
    face = FaceDetector(DetectorConfig()).detect(image)[0]
    parser = configparser.ConfigParser()
    parser.read(checkout / "masks" / "masks.cfg")
    for section in parser.sections():
        if section not in (
            "surgical",
            "cloth",
        ):  # the front templates compared with, without their side views
            parser.remove_section(section)
    front_only = tmp_path / "front" / "masks.cfg"
    front_only.parent.mkdir()
    with front_only.open("w") as handle:
        parser.write(handle)
    shutil.copytree(checkout / "masks" / "templates", front_only.parent / "templates")
    for mask_type in ("surgical", "cloth"):
        side = apply_mask(image, face, MaskConfig(mask_type=mask_type, pack=str(checkout)), seed=0)
        front = apply_mask(image, face, MaskConfig(mask_type=mask_type, pack=str(front_only)), seed=0)
        assert side.meta["template"] == f"{mask_type}_left" and side.meta["fallback"] is None
        assert front.meta["template"] == mask_type
        assert 0.85 <= side.meta["mask_pixels"] / front.meta["mask_pixels"] <= 1.15, mask_type


@pytest.mark.parametrize(
    "text, said",
    [
        ("hello\n", "line 1 comes before any [section] header"),
        ("[a]\ntemplate = a.png\n[a]\n", "[a] is given twice, line 3"),
        ("[a]\ntemplate = a.png\ntemplate = b.png\n", "template in [a] is given twice, line 3"),
    ],
)
def test_a_broken_masks_cfg_is_said_in_words(tmp_path, text, said):
    """configparser's own text showed `PosixPath('...')` and Python string reprs."""
    from m2u.masking.templates_pack import TemplatePackError

    (tmp_path / "masks.cfg").write_text(text)
    with pytest.raises(TemplatePackError) as refused:
        load_template_pack(tmp_path)
    assert f"not a valid masks.cfg ({said})" in str(refused.value) and "PosixPath" not in str(refused.value)


@pytest.mark.parametrize("content, said", [(b"", "empty file (0 bytes)"), (b"hello", "not an image")])
def test_a_pattern_file_that_is_no_image_is_said_in_words(tmp_path, content, said):
    """Pillow's own text named its file object (`<_io.BufferedReader name=3>`)."""
    from m2u.masking.appearance import check_pattern_image

    path = tmp_path / "pattern.jpg"
    path.write_bytes(content)
    with pytest.raises(ValueError) as refused:
        check_pattern_image(path)
    assert said in str(refused.value) and "_io." not in str(refused.value)


@pytest.mark.parametrize("default", ["template = tpl.png", "mask_a = 15, 20"])
def test_a_default_section_in_masks_cfg_is_refused_naming_the_file(tmp_path, default):
    """configparser lends [DEFAULT]'s keys to every section: with a template there, MaskTheFace's bare pseudo-type
    [empty] was loaded as a template; with an anchor there, [empty] was refused as "missing 'template'"."""
    plain = _opaque_pack(tmp_path / "plain", _SQUARE)
    cfg = (plain / "masks.cfg").read_text() + "[empty]\n"
    (plain / "masks.cfg").write_text(cfg)
    assert load_template_pack(plain).skipped == ("empty",)
    pack = _opaque_pack(tmp_path / "pack", _SQUARE)
    (pack / "masks.cfg").write_text(f"[DEFAULT]\n{default}\n\n{cfg}")
    with pytest.raises(TemplatePackError) as refused:
        load_template_pack(pack)
    said = str(refused.value)
    assert (
        said.startswith(f"{pack / 'masks.cfg'}: not a valid masks.cfg (a [DEFAULT] section")
        and "\n" not in said
    )
