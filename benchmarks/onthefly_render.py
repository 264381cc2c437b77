"""What a face pack costs and what rendering its pairs costs (issue 27): the figures behind the device kit's design.

    .venv/bin/python benchmarks/onthefly_render.py            # after `make device-kit` (reads .kit/source, .kit/pack)

1. Bytes per face against the stored side (JPEG q90), and what storing smaller loses: PSNR of the face brought
   back to 256 (bicubic) against the 256 crop the dataset builder made (its JPEG q95), next to the PSNR the
   JPEG q90 round trip at 256 alone costs. The loss is to be read against the ~25-31 dB a restorer reaches.
2. The CPU cost of one on-the-fly training pair at 256: JPEG decode (+ resize), mask rendering (the dataset
   builder's engine and options), the pair mask and flip; one process, one thread, median over the samples.
   From it: the pairs per second 15 render workers (the H200 machine's 16 cores less the training process)
   deliver, i.e. the GAN steps per second at batch 8 above which the GPU would wait for data.
3. The DataLoader (OnTheFlyDataSource) with this machine's workers: pairs per second, end to end.

Writes benchmarks/results/onthefly_render.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "onthefly_render.json"
DEVICE_RENDER_WORKERS = 15


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / mse) if mse else float("inf")


def store_sizes(source: Path, samples: int, sizes: list[int], quality: int) -> dict:
    from m2u.datasets.facepack import _split_samples

    crops = []
    for _, data, _ in _split_samples(source, "train"):
        crops.append(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
        if len(crops) >= samples:
            break
    full = crops[0].shape[0]
    out = {}
    for side in sizes:
        nbytes, psnrs = [], []
        for crop in crops:
            small = crop if side == full else cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
            ok, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
            back = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
            if side != full:
                back = cv2.resize(back, (full, full), interpolation=cv2.INTER_CUBIC)
            nbytes.append(len(encoded))
            psnrs.append(_psnr(back, crop))
        out[str(side)] = {"bytes_per_face": round(statistics.mean(nbytes), 1),
                          "psnr_vs_dataset_crop_db": round(statistics.mean(psnrs), 2)}  # fmt: skip
    return {"faces": len(crops), "quality": quality, "trained_at": full, "by_stored_side": out}


def render_cost(pack: Path, samples: int) -> dict:
    from m2u.training.onthefly import RenderedPairs

    cv2.setNumThreads(1)
    pairs = RenderedPairs(pack, "train", seed=0, epoch=0)
    pairs.render(0)  # warm-up: templates, masker
    decode, total, attempts = [], [], 0
    for index in range(min(samples, len(pairs))):
        started = time.process_time()
        pairs.pack.face("train", index)
        decode.append(time.process_time() - started)
        started = time.process_time()
        sample = pairs.render(index)
        total.append(time.process_time() - started)
        attempts += sample["attempts"]
    ms = statistics.median(total) * 1000
    per_worker = 1000 / ms
    return {
        "samples": len(total),
        "cpu_ms_per_pair_median": round(ms, 2),
        "cpu_ms_per_pair_mean": round(statistics.mean(total) * 1000, 2),
        "cpu_ms_decode_median": round(statistics.median(decode) * 1000, 2),
        "renders_per_pair": round(attempts / len(total), 3),
        "pairs_per_second_one_worker": round(per_worker, 1),
        f"pairs_per_second_{DEVICE_RENDER_WORKERS}_workers": round(per_worker * DEVICE_RENDER_WORKERS, 1),
        "gan_steps_per_second_fed_at_batch_8": round(per_worker * DEVICE_RENDER_WORKERS / 8, 1),
    }


def loader_rate(pack: Path, workers: int, batches: int) -> dict:
    from m2u.training.onthefly import OnTheFlyDataSource

    source = OnTheFlyDataSource(str(pack), batch_size=8, seed=0, num_workers=workers)
    iterator = iter(source.batches("train", 0))
    next(iterator)  # workers started
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - started
    return {"workers": workers, "batches": batches, "pairs_per_second": round(batches * 8 / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--kit", type=Path, default=REPO / ".kit")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--sizes", default="256,224,192,160")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    pack, source = args.kit / "pack", args.kit / "source"
    if not (pack / "pack.json").is_file():
        print(f"onthefly_render: no face pack at {pack}: run `make device-kit` first", file=sys.stderr)
        return 2
    report = {
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": list(os.getloadavg())},
        "pack": json.loads((pack / "pack.json").read_text()),
    }
    if source.is_dir():
        report["store_size"] = store_sizes(source, args.samples, [int(s) for s in args.sizes.split(",")], 90)
    report["render"] = render_cost(pack, args.samples)
    report["loader"] = loader_rate(pack, args.workers, 20)
    report["machine"]["load_avg_at_end"] = list(os.getloadavg())
    report["pack"].pop("source", None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("store_size", "render", "loader") if k in report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
