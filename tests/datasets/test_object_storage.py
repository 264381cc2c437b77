"""Datasets on object storage, against a real S3-compatible server on localhost (moto's server mode, started
here; s3fs talks HTTP to it as to AWS): `m2u-make-dataset -o s3://...` writes the bytes a local build writes
and resumes, and the loader and m2u-eval read `--data s3://...`; one build at a time per URL (the build lease at
the URL), readers unaffected by it."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from m2u.datasets import storage  # noqa: E402
from m2u.datasets.cli import main as make_dataset_main  # noqa: E402

from .conftest import lease_of_another_build  # noqa: E402

BUCKET = "m2u-test"
# m2u.datasets.storage.LEASE_NAME, spelled out: what a build leaves at the URL is part of its contract.
LEASE = ".m2u-build-lease.json"
BUILD_OPTIONS = ["--mask-engine", "synthetic", "--size", "64", "--shard-size", "5", "--workers", "1", "-q"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch, tmp_path):
    """An s3fs filesystem on the local server with a fresh bucket; every fsspec s3:// URL in m2u goes there."""
    import fsspec
    import s3fs

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "M2U_CACHE": str(tmp_path / "cache"),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_endpoint})
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, key="testing", secret="testing")
    if fs.exists(BUCKET):
        fs.rm(BUCKET, recursive=True)
    fs.mkdir(BUCKET)
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()


def _faces(tmp_path):
    from m2u.pipelines.demo_faces import write_demo_faces

    faces = tmp_path / "faces"
    write_demo_faces(faces, count=12)
    return faces


def _remote_snapshot(fs, prefix: str) -> dict[str, bytes]:
    """The same view as the dataset_snapshot fixture (no timings, no locks), read from the bucket."""
    root = f"{BUCKET}/{prefix}"
    return {
        path[len(root) + 1 :]: fs.cat(path)
        for path in sorted(fs.find(root))
        if not path.endswith(("stats.json", ".lock", "/.m2u-written", "/.m2u-uploaded.json"))
    }


def test_make_dataset_to_s3_writes_the_bytes_of_a_local_build_and_resumes(s3, tmp_path, dataset_snapshot):
    faces = _faces(tmp_path)
    options = ["--mask-engine", "synthetic", "--size", "64", "--shard-size", "5", "--workers", "1", "-q"]
    local = CliRunner().invoke(make_dataset_main, [str(faces), "-o", str(tmp_path / "local"), *options])
    assert local.exit_code == 0, local.output
    url = f"s3://{BUCKET}/datasets/demo"
    remote = CliRunner().invoke(make_dataset_main, [str(faces), "-o", url, *options])
    assert remote.exit_code == 0, remote.output
    expected = dataset_snapshot(tmp_path / "local")
    assert any(name.endswith(".tar") for name in expected) and "manifest.parquet" in expected
    assert _remote_snapshot(s3, "datasets/demo") == expected
    assert (
        json.loads(s3.cat(f"{BUCKET}/datasets/demo/stats.json"))["counts"]
        == json.loads((tmp_path / "local" / "stats.json").read_text())["counts"]
    )

    # Resumable from the bucket alone: with the local copy gone, a rerun fetches the build and rebuilds nothing.
    import shutil

    shutil.rmtree(tmp_path / "cache")
    rerun = CliRunner().invoke(make_dataset_main, [str(faces), "-o", url, *options])
    assert rerun.exit_code == 0, rerun.output
    stats = json.loads(s3.cat(f"{BUCKET}/datasets/demo/stats.json"))
    assert stats["resumed"] is True and stats["shards_built"] == 0, stats
    assert _remote_snapshot(s3, "datasets/demo") == expected


def test_loader_and_m2u_eval_read_data_from_s3(s3, tmp_path):
    from m2u.datasets import LoaderConfig, make_loader, write_synthetic_dataset
    from m2u.datasets.storage import upload
    from m2u.evaluation.cli import main as eval_main

    write_synthetic_dataset(tmp_path / "ds", 8, size=32, seed=0, split=(0.5, 0.25, 0.25))
    url = f"s3://{BUCKET}/ds"
    assert upload(tmp_path / "ds", url) > 0
    batches = list(make_loader(url, "train", LoaderConfig(batch_size=2, num_workers=0)))
    assert sum(len(b["key"]) for b in batches) == 4

    # m2u-eval --data s3://..., with tiny model files (the shipped model's size differs: it would resize).
    from m2u.training.checkpoint import save_model
    from m2u.training.models import CARU2Net, GeneratorConfig, MSeg, MSegConfig

    mseg = save_model(tmp_path / "mseg.safetensors", MSeg(MSegConfig(base_channels=4, levels=3)))
    generator = save_model(
        tmp_path / "generator.safetensors", CARU2Net(GeneratorConfig(width_multiplier=0.125, stages=3))
    )
    args = ["--data", url, "--mseg", str(mseg), "--generator", str(generator), "-o", str(tmp_path / "report")]
    args += [
        "--no-lpips",
        "--no-fid",
        "--no-identity",
        "--skip-paper-size-cost",
        "--latency-repeats",
        "1",
        "-q",
    ]
    result = CliRunner().invoke(eval_main, [*args, "--device", "cpu", "--grid-rows", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["n_samples"] == 2 and report["rows"]["m2u_composite"]["psnr"] is not None

    missing = CliRunner().invoke(eval_main, ["--data", f"s3://{BUCKET}/nothing", "-o", str(tmp_path / "r2")])
    assert missing.exit_code == 2 and "holds no dataset" in missing.output


def test_make_dataset_to_a_missing_bucket_is_refused_before_the_build(s3, tmp_path):
    faces = _faces(tmp_path)
    url = "s3://m2u-no-such-bucket/datasets/demo"
    result = CliRunner().invoke(
        make_dataset_main, [str(faces), "-o", url, "--mask-engine", "synthetic", "-q"]
    )
    assert result.exit_code == 2, result.output
    assert "cannot be written" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()  # refused before anything was built
    assert not s3.exists("m2u-no-such-bucket")  # and the check made no bucket


def test_a_build_is_refused_while_another_machines_build_holds_the_urls_lease(s3, tmp_path):
    url = f"s3://{BUCKET}/datasets/demo"
    lease = lease_of_another_build(30)
    s3.pipe(f"{BUCKET}/datasets/demo/{LEASE}", lease)
    result = CliRunner().invoke(make_dataset_main, [str(_faces(tmp_path)), "-o", url, *BUILD_OPTIONS])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1, result.output
    assert "build-host-2" in line and "pid 4242" in line and "wait for it to finish" in line
    renewed = datetime.fromisoformat(json.loads(lease)["renewed"]).timestamp()
    stale_at = datetime.fromtimestamp(renewed + storage.LEASE_STALE_S, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert f"run again after {stale_at}" in line
    s3.invalidate_cache()
    assert s3.find(f"{BUCKET}/datasets/demo") == [f"{BUCKET}/datasets/demo/{LEASE}"]  # nothing uploaded
    assert s3.cat(f"{BUCKET}/datasets/demo/{LEASE}") == lease  # and the other build's lease stays as it was
    assert not storage.cache_folder(url).exists()  # refused before anything was fetched


def test_the_stale_lease_of_a_dead_build_is_taken_over_with_one_line_and_removed_at_the_end(s3, tmp_path):
    url = f"s3://{BUCKET}/datasets/demo"
    s3.pipe(f"{BUCKET}/datasets/demo/{LEASE}", lease_of_another_build(3600))
    result = CliRunner().invoke(make_dataset_main, [str(_faces(tmp_path)), "-o", url, *BUILD_OPTIONS])
    assert result.exit_code == 0, result.output
    took_over = [line for line in result.output.splitlines() if "took over the build lease" in line]
    assert len(took_over) == 1 and "build-host-2" in took_over[0] and "pid 4242" in took_over[0], (
        result.output
    )
    s3.invalidate_cache()
    assert not s3.exists(f"{BUCKET}/datasets/demo/{LEASE}")
    assert s3.exists(f"{BUCKET}/datasets/demo/manifest.parquet")


@pytest.mark.parametrize("where", ["s3", "s3-without-exclusive-create", "local"])
def test_of_two_builds_taking_one_urls_lease_at_once_exactly_one_proceeds(
    where, request, tmp_path, monkeypatch
):
    if where.startswith("s3"):
        request.getfixturevalue("s3")
        url = f"s3://{BUCKET}/datasets/race"
    else:
        url = f"local://{tmp_path}/bucket/race"
    if where == "s3-without-exclusive-create":  # an object store that ignores S3's conditional write
        send = storage._send

        def overwrite(fs, target, **options):
            options.pop("exclusive", None)
            send(fs, target, **options)

        monkeypatch.setattr(storage, "_send", overwrite)
    # Both builds pass the URL check before either looks for a lease: they look, write and read back together.
    both_checked = threading.Barrier(2, timeout=20)
    check_output_url = storage.check_output_url

    def check_then_wait(*args, **kwargs):
        check_output_url(*args, **kwargs)
        both_checked.wait()

    monkeypatch.setattr(storage, "check_output_url", check_then_wait)
    monkeypatch.setattr(storage, "LEASE_SETTLE_S", 0.5, raising=False)
    # Two machines: each build its own cache.
    monkeypatch.setattr(
        storage,
        "cache_folder",
        lambda _url, reading=False: (
            tmp_path / threading.current_thread().name / ("read" if reading else "build")
        ),
    )
    built: list[str] = []
    refused: list[str] = []
    failed: list[BaseException] = []

    def build(local: str) -> None:
        Path(local).mkdir(parents=True, exist_ok=True)
        built.append(threading.current_thread().name)
        time.sleep(1.0)  # still building while the other one takes its step

    def run() -> None:
        try:
            storage.build_at_url(url, build)
        except storage.StorageError as error:
            refused.append(str(error))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            failed.append(error)

    threads = [threading.Thread(target=run, name=f"machine-{n}") for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failed and len(built) == 1 and len(refused) == 1, (built, refused, failed)
    assert "another m2u-make-dataset run is building" in refused[0] and f"pid {os.getpid()}" in refused[0]
    fs, root = storage._filesystem(url)
    fs.invalidate_cache()
    assert not fs.exists(f"{root}/{LEASE}")  # the build that proceeded gave it back


def test_readers_never_fetch_the_lease_of_a_build_running_at_the_url(s3, tmp_path):
    from m2u.datasets import LoaderConfig, make_loader, write_synthetic_dataset
    from m2u.datasets.storage import check_dataset, local_dataset, upload

    write_synthetic_dataset(tmp_path / "ds", 8, size=32, seed=0, split=(0.5, 0.25, 0.25))
    url = f"s3://{BUCKET}/ds"
    upload(tmp_path / "ds", url)
    s3.pipe(f"{BUCKET}/ds/{LEASE}", lease_of_another_build(0))  # a rebuild on another machine has started
    check_dataset(url)
    copy = Path(local_dataset(url))
    assert not (copy / LEASE).exists()
    batches = list(make_loader(url, "train", LoaderConfig(batch_size=2, num_workers=0)))
    assert sum(len(b["key"]) for b in batches) == 4
