"""The benchmark scripts run end to end on tiny inputs (the real runs are not CI: see benchmarks/)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest


@pytest.mark.slow
def test_celeba_cpu_run_on_a_tiny_synthetic_dataset(tmp_path, load_benchmark):
    from m2u.datasets import count_samples, write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, 16, size=32, seed=0, split=(0.5, 0.25, 0.25))
    script = load_benchmark("celeba_cpu_run")
    report = script.main(
        [
            "--data", str(data), "--out", str(tmp_path / "run"), "--budget-minutes", "0.3",
            "--eval-reserve-minutes", "0.1", "--width-multiplier", "0.125", "--mseg-base-channels", "4",
            "--batch-size", "2", "--num-workers", "0", "--val-every", "5",
        ]
    )  # fmt: skip
    written = json.loads((tmp_path / "run" / "celeba_cpu_run.json").read_text())
    assert written["test"] == report["test"]
    test = report["test"]
    assert test["samples"] == count_samples(data, "test") > 0  # every test sample once
    assert report["mseg_training"]["stop_reason"] == report["gan_training"]["stop_reason"] == "max_seconds"
    assert set(test["psnr"]) == {
        "m2unet_composite", "generator_raw", "masked_input", "telea_predicted_mask", "telea_ground_truth_mask",
    }  # fmt: skip
    assert 0 <= test["mseg"]["dice"] <= 1 and 0 <= test["mseg"]["pixel_accuracy"] <= 1
    assert test["targets"]["composite_beats_masked_input_psnr"] == (
        test["psnr"]["m2unet_composite"] > test["psnr"]["masked_input"]
    )
    assert (tmp_path / "run" / "gan" / "generator.safetensors").exists()
    # Evaluating the finished run again (here on its first test sample) adds to the same JSON, no training.
    again = script.main(
        ["--data", str(data), "--out", str(tmp_path / "run"), "--evaluate-only", "--max-test-samples", "1"]
    )
    assert again["test_1"]["samples"] == 1 and again["test"] == report["test"]
    assert json.loads((tmp_path / "run" / "celeba_cpu_run.json").read_text())["test_1"] == again["test_1"]


@pytest.mark.slow
def test_training_benchmark_quick_mode(tmp_path, load_benchmark):
    script = load_benchmark("training")
    out = tmp_path / "training.json"
    results = script.main(["--quick", "--steps", "1", "--latency-repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))  # tuples come back as lists
    assert results["params"]["discriminator"] == 2_764_737
    assert results["forward_latency_s"]["fp32"] > 0 and results["forward_latency_s"]["bf16_at_32"] > 0
    assert results["gan_train_step"]["32"]["images_per_second"] > 0
    assert "MACs" in results["cost"]["convention"]


def test_training_options_benchmark_tiny(tmp_path, load_benchmark):
    script = load_benchmark("training")
    out = tmp_path / "options.json"
    results = script.main(["--quick", "--options-only", "--options", "channels_last,bf16,one_thread",
                           "--options-rounds", "1", "--threads", "1", "--out", str(out)])  # fmt: skip
    options = results["training_options"]
    assert options["fp32"]["speedup_vs_fp32"] == 1.0
    assert options["channels_last"]["seconds_per_step"] > 0 and options["one_thread"]["speedup_vs_fp32"] > 0
    from m2u.training.device import cpu_native_bf16

    assert options["cpu_native_bf16"] == cpu_native_bf16()
    assert ("seconds_per_step" in options["bf16"]) == cpu_native_bf16()  # timed only where native
    assert options["precision_auto_resolves_to"] == ("bf16" if cpu_native_bf16() else "fp32")
    assert json.loads(out.read_text())["training_options"] == json.loads(json.dumps(options))


def test_cpu_native_bf16_reads_the_flags():
    from m2u.training.device import cpu_native_bf16

    assert cpu_native_bf16("flags\t\t: fpu sse avx512f avx512_bf16\n") is True
    assert cpu_native_bf16("flags\t\t: fpu sse amx_bf16 amx_tile\n") is True
    assert cpu_native_bf16("flags\t\t: fpu sse avx2 avx512f\n") is False


@pytest.mark.slow  # two CLI builds, one starting a local Ray: ~35 s on this machine
def test_make_dataset_ray_overhead_at_a_tiny_size(tmp_path, load_benchmark):
    """The Ray-against-multiprocessing comparison of benchmarks/make_dataset.py on 6 embedded demo faces."""
    pytest.importorskip("ray")
    from m2u.pipelines.demo_faces import write_demo_faces

    faces = tmp_path / "faces"
    write_demo_faces(faces, count=6)
    script = load_benchmark("make_dataset")
    out = tmp_path / "make_dataset.json"
    args = ["--ray-overhead-only", "--faces", str(faces), "--subset", "6", "--ray-shard-size", "2"]
    report = script.main([*args, "--ray-rounds", "1", "--workers", "2", "-o", str(out)])
    comparison = json.loads(out.read_text())["ray_vs_multiprocessing"]
    assert comparison == report["ray_vs_multiprocessing"]
    mp, ray = comparison["runs"]["multiprocessing"][0], comparison["runs"]["ray"][0]
    assert mp["photos"] == ray["photos"] == 6 and mp["counts"] == ray["counts"]
    assert comparison["ray_overhead_ratio_median"] == round(ray["wall_s"] / mp["wall_s"], 3)


def _high_frequency(image) -> float:
    """Mean absolute Laplacian: what a small face, aligned up to 64 px, lacks."""
    import cv2

    return float(abs(cv2.Laplacian(image.astype("float32").mean(2), cv2.CV_32F)).mean())


def test_the_mask_classifier_low_res_augmentation(load_benchmark):
    """--low-res P: with P = 0 photometric draws nothing more (earlier commands make the same file); with P = 1 every
    crop comes back at 64 px with far less fine detail, as a 12-40 px face aligned up to 64 px has."""
    import numpy as np

    script = load_benchmark("train_mask_classifier")
    crop = np.random.default_rng(7).integers(0, 256, (64, 64, 3)).astype(np.uint8)  # all fine detail
    plain_aug = script.Augmentation(low_res=0.0)
    plain, after = [], []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        rng.random()  # stands for the coin P > 0 tosses first
        plain.append(script.photometric(crop, rng, plain_aug))
        after.append(rng.random())
    # At a P > 0 that never comes up, the coin is the only draw more: at P = 0 there is none.
    never = script.Augmentation(low_res=1e-12)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        assert (
            np.array_equal(script.photometric(crop, rng, never), plain[seed]) and rng.random() == after[seed]
        )
    always = script.Augmentation(low_res=1.0)
    small = [script.photometric(crop, np.random.default_rng(seed), always) for seed in range(12)]
    assert all(s.shape == crop.shape and s.dtype == np.uint8 for s in small)
    assert np.mean([_high_frequency(s) for s in small]) < 0.5 * np.mean([_high_frequency(p) for p in plain])


def test_the_upside_down_crops_of_the_classifiers_training(load_benchmark):
    """`upside_down_crop`: the face turned 180 degrees, its 68 points refitted as if upright, aligned at 64 px: not
    the upright crop. `wants_upside_down` at --upside-down 0 draws nothing (the commands that made earlier files still make them)."""
    import numpy as np

    from m2u.datasets.synthetic import make_synthetic_sample

    script = load_benchmark("train_mask_classifier")
    sample = make_synthetic_sample(128, seed=3)
    turned = script.upside_down_crop(sample.masked, sample.landmarks, np.random.default_rng(0))
    upright = script.jittered_crop(sample.masked, sample.landmarks, np.random.default_rng(0))
    assert turned.shape == upright.shape == (64, 64, 3) and turned.dtype == np.uint8
    assert np.abs(turned.astype(int) - upright.astype(int)).mean() > 10
    rng = np.random.default_rng(5)
    off, on = script.Augmentation(upside_down=0.0), script.Augmentation(upside_down=1.0)
    assert not script.wants_upside_down(rng, off) and rng.random() == np.random.default_rng(5).random()
    assert script.wants_upside_down(np.random.default_rng(5), on)


def test_real_masks_writes_each_photo_turned(tmp_path, load_benchmark):
    import cv2
    import numpy as np

    script = load_benchmark("real_masks")
    source = tmp_path / "in"
    source.mkdir()
    image = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    cv2.imwrite(str(source / "a.png"), image)
    script._write_turned(source, tmp_path / "turned", 2)
    back = cv2.imread(str(tmp_path / "turned" / "a.png"))
    assert np.array_equal(back, image[::-1, ::-1])
    script._write_turned(
        source, tmp_path / "sideways", 3
    )  # 90 degrees clockwise: the top row becomes the right column
    back = cv2.imread(str(tmp_path / "sideways" / "a.png"))
    assert back.shape == (30, 20, 3) and np.array_equal(back[:, -1], image[0])


def test_the_mask_classifier_training_options(load_benchmark, capsys):
    """--width, --label-smoothing and --mixup reach the net: the width is the net's, and a net trained with label
    smoothing 0.5 (every target 0.5... 0.75) cannot be as sure as one trained without it on the same crops."""
    import numpy as np
    import torch

    script = load_benchmark("train_mask_classifier")
    rng = np.random.default_rng(0)
    dark = [np.clip(rng.normal(40, 10, (64, 64, 3)), 0, 255).astype(np.uint8) for _ in range(32)]
    light = [np.clip(rng.normal(210, 10, (64, 64, 3)), 0, 255).astype(np.uint8) for _ in range(32)]
    train = (dark + light, [1] * 32 + [0] * 32)
    test = (dark[:4] + light[:4], [1] * 4 + [0] * 4)

    def sureness(**options) -> float:
        torch.manual_seed(0)
        net = script.train_net(train, test, 40, "dark", "light", **options).eval()
        from m2u.inference.mask_presence import to_input

        with torch.no_grad():
            p = torch.sigmoid(net(to_input(test[0]))).numpy()
        assert net.features[0].out_channels == options.get("width", 16)
        return float(np.abs(p - 0.5).mean())

    plain = sureness(width=8)
    assert sureness(width=8, label_smoothing=0.5) < plain
    assert 0 < sureness(width=8, mixup=0.4) <= 0.5
    assert "held-out accuracy" in capsys.readouterr().out


def test_the_mask_classifier_crop_sets_round_trip_and_want_an_npz_name(
    tmp_path, load_benchmark, monkeypatch, capsys
):
    """`save_crop_sets` writes the crops whole (no temporary left beside them) and `load_crop_sets` gives them back;
    --training-set / --cache without the .npz suffix (numpy would add it, so the file would never be found again)
    stop with a clear error before anything is built."""
    import sys

    import numpy as np
    import pytest

    script = load_benchmark("train_mask_classifier")
    rng = np.random.default_rng(0)
    train = (list(rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)), [1, 0, 1])
    test = (list(rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)), [0, 1])
    path = tmp_path / "crops.npz"
    script.save_crop_sets(path, train, test)
    assert {p.name for p in tmp_path.iterdir()} <= {"crops.npz", ".m2u-written"}  # m2u's record, no temporary
    (train_x, train_y), (test_x, test_y) = script.load_crop_sets(path)
    assert np.array_equal(np.stack(train_x), np.stack(train[0])) and list(train_y) == train[1]
    assert np.array_equal(np.stack(test_x), np.stack(test[0])) and list(test_y) == test[1]
    monkeypatch.setattr(sys, "argv", ["train_mask_classifier.py", "--training-set", str(tmp_path / "crops")])
    with pytest.raises(SystemExit) as stopped:
        script.main()
    assert stopped.value.code == 2 and "give a .npz file name" in capsys.readouterr().err
    assert not (tmp_path / "crops.npz.npz").exists()


def test_the_orientation_training_headwear_covers_the_head_and_leaves_the_face(load_benchmark):
    """`headwear` (--headwear): a cap, a surgical cap or a hood drawn from the 68 points: the same picture for the
    same seed, cloth over the head, the mouth and nose untouched (only the face's own features may tell the net which
    way up it is)."""
    import numpy as np

    from m2u.datasets.synthetic import make_synthetic_sample

    script = load_benchmark("train_orientation_classifier")
    sample = make_synthetic_sample(128, seed=3)
    points = np.asarray(sample.landmarks)
    x0, y0 = np.floor(points[31:36].min(0)).astype(int)  # from the nostrils ...
    x1, y1 = np.ceil(points[48:68].max(0)).astype(int)  # ... to the lips
    brow_top = int(points[17:27, 1].min())
    covered = []
    for seed in range(9):
        drawn = script.headwear(sample.masked, points, np.random.default_rng(seed))
        again = script.headwear(sample.masked, points, np.random.default_rng(seed))
        assert drawn.shape == sample.masked.shape and drawn.dtype == np.uint8 and np.array_equal(drawn, again)
        assert np.array_equal(drawn[y0 : y1 + 1, x0 : x1 + 1], sample.masked[y0 : y1 + 1, x0 : x1 + 1])
        changed = np.abs(drawn.astype(int) - sample.masked.astype(int)).sum(2) > 0
        covered.append(changed[:brow_top].mean())
    assert min(covered) > 0.05


def test_the_mask_classifier_pastel_colours(load_benchmark):
    """--pastel P: at P = 0 `mask_colour` draws as before (earlier commands make the same file); at P = 1 every colour
    is pale and little saturated (pink, peach, lavender, mint: near skin)."""
    import cv2
    import numpy as np

    script = load_benchmark("train_mask_classifier")
    # At a P > 0 that never comes up, the coin is the only draw more: at P = 0 there is none.
    never, off, always = (script.Augmentation(pastel=p) for p in (1e-12, 0.0, 1.0))
    with_coin = [script.mask_colour(np.random.default_rng(seed), never) for seed in range(20)]
    for seed in range(20):
        rng = np.random.default_rng(seed)
        rng.random()  # stands for the coin
        assert np.array_equal(script.mask_colour(rng, off), with_coin[seed])
    pastel = np.array(
        [script.mask_colour(np.random.default_rng(seed), always) for seed in range(40)], np.float32
    )
    hsv = cv2.cvtColor(np.clip(pastel, 0, 255).astype(np.uint8)[None], cv2.COLOR_RGB2HSV)[0]
    assert (hsv[:, 2] >= 180).all() and (hsv[:, 1] <= 115).all()
    assert len({int(h) // 30 for h in hsv[:, 0]}) >= 4  # every hue, not one pink


def test_the_mask_classifier_collar_height(load_benchmark):
    """--collar-height H: a hard negative's collar rises up to H of the nose-to-chin height over the chin (a turtleneck
    up to the lower lip covers more of the chin than one at the jaw line), and the lips stay bare at any height."""
    import numpy as np

    from m2u.datasets.synthetic import make_synthetic_sample

    script = load_benchmark("train_mask_classifier")
    sample = make_synthetic_sample(128, seed=3)
    points = np.asarray(sample.landmarks)
    seed = next(s for s in range(100) if np.random.default_rng(s).integers(3) == 2)  # the collar kind
    x0, y0 = np.floor(points[60:68].min(0)).astype(int) + 1  # inside the inner lips
    x1, y1 = np.ceil(points[60:68].max(0)).astype(int) - 1
    chin = slice(int(points[57][1]) + 2, int(points[8][1]))  # below the lower lip, above the chin's point
    columns = slice(int(points[6][0]), int(points[10][0]))
    covered = {}
    for height in (0.0, 0.6):
        aug = script.Augmentation(collar_height=height)
        out = script.hard_negative(sample.unmasked, points, np.random.default_rng(seed), aug)
        assert np.array_equal(out[y0 : y1 + 1, x0 : x1 + 1], sample.unmasked[y0 : y1 + 1, x0 : x1 + 1])
        covered[height] = (np.abs(out.astype(int) - sample.unmasked.astype(int)).sum(2) > 0)[
            chin, columns
        ].mean()
    assert covered[0.6] > covered[0.0] + 0.2


def test_pack_classifier_ensemble_packs_members_in_order_and_never_overwrites(tmp_path, load_benchmark):
    """pack_classifier_ensemble.py: the packed file's members are the given nets, in order (an ensemble given is
    unpacked into its nets); an existing output, a missing member and a single net are refused."""
    import torch
    from safetensors.torch import load_file, save_file

    from m2u.inference.mask_presence import MaskPresenceNet, classifier_from_weights

    script = load_benchmark("pack_classifier_ensemble")
    files = []
    for seed in range(3):
        torch.manual_seed(seed)
        file = tmp_path / f"seed{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in MaskPresenceNet(8).state_dict().items()}, str(file))
        files.append(file)
    pair = tmp_path / "pair.safetensors"
    assert script.pack(files[:2], pair) == 2
    assert script.pack([pair, files[2]], tmp_path / "three.safetensors") == 3
    packed = load_file(str(tmp_path / "three.safetensors"))
    for k, file in enumerate(files):
        for key, value in load_file(str(file)).items():
            assert torch.equal(packed[f"members.{k}.{key}"], value)
    assert len(classifier_from_weights(packed).members) == 3
    before = pair.read_bytes()
    with pytest.raises(FileExistsError, match="exists"):
        script.pack(files, pair)
    assert pair.read_bytes() == before
    with pytest.raises(FileNotFoundError, match="no classifier file"):
        script.pack([files[0], tmp_path / "missing.safetensors"], tmp_path / "x.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="broken.safetensors: not a classifier file"):
        script.pack([files[0], broken], tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="at least two"):
        script.pack(files[:1], tmp_path / "one.safetensors")
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "one.safetensors").exists()


def test_restored_region_scores_synthetic_psnr_and_pools_real_remnants_by_half(load_benchmark):
    import numpy as np

    bench = load_benchmark("restored_region")

    class PaintsTheTopHalfBlack:
        """A stand-in unmasker: restores one face, painting the top half of the photo black."""

        def unmask_found(self, image, found):
            result = image.copy()
            result[: image.shape[0] // 2] = 0
            return result, ["face"], []

    original = np.full((4, 4, 3), 100, np.uint8)
    masked = original.copy()
    masked[:2] = 200
    synthetic = [{"masked": masked, "original": original, "box": (0, 0, 4, 4), "found": []}]
    label = np.zeros((4, 4), bool)
    label[1:3] = True  # half of it in the painted top half
    dark = np.full((4, 4, 3), 5, np.uint8)  # painted black: changed by 5 levels only
    bright = np.full((4, 4, 3), 200, np.uint8)
    real = [
        {"name": "even.jpg", "image": bright, "label": label, "found": []},
        {"name": "odd.jpg", "image": dark, "label": label, "found": []},
    ]
    figures = bench.measure(PaintsTheTopHalfBlack(), synthetic, real)
    # Synthetic: the top half painted 0 against 100, the bottom half exact: MSE 5000 -> PSNR 10 log10(255^2 / 5000).
    assert figures["synthetic_psnr_mean"] == pytest.approx(10 * np.log10(255**2 / 5000), abs=1e-3)
    assert figures["synthetic_faces_restored"] == 1 and figures["real_crops_restored"] == 2
    # Real: the label's lower row is left exactly in both crops (half of each label); the dark crop's painted row
    # changed by 5 levels, a near remnant.
    assert figures["real_remnants"] == 0.5 and figures["real_remnants_even"] == 0.5
    assert figures["real_remnants_within_12_levels_even"] == 0.5
    assert figures["real_remnants_within_12_levels_odd"] == 1.0
    assert figures["real_remnants_within_12_levels"] == 0.75


def _fake_benchmark_runs(monkeypatch, module, results):
    """run_all with benchmarks/results replaced by `results` and each script's run replaced by a recorder that writes
    the JSON file its --out names; returns the list the commands are recorded in."""
    import subprocess

    commands: list[list[str]] = []

    def run(command, *args, **kwargs):
        commands.append(command)
        out = Path(command[command.index("--out") + 1])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("{}")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(module, "RESULTS", results)
    monkeypatch.setattr(module.subprocess, "run", run)
    return commands


def test_run_all_quick_writes_into_a_temporary_folder_never_the_record(
    tmp_path, monkeypatch, capsys, load_benchmark
):
    """--quick: every script writes its JSON into a fresh temporary folder (printed), none into benchmarks/results,
    and no summary.md is written; --summary only prints; the record run writes results/ and summary.md."""
    import tempfile

    run_all = load_benchmark("run_all")
    results = tmp_path / "results"
    results.mkdir()
    (results / "training.json").write_text(json.dumps({"params": {"generator": 123}}))
    record = {p.name: p.read_text() for p in results.iterdir()}
    commands = _fake_benchmark_runs(monkeypatch, run_all, results)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    assert run_all.main(["--quick"]) == 0
    assert {p.name: p.read_text() for p in results.iterdir()} == record  # the record untouched, no summary.md
    assert len(commands) == len(run_all.HEADLINES)
    (out_dir,) = scratch.iterdir()
    assert str(out_dir) in capsys.readouterr().out
    for command, name in zip(commands, run_all.HEADLINES):
        assert command[command.index("--out") + 1] == str(out_dir / f"{name}.json")
        assert ("--quick" in command) == (name != "masking")
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{n}.json" for n in run_all.HEADLINES)

    commands.clear()
    given = tmp_path / "given"
    assert run_all.main(["--quick", "--out-dir", str(given)]) == 0
    assert all(c[c.index("--out") + 1].startswith(str(given)) for c in commands)
    assert not (given / "summary.md").exists()
    with pytest.raises(SystemExit):
        run_all.main(["--quick", "--out-dir", str(results)])

    commands.clear()
    assert run_all.main(["--summary"]) == 0
    assert commands == [] and {p.name: p.read_text() for p in results.iterdir()} == record
    assert "| training | generator params | 123 |" in capsys.readouterr().out

    assert run_all.main([]) == 0  # the record run (make bench): benchmarks/results, summary.md beside
    assert all(c[c.index("--out") + 1].startswith(str(results)) for c in commands)
    assert "| benchmark | figure | value |" in (results / "summary.md").read_text()


def test_make_dataset_measures_each_builds_own_peak_memory(load_benchmark):
    """run_measured: a process's own peak resident set (its waited-for workers included), not the largest of every
    child so far (RUSAGE_CHILDREN, which a large earlier build would keep reporting)."""
    import sys

    script = load_benchmark("make_dataset")
    allocate = "b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096])"  # ~300 MiB, touched
    in_a_worker = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {allocate!r}], check=True)"
    _, large_kib = script.run_measured([sys.executable, "-c", in_a_worker])
    _, small_kib = script.run_measured([sys.executable, "-c", "pass"])
    assert large_kib / 1024 > 250  # the worker's memory is counted
    assert small_kib / 1024 < 150  # the later, small process's own peak
    with pytest.raises(subprocess.CalledProcessError):
        script.run_measured([sys.executable, "-c", "raise SystemExit(3)"])


def test_training_quick_defaults_leave_out_compile_and_extra_rounds(load_benchmark):
    script = load_benchmark("training")
    quick = script.parse_args(["--quick"])
    assert quick.options == ("fp32", "channels_last") and quick.options_rounds == 1
    assert quick.steps == 1 and quick.latency_repeats == 1
    full = script.parse_args([])
    assert full.options == script.OPTIONS and full.options_rounds == 3 and full.steps == 2
    assert full.latency_repeats == 3
    named = script.parse_args(["--quick", "--options", "fp32,compile", "--options-rounds", "2"])
    assert named.options == ("fp32", "compile") and named.options_rounds == 2


def test_restored_region_limit_takes_the_first_crops(tmp_path, load_benchmark):
    import numpy as np

    from m2u.core.imageio import write_image

    bench = load_benchmark("restored_region")
    folder = tmp_path / "faces" / "real-mask-seg"
    (folder / "image").mkdir(parents=True)
    (folder / "mask").mkdir()
    for name in ("c.jpg", "a.jpg", "b.jpg"):
        image = np.full((16, 16, 3), 90, np.uint8)
        label = np.zeros((16, 16, 3), np.uint8)
        label[8:] = 255
        write_image(folder / "image" / name, image)
        write_image(folder / "mask" / name, label)
    assert [c["name"] for c in bench.labelled_crops(tmp_path, 2)] == ["a.jpg", "b.jpg"]
    assert [c["name"] for c in bench.labelled_crops(tmp_path)] == ["a.jpg", "b.jpg", "c.jpg"]
    assert bench.labelled_crops(tmp_path, 1)[0]["label"][8:].all()


def test_train_masked_detector_never_writes_the_shipped_model_without_install(tmp_path, load_benchmark):
    from m2u.masking.masked_faces import MASKED_HOG_MODEL

    script = load_benchmark("train_masked_detector")
    assert "runs" in script.DEFAULT_OUT.parts and Path(MASKED_HOG_MODEL) != script.DEFAULT_OUT
    shipped = Path(MASKED_HOG_MODEL).read_bytes()
    with pytest.raises(SystemExit) as refused:
        script.main(["-o", str(MASKED_HOG_MODEL), "--shared", str(tmp_path)])
    assert refused.value.code == 2  # refused before any data is read or anything trained
    assert Path(MASKED_HOG_MODEL).read_bytes() == shipped
    trained, target = tmp_path / "new.svm", tmp_path / "models" / "masked_face_hog.svm"
    trained.write_bytes(b"new")
    target.parent.mkdir()
    target.write_bytes(b"old")
    assert script.install_detector(trained, target) == target
    assert target.read_bytes() == b"new" and [p.name for p in target.parent.iterdir()] == [target.name]


def test_pack_classifier_ensemble_refuses_a_member_given_twice(tmp_path, load_benchmark):
    import shutil

    import torch
    from safetensors.torch import save_file

    from m2u.inference.mask_presence import MaskPresenceNet

    script = load_benchmark("pack_classifier_ensemble")
    files = []
    for seed in range(2):
        torch.manual_seed(seed)
        file = tmp_path / f"seed{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in MaskPresenceNet(8).state_dict().items()}, str(file))
        files.append(file)
    with pytest.raises(ValueError, match="the same file"):
        script.pack([files[0], files[1], files[0]], tmp_path / "x.safetensors")
    copy = tmp_path / "copy.safetensors"
    shutil.copyfile(files[1], copy)
    with pytest.raises(ValueError, match="a copy of"):
        script.pack([files[1], copy], tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize(
    ("name", "ends"),
    [
        ("masking", "the other modes below write are kept)."),
        ("masking_faces", "writes benchmarks/results/masking_faces.json."),
        ("onthefly_render", "the figures behind the device kit's design."),
    ],
)
def test_benchmark_help_shows_the_whole_first_paragraph(name, ends):
    import sys

    script = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert " ".join(ends.split()) in " ".join(done.stdout.split())
