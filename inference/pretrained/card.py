"""The model card of a shipped model, generated from its measured figures (`card.json`) and nothing else.

`write_model_card(folder, card)` writes `folder/card.json` (the dict as given) and `folder/MODEL_CARD.md`;
`render_model_card(card)` is the Markdown. The card dict (written by benchmarks/release_recipe.py):

    name, recipe_command, data {faces, photos, split_by, size, samples {train, val, test}},
    training {mseg {steps, seconds, config}, [mseg-soup {steps, seconds, config}], gan {steps, seconds, config}},
    evaluation {split, samples, rows {method: {psnr, ssim, l1, ...}}, mask_quality {dice, ...},
                by_mask {type: {name: {n, psnr, ssim}}, ...}, latency {setting: seconds}},
    files {name: bytes}, m2u_version, [also_evaluated {data, evaluation}], [real_photos {...}]
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from m2u.core.fileio import atomic_write_text

LICENCE = (
    "The weights derive from CelebA (Liu et al., 2015), whose photos are available for non-commercial research "
    "purposes only, and from the masks placed with dlib's 68-point landmark model, trained on the iBUG 300-W "
    "dataset, whose licence excludes commercial use. Use these weights for non-commercial research only. The m2u "
    "code itself is MIT-licensed."
)
ROWS = (
    ("m2u_composite", "M2UNet (composite)"),
    ("telea", "Telea (predicted mask)"),
    ("navier_stokes", "Navier-Stokes (predicted mask)"),
    ("masked_input", "masked input"),
)


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def evaluation_section(metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The card's "evaluation" section from m2u-eval's metrics.json (test split), plus `extra` entries."""
    return {
        "split": "test",
        "samples": metrics.get("n_samples"),
        "rows": metrics.get("rows", {}),
        "mask_quality": metrics.get("mask_quality", {}),
        "by_mask": metrics.get("by_mask", {}),
        **extra,
    }


def release_targets(rows: dict[str, Any], quality: dict[str, Any]) -> dict[str, bool]:
    """The release's targets, each met or not, from the measured rows and M-Seg's Dice."""
    ours, telea = rows.get("m2u_composite", {}), rows.get("telea", {})

    def better(name: str, higher: bool) -> bool:
        a, b = ours.get(name), telea.get(name)
        return a is not None and b is not None and (a > b if higher else a < b)

    psnr_gain = (ours.get("psnr") or 0) - (telea.get("psnr") or float("inf"))
    return {
        "PSNR >= Telea + 5 dB": psnr_gain >= 5.0,
        "Dice >= 0.98": (quality.get("dice") or 0) >= 0.98,
        "SSIM above Telea": better("ssim", True),
        "L1 below Telea": better("l1", False),
    }


# HuggingFace model-card metadata (https://huggingface.co/docs/hub/model-cards): the weights' licence is not one of
# the Hub's identifiers, so "other" with its name, as the Hub's convention asks.
LICENSE_NAME = "celeba-and-ibug-300w-non-commercial-research"
TAGS = (
    "face-unmasking",
    "face-inpainting",
    "image-to-image",
    "gan",
    "m2unet",
    "pytorch",
    "safetensors",
    "onnx",
)
METRICS = (("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("l1", "L1"), ("identity_cosine", "identity cosine"))


def front_matter(card: dict[str, Any]) -> str:
    """The YAML block HuggingFace reads at the top of a model card: licence, tags, datasets, metrics and a
    model-index with the measured test-split figures of the composite output."""
    import yaml

    evaluation = card["evaluation"]
    ours = evaluation.get("rows", {}).get("m2u_composite", {})
    size = card["data"]["size"]
    results = [
        {"type": key, "name": f"{label} (composite, {size}x{size})", "value": round(float(ours[key]), 4)}
        for key, label in METRICS
        if ours.get(key) is not None
    ]
    meta = {
        "license": "other",
        "license_name": LICENSE_NAME,
        "license_link": "MODEL_CARD.md#licence",
        "library_name": "m2u",
        "pipeline_tag": "image-to-image",
        "tags": list(TAGS),
        "datasets": ["celeba"],
        "metrics": [key for key, _ in METRICS],
        "model-index": [
            {
                "name": card["name"],
                "results": [
                    {
                        "task": {"type": "image-to-image", "name": "Face unmasking (synthetic masks)"},
                        "dataset": {
                            "type": "celeba",
                            "name": f"CelebA with m2u's synthetic masks, {card['data'].get('split_by')}-disjoint "
                            f"split, {size}x{size}",
                            "split": evaluation.get("split", "test"),
                        },
                        "metrics": results,
                    }
                ],
            }
        ],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n"


def render_model_card(card: dict[str, Any]) -> str:
    return front_matter(card) + _render_body(card)


def _render_body(card: dict[str, Any]) -> str:
    data, training, evaluation = card["data"], card["training"], card["evaluation"]
    gan_config = training["gan"].get("config", {})
    width = gan_config.get("generator", {}).get("width_multiplier")
    size = data["size"]
    rows = evaluation.get("rows", {})
    lines = [
        f"# {card['name']}",
        "",
        f"M2UNet face unmasking (M-Seg + CARU2-Net generator) trained by m2u {card.get('m2u_version', '')} on "
        f"{data['photos']} photos of {data['faces']} at {size}x{size}, generator width x{width} of the paper's "
        f"(the paper's figures are for width x1 at 256x256).",
        "",
        "**What it is:** a restorer for synthetic face masks (m2u's templates) on aligned, CelebA-like frontal "
        f"faces, run at {size}x{size} on the aligned crop{_real_mask_note(training)}. **What it is not:** a model "
        "of real masks in the wild (real photos score well below synthetic ones: see the real-photo figures where "
        "the card has them), of profile faces, or of faces unlike CelebA's; the paper's resolution.",
        "",
        "## Recipe",
        "",
        "```",
        card["recipe_command"],
        "```",
        "",
        f"- data: {data['faces']} ({data['photos']} photos), split by {data['split_by']} (test identities unseen), "
        f"samples {data.get('samples', {})}",
        f"- M-Seg: {training['mseg']['steps']} steps, {_fmt(training['mseg'].get('seconds'), 0)} s"
        + _tuning(training["mseg"].get("config", {})),
        *(
            [
                f"- M-Seg soup: a second run of {training['mseg-soup']['steps']} steps from the first (another seed, "
                f"a lower learning rate), {_fmt(training['mseg-soup'].get('seconds'), 0)} s; the shipped M-Seg is "
                "the average of the two runs' weights"
            ]
            if "mseg-soup" in training
            else []
        ),
        f"- GAN: {training['gan']['steps']} steps, {_fmt(training['gan'].get('seconds'), 0)} s"
        + _tuning(training["gan"].get("config", {})),
        f"- weights: {', '.join(f'{k} {v / 1e6:.2f} MB' for k, v in card.get('files', {}).items())} (fp16)",
        "",
        f"## Figures ({evaluation.get('split', 'test')} split, {evaluation.get('samples')} samples, {size}x{size})",
        "",
    ]
    lines += _figures(rows, evaluation)
    lines += _also_evaluated_lines(card.get("also_evaluated"))
    lines += _real_photo_lines(card.get("real_photos"))
    lines += ["", "## Licence", "", LICENCE, ""]
    return "\n".join(lines)


def _figures(rows: dict[str, Any], evaluation: dict[str, Any]) -> list[str]:
    """The table rows, the per-mask-type table, M-Seg's quality, the release targets and the latency."""
    lines = _method_table(rows)
    by_type = evaluation.get("by_mask", {}).get("type", {})
    if by_type:
        lines += ["", "Per mask type (M2UNet composite):", "", "| mask type | samples | PSNR (dB) | SSIM |",
                  "|---|---|---|---|"]  # fmt: skip
        lines += [
            f"| {name} | {row.get('n')} | {_fmt(row.get('psnr'), 2)} | {_fmt(row.get('ssim'))} |"
            for name, row in by_type.items()
        ]
    quality = evaluation.get("mask_quality", {})
    lines += _quality_lines(rows, quality)
    lines += ["", "Release targets (issue 17): " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in
              release_targets(rows, quality).items()) + "."]  # fmt: skip
    latency = {k: v for k, v in evaluation.get("latency", {}).items() if k not in ("threads", "size")}
    if latency:
        shown = [f"{k} {v * 1000:.0f} ms" if isinstance(v, float) else f"{k} {v}" for k, v in latency.items()]
        threads = evaluation["latency"].get("threads")
        lines.append(
            f"Latency per face (batch 1, M-Seg + generator, {threads or '?'} CPU threads, measured by the recipe): "
            + ", ".join(shown)
            + "."
        )
    return lines


def _kept_provenance(config: dict[str, Any]) -> dict[str, Any]:
    """The provenance recorded in the model file a network was kept from ({} when there is none)."""
    provenance = config.get("kept_provenance") if config.get("kept_from") else None
    return provenance if isinstance(provenance, dict) else {}


def _kept_recipe(config: dict[str, Any]) -> str:
    """The recipe recorded in the model file a network was kept from ('' when it records none)."""
    recipe = _kept_provenance(config).get("recipe")
    return recipe if isinstance(recipe, str) else ""


def _augmented(config: dict[str, Any]) -> bool:
    """Whether a network was trained through camera augmentation: by this recipe's run, or, for a network kept from
    an earlier release, by the release recipe its file records (`--augment`; for the generator, without
    `--no-gan-augment`, which kept its pairs as built)."""
    if config.get("augment", {}).get("enabled"):
        return True
    recipe = _kept_recipe(config)
    try:
        words = shlex.split(recipe)
    except ValueError:  # not a command line m2u wrote (m2u records them with shlex.join)
        return False
    if not any(word.endswith("release_recipe.py") for word in words) or "--augment" not in words:
        return False
    return not (_kept_provenance(config).get("task") == "gan" and "--no-gan-augment" in words)


def _real_mask_note(training: dict[str, Any]) -> str:
    """Which networks saw camera augmentation (tight crops, camera effects) in training, as a clause."""
    augmented = [
        {"mseg": "M-Seg", "mseg-soup": "M-Seg", "gan": "the generator"}.get(name, name)
        for name, run in training.items()
        if _augmented(run.get("config", {}))
    ]
    if not augmented:
        return ""
    return (
        f"; {' and '.join(dict.fromkeys(augmented))} also trained through camera augmentation for real photos"
    )


def _also_evaluated_lines(also: dict[str, Any] | None) -> list[str]:
    """The same model on a second dataset's test split (e.g. the template masks the previous model shipped on)."""
    if not also:
        return []
    evaluation = also["evaluation"]
    rows, quality = evaluation.get("rows", {}), evaluation.get("mask_quality", {})
    lines = [
        "",
        f"### Also on {also['data']} ({evaluation.get('split', 'test')} split, {evaluation.get('samples')} samples)",
        "",
    ]
    return lines + _method_table(rows) + _quality_lines(rows, quality)


def _method_table(rows: dict[str, Any]) -> list[str]:
    """The per-method table (composite, baselines) of one evaluation."""
    lines = ["| method | PSNR (dB) | SSIM | L1 | identity cosine |", "|---|---|---|---|---|"]
    for key, label in ROWS:
        row = rows.get(key)
        if row:
            lines.append(
                f"| {label} | {_fmt(row.get('psnr'), 2)} | {_fmt(row.get('ssim'))} | {_fmt(row.get('l1'), 4)} "
                f"| {_fmt(row.get('identity_cosine'))} |"
            )
    return lines


def _quality_lines(rows: dict[str, Any], quality: dict[str, Any]) -> list[str]:
    """M-Seg's Dice and IoU, and the composite's PSNR gain over Telea, of one evaluation."""
    lines = ["", f"M-Seg Dice {_fmt(quality.get('dice'), 4)}, IoU {_fmt(quality.get('iou'), 4)}."]
    telea, ours = rows.get("telea", {}), rows.get("m2u_composite", {})
    if telea.get("psnr") is not None and ours.get("psnr") is not None:
        lines.append(f"Composite PSNR over Telea: {ours['psnr'] - telea['psnr']:+.2f} dB.")
    return lines


def _tuning(config: dict[str, Any]) -> str:
    """', fine-tuned from X, with camera augmentation' for a fine-tuned run ('' for one trained from scratch)."""
    parts = []
    if config.get("kept_from"):
        recipe = _kept_recipe(config)
        start = _start_digest(_kept_provenance(config).get("init_from"))
        # The kept file's own training is a release of its own: name it, or the card hides most of the model's past.
        trained = f"trained by `{recipe}`" if recipe else ""
        if start:
            trained += f"{', ' if trained else ''}starting from a file of {start}"
        parts.append(f"kept as it is from {config['kept_from']}" + (f" ({trained})" if trained else ""))
    starts = config.get("init_from") or {}
    for name, path in config.get("init_weights", {}).items():
        started = starts.get(name)
        if isinstance(started, dict) and isinstance(started.get("file"), str):
            path = started["file"]  # what the run started from (a resume's config may name another file)
        digest = _start_digest(started)
        parts.append(f"{name} fine-tuned from {path}" + (f" ({digest})" if digest else ""))
    if config.get("augment", {}).get("enabled"):
        parts.append("trained through m2u.datasets.augment (tight crops, scale jitter, camera effects)")
    return "".join(f", {p}" for p in parts)


def _start_digest(start: Any) -> str:
    """'SHA-256 <12 hex>' of the start a model file records (`init_from`: the file a fine-tune started from and its
    digest; a path alone names whatever is there now, as a package reinstalled over it); '' where none is recorded."""
    digest = start.get("sha256") if isinstance(start, dict) else None
    return f"SHA-256 {digest[:12]}" if isinstance(digest, str) and digest else ""


def _real_photo_lines(real: dict[str, Any] | None) -> list[str]:
    """The real-photo section: figures of benchmarks/real_mask_seg.py on labelled real masked crops."""
    if not real:
        return []
    return [
        "",
        "## Real masked photos",
        "",
        f"On {real.get('photos')} real masked face crops with hand-drawn mask labels ({real.get('data')}), "
        + (
            "each crop taken as the face (resized to the model's size, no detection: M-Seg alone; "
            if real.get("mode", "").startswith("whole crop")
            else "through `m2u-unmask`'s own pipeline (masked-face cascade, the whole crop as the face where it finds "
            "none, alignment, M-Seg, the masked-face decision, "
            "generator, paste-back of M-Seg's mask refined by GrabCut and grown by `--grow`, the region the generator "
            "fills; "
        )
        + "`benchmarks/real_mask_seg.py`):",
        "",
        "| photos restored (a face found and judged masked) | Dice where restored | Dice over all | remnants where "
        "restored | remnants over all |",
        "|---|---|---|---|---|",
        f"| {real.get('faces_found')} of {real.get('photos')} | {_fmt(real.get('dice_where_found'))} | "
        f"{_fmt(real.get('dice_all'))} | {_pct(real.get('remnants_where_found'))} | {_pct(real.get('remnants_all'))} |",
        "",
        "Dice: the restored region (M-Seg's mask, refined) warped back to the photo against the label, per photo (0 where no face was restored); "
        "remnants: the share of label pixels the output leaves unchanged. The contact sheet (photo | predicted mask "
        "| restored) is written by the benchmark (`--sheet`) and not shipped: the photos are for research use only.",
    ]


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def write_model_card(folder: str | Path, card: dict[str, Any]) -> Path:
    """Write card.json and MODEL_CARD.md into `folder`; returns the card's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(card, indent=2, sort_keys=True) + "\n"
    atomic_write_text(folder / "card.json", text)
    path = folder / "MODEL_CARD.md"
    # Rendered from the card as stored (sorted keys), so rendering card.json later gives the same card.
    atomic_write_text(path, render_model_card(json.loads(text)))
    return path
