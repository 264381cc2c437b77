"""A dataset at a URL stays the bytes of its local build (m2u.datasets.storage): an `overwrite` build replaces
every file whose content changed (tars pad to 10,240-byte records, so a rebuilt one often has the old size) and
removes the earlier build's files it no longer has, never a person's own; a reader's cache re-fetches what
changed; a stopped build uploads what it committed (without the manifest); and m2u-make-dataset refuses a URL
output it cannot use before any work. The bucket is fsspec's in-process memory:// filesystem (Python API) or a
local folder through fsspec's local:// (the CLI, which refuses memory://)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import fsspec
import pytest
from click.testing import CliRunner

from m2u.datasets import storage
from m2u.datasets.build import BuildConfig, BuildError, build_dataset
from m2u.datasets.cli import main as make_dataset_main
from m2u.datasets.storage import (
    UPLOAD_RECORD_NAME,
    StorageError,
    UploadError,
    build_at_url,
    cache_folder,
    fetch,
    local_dataset,
)

from .conftest import lease_of_another_build

# The faces' key order does not matter here: a few samples, several shards per split.
FACES = 12
# m2u.datasets.storage.LEASE_NAME, spelled out: what a build leaves at the URL is part of its contract.
LEASE = ".m2u-build-lease.json"


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    from m2u.pipelines.demo_faces import write_demo_faces

    folder = tmp_path_factory.mktemp("faces")
    write_demo_faces(folder, count=FACES)
    return folder


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """A memory:// URL of this test's own (the memory filesystem is one per process), and a cache of its own."""
    monkeypatch.setenv("M2U_CACHE", str(tmp_path / "cache"))
    url = f"memory://m2u-{tmp_path.name}/datasets/demo"
    yield url
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _build(url: str, faces: Path, **options):
    config = BuildConfig(mask_engine="synthetic", size=64, workers=1, progress=False, **options)
    return build_at_url(url, lambda local: build_dataset([str(faces)], local, config))


def _remote(url: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(url)
    return {path[len(root) + 1 :]: fs.cat_file(path) for path in sorted(fs.find(root))}


def _local(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def _mirrors(url: str, local: Path) -> None:
    remote = _remote(url)
    remote.pop(UPLOAD_RECORD_NAME, None)
    expected = _local(local)
    assert sorted(remote) == sorted(expected)
    differ = [name for name in expected if remote[name] != expected[name]]
    assert not differ, f"the URL holds other bytes than the local build: {differ}"


def test_an_overwrite_build_leaves_the_url_holding_exactly_the_new_build(bucket, faces):
    fs, root = fsspec.core.url_to_fs(bucket)
    _build(bucket, faces, shard_size=2)
    local = cache_folder(bucket)
    _mirrors(bucket, local)
    fs.pipe_file(f"{root}/notes.txt", b"a person's own file beside the dataset")
    old_tars = {name: data for name, data in _remote(bucket).items() if name.endswith(".tar")}

    # Another seed: other masks in shards of the same size (tars pad to 10,240-byte records).
    _build(bucket, faces, shard_size=2, seed=1, overwrite=True)
    _mirrors(bucket, local)
    new = _remote(bucket)
    assert any(
        len(new[name]) == len(data) and new[name] != data for name, data in old_tars.items() if name in new
    )

    # Bigger shards: fewer of them; the earlier build's extra shards, stats and markers go from the URL too.
    _build(bucket, faces, shard_size=5, seed=1, overwrite=True)
    _mirrors(bucket, local)
    remote = _remote(bucket)
    assert remote["notes.txt"] == b"a person's own file beside the dataset"  # not m2u's: kept
    assert "train/train-000003.tar" in old_tars and "train/train-000003.tar" not in remote
    assert ".m2u-build/train-000003.parquet" not in remote
    record = json.loads(remote[UPLOAD_RECORD_NAME])["files"]
    assert "notes.txt" not in record and record["manifest.parquet"]["sha256"]

    # A rerun with nothing changed uploads nothing; one refused (other arguments) leaves the dataset there as it is.
    assert storage.upload(local, bucket) == 0
    with pytest.raises(BuildError, match="different arguments"):
        _build(bucket, faces, shard_size=3, seed=1)
    assert _remote(bucket) == remote


def test_a_reader_cache_refetches_what_a_rebuild_changed(bucket, faces, tmp_path, monkeypatch):
    from m2u.datasets import LoaderConfig, make_loader

    _build(bucket, faces, shard_size=2)
    reader_cache = tmp_path / "reader-cache"
    monkeypatch.setenv("M2U_CACHE", str(reader_cache))
    first = Path(local_dataset(bucket))
    assert first == cache_folder(bucket, reading=True) and first.is_relative_to(reader_cache)

    # Another machine rebuilds the dataset there; this reader's cache holds the old files.
    monkeypatch.setenv("M2U_CACHE", str(tmp_path / "cache"))
    _build(bucket, faces, shard_size=2, seed=1, overwrite=True)
    monkeypatch.setenv("M2U_CACHE", str(reader_cache))
    assert Path(local_dataset(bucket)) == first
    remote = _remote(bucket)
    remote.pop(UPLOAD_RECORD_NAME, None)
    assert _local(first) == remote
    batches = list(make_loader(bucket, "train", LoaderConfig(batch_size=4, num_workers=0, verify=True)))
    assert sum(len(b["key"]) for b in batches) > 0


def test_a_cache_found_inconsistent_is_named_stale_not_a_dataset_to_rebuild(
    bucket, faces, tmp_path, monkeypatch
):
    """A URL without an upload record (written by an m2u before it kept one) is fetched by sizes: a cached copy
    whose shards disagree with their records is the cache's fault, and the message says where it is."""
    _build(bucket, faces, shard_size=5)
    fs, root = fsspec.core.url_to_fs(bucket)
    if fs.exists(f"{root}/{UPLOAD_RECORD_NAME}"):
        fs.rm_file(f"{root}/{UPLOAD_RECORD_NAME}")
    monkeypatch.setenv("M2U_CACHE", str(tmp_path / "reader-cache"))
    local = Path(local_dataset(bucket))
    stats_name = "train/train-000000_stats.json"
    stats = json.loads((local / stats_name).read_text())
    stats["sha256"] = "0" * 64
    fs.pipe_file(f"{root}/{stats_name}", json.dumps(stats, indent=4).encode())  # another size: fetched again
    with pytest.raises(StorageError, match=r"the local copy of .* in .* is stale") as caught:
        local_dataset(bucket)
    assert str(local) in str(caught.value) and "rebuil" not in str(caught.value).split("stale")[0]


def test_a_stopped_build_uploads_what_it_committed_and_a_rerun_elsewhere_resumes(
    bucket, faces, tmp_path, monkeypatch
):
    import m2u.datasets.build as build_module

    commit_shard, commits = build_module.commit_shard, []

    def commit_then_stop(*args, **kwargs):
        result = commit_shard(*args, **kwargs)
        commits.append(result)
        if len(commits) == 2:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(build_module, "commit_shard", commit_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _build(bucket, faces, shard_size=2)
    remote = _remote(bucket)
    assert sum(name.endswith(".tar") for name in remote) == 2
    assert sum(name.startswith(".m2u-build/") and name.endswith("0.parquet") for name in remote) >= 1
    assert "manifest.parquet" not in remote  # never a half build as finished
    assert "manifest.parquet" not in json.loads(remote[UPLOAD_RECORD_NAME])["files"]
    with pytest.raises(StorageError, match="holds no dataset yet: a build there has not finished"):
        fetch(bucket, tmp_path / "reader")

    monkeypatch.setattr(build_module, "commit_shard", commit_shard)
    monkeypatch.setenv("M2U_CACHE", str(tmp_path / "other-machine"))
    result = _build(bucket, faces, shard_size=2)
    assert result.stats["resumed"] is True and result.stats["shards_kept"] == 2
    _mirrors(bucket, cache_folder(bucket))
    assert (fetch(bucket, tmp_path / "reader") / "manifest.parquet").is_file()


@pytest.fixture
def local_bucket(tmp_path, monkeypatch) -> Path:
    """A folder standing in for a bucket, as local:// (fsspec's own settings: it makes no folders for a file)."""
    monkeypatch.setenv("M2U_CACHE", str(tmp_path / "cache"))
    return tmp_path / "bucket"


def _cli(faces: Path, url: str, *extra: str):
    options = ["--mask-engine", "synthetic", "--size", "64", "--shard-size", "5", "--workers", "1", "-q"]
    return CliRunner().invoke(make_dataset_main, [str(faces), "-o", url, *options, *extra])


def _one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


def test_a_partition_build_to_a_url_is_refused_before_any_work(faces, local_bucket, tmp_path):
    result = _cli(faces, f"local://{local_bucket}/ds", "--partition", "0/2")
    assert result.exit_code == 2, result.output
    assert "--partition" in _one_line(result.output) and "URL" in result.output
    assert not (tmp_path / "cache").exists() and not local_bucket.exists()


def test_a_build_to_a_file_system_with_folders_makes_the_folders_its_files_need(
    faces, local_bucket, tmp_path
):
    # local:// (like sftp:// or hdfs://) refuses a file whose folder is missing; object stores have no folders.
    url = f"local://{local_bucket}/nested/ds"
    result = _cli(faces, url)
    assert result.exit_code == 0, result.output
    remote = local_bucket / "nested" / "ds"
    assert (remote / "manifest.parquet").is_file() and list((remote / "train").glob("*.tar"))
    assert json.loads((remote / UPLOAD_RECORD_NAME).read_text())["files"]
    assert local_dataset(url) == str(cache_folder(url, reading=True))


def test_a_build_at_a_url_of_other_arguments_is_refused_in_the_urls_words_once(faces, local_bucket):
    """The refusal named the URL, not the cache, and said "use --overwrite to replace it" twice (the error was
    made again from its whole message)."""
    url = f"local://{local_bucket}/ds"
    assert _cli(faces, url).exit_code == 0
    result = _cli(faces, url, "--seed", "3")
    assert result.exit_code == 2, result.output
    line = _one_line(result.output)
    assert line.count("--overwrite") == 1, line
    assert f"{url} holds a build made with different arguments (seed)" in line
    assert str(cache_folder(url)) not in line


def test_an_output_url_that_cannot_be_written_is_refused_before_the_build(faces, local_bucket, tmp_path):
    local_bucket.parent.mkdir(exist_ok=True)
    local_bucket.write_text("a file where the bucket's folder would be")
    result = _cli(faces, f"local://{local_bucket}/ds")
    assert result.exit_code == 2, result.output
    assert "cannot be written" in _one_line(result.output)
    assert not (tmp_path / "cache").exists()  # nothing was built


def test_an_upload_that_fails_after_the_build_says_where_the_build_is_kept(faces, local_bucket, monkeypatch):
    url = f"local://{local_bucket}/ds"

    def unreachable(*args, **kwargs):
        raise ConnectionError("the bucket is unreachable")

    monkeypatch.setattr(storage, "upload", unreachable)
    result = _cli(faces, url)
    assert result.exit_code == 1, result.output
    line = _one_line(result.output)
    assert str(cache_folder(url)) in line and "the bucket is unreachable" in line and "again" in line
    assert (cache_folder(url) / "manifest.parquet").is_file()

    monkeypatch.undo()  # the bucket is back: the rerun builds nothing and uploads the kept build
    monkeypatch.setenv("M2U_CACHE", str(local_bucket.parent / "cache"))
    rerun = _cli(faces, url)
    assert rerun.exit_code == 0, rerun.output
    assert (local_bucket / "ds" / "manifest.parquet").is_file()
    assert json.loads((local_bucket / "ds" / "stats.json").read_text())["shards_built"] == 0


def test_an_in_process_memory_url_is_refused_as_output(faces, tmp_path, monkeypatch):
    monkeypatch.setenv("M2U_CACHE", str(tmp_path / "cache"))
    result = _cli(faces, "memory://m2u-kept-nowhere/ds")
    assert result.exit_code == 2, result.output
    assert "memory" in _one_line(result.output)
    assert not (tmp_path / "cache").exists()


def test_a_refused_build_leaves_the_url_alone_and_a_persons_shard_named_file_is_never_claimed(bucket, faces):
    """A person's file named like a shard in the bucket: an `overwrite` build is refused (as for a local folder)
    naming it at the URL, and the URL keeps its finished dataset; a plain rerun never lists it as m2u's."""
    fs, root = fsspec.core.url_to_fs(bucket)
    _build(bucket, faces, shard_size=2)
    fs.pipe_file(f"{root}/train/train-000009.tar", b"mine\n")
    before = _remote(bucket)
    with pytest.raises(
        BuildError, match=rf"{bucket.split('://')[1]}/train/train-000009.tar was not written by m2u"
    ):
        _build(bucket, faces, shard_size=3, seed=1, overwrite=True)
    assert _remote(bucket) == before  # the manifest stays, nothing uploaded
    _build(bucket, faces, shard_size=2)  # the same build again: nothing to do
    record = json.loads(_remote(bucket)[UPLOAD_RECORD_NAME])["files"]
    assert "train/train-000009.tar" not in record
    assert _remote(bucket)["train/train-000009.tar"] == b"mine\n"


def test_a_reader_never_changes_the_copy_a_build_keeps(bucket, faces, monkeypatch):
    """A build whose upload failed keeps its build in its cache for the rerun; a reader on the same machine (the
    URL still holding the earlier build) fetches into a folder of its own, so the rerun still has it to upload."""
    _build(bucket, faces, shard_size=2)
    kept = cache_folder(bucket)
    monkeypatch.setattr(
        storage, "upload", lambda *a, **k: (_ for _ in ()).throw(OSError("the network dropped"))
    )
    with pytest.raises(StorageError, match="kept in the local cache"):
        _build(bucket, faces, shard_size=3, overwrite=True)
    before = _local(kept)
    read = Path(local_dataset(bucket))
    assert read == cache_folder(bucket, reading=True) != kept
    assert _local(kept) == before  # the kept build is as it was
    monkeypatch.undo()
    monkeypatch.setenv("M2U_CACHE", str(kept.parents[1]))
    _build(bucket, faces, shard_size=3)  # the rerun the failed upload advised: resumes and uploads it
    _mirrors(bucket, kept)


def test_a_second_build_into_one_cache_is_refused_before_it_fetches(bucket, faces, monkeypatch):
    _build(bucket, faces, shard_size=2)
    fetched = []
    monkeypatch.setattr(storage, "fetch", lambda *a, **k: fetched.append(a))
    held = storage._cache_lock(cache_folder(bucket), bucket, wait=False)
    refused = pytest.raises(StorageError, match="another m2u-make-dataset run on this machine is building")
    with held, refused:
        _build(bucket, faces, shard_size=2, overwrite=True)
    assert fetched == []  # refused before it changed anything in the cache


def test_a_file_removed_from_the_url_leaves_the_local_copy_too(bucket, faces):
    """A person's file under the prefix was fetched into the cache and kept there after it left the URL: every
    later build was refused as "already holds other files", naming a file the URL no longer held."""
    fs, root = fsspec.core.url_to_fs(bucket)
    fs.pipe_file(f"{root}/other/file.txt", b"a person's file")
    with pytest.raises(BuildError, match="other"):
        _build(bucket, faces, shard_size=2)
    fs.rm(f"{root}/other/file.txt")
    _build(bucket, faces, shard_size=2)
    assert not (cache_folder(bucket) / "other").exists()
    _mirrors(bucket, cache_folder(bucket))


@pytest.mark.parametrize("machine", ["the machine that built it", "another machine"])
def test_a_file_changed_at_the_url_with_its_size_kept_is_repaired_by_a_rerun(
    bucket, faces, machine, monkeypatch
):
    """A rerun compared only the local file with the upload record: a shard changed at the URL by hand (same size)
    was never sent again, and every reader stayed refused, told to rerun the build."""
    import time

    _build(bucket, faces, shard_size=2)
    fs, root = fsspec.core.url_to_fs(bucket)
    shard = f"{root}/train/train-000000.tar"
    data = bytearray(fs.cat_file(shard))
    data[700] ^= 0xFF
    time.sleep(0.01)  # memory:// tells a rewrite by its creation time
    fs.pipe_file(shard, bytes(data))
    monkeypatch.setenv("M2U_CACHE", str(cache_folder(bucket).parents[1].with_name("reader")))
    with pytest.raises(StorageError, match="train-000000.tar does not hold what"):
        local_dataset(bucket)
    if machine == "another machine":
        monkeypatch.setenv("M2U_CACHE", str(cache_folder(bucket).parents[1].with_name("other")))
    else:
        monkeypatch.setenv("M2U_CACHE", str(cache_folder(bucket).parents[1].with_name("cache")))
    _build(bucket, faces, shard_size=2)
    assert fs.cat_file(shard) != bytes(data)
    _mirrors(bucket, cache_folder(bucket))
    monkeypatch.setenv("M2U_CACHE", str(cache_folder(bucket).parents[1].with_name("reader")))
    assert Path(local_dataset(bucket)).is_dir()  # the reader takes it now


def _lease(url: str) -> dict | None:
    fs, root = fsspec.core.url_to_fs(url)
    try:
        return json.loads(fs.cat_file(f"{root}/{LEASE}"))
    except FileNotFoundError:
        return None


def test_a_build_holds_the_urls_lease_while_it_runs_and_removes_it_however_it_ends(bucket, faces):
    config = BuildConfig(mask_engine="synthetic", size=64, workers=1, progress=False, shard_size=2)
    seen: list[dict | None] = []

    def build_then(ending: BaseException | None):
        def build(local: str):
            seen.append(_lease(bucket))
            if ending is not None:
                raise ending
            return build_dataset([str(faces)], local, config)

        return build

    build_at_url(bucket, build_then(None))
    assert (
        seen[-1] is not None and seen[-1]["host"] == socket.gethostname() and seen[-1]["pid"] == os.getpid()
    )
    assert LEASE not in _remote(bucket) and "manifest.parquet" in _remote(bucket)
    from m2u.core.guard import Terminated  # what SIGTERM raises in an m2u command

    for ending in (RuntimeError("the build failed"), KeyboardInterrupt(), Terminated()):
        with pytest.raises(type(ending)):
            build_at_url(bucket, build_then(ending))
        assert seen[-1] is not None and seen[-1]["token"] != seen[0]["token"]
        assert LEASE not in _remote(bucket), type(ending).__name__


def test_a_lease_whose_build_died_on_this_machine_is_taken_over_at_once(bucket, faces, capsys):
    """A build killed with SIGKILL (the OOM killer) left a lease renewed a moment ago: its rerun on the same machine
    was refused for 10 minutes, though the lease names a process that is gone here. A live process here, or a
    dead pid of another machine (or of a lease that does not say its machine), still holds the URL."""
    fs, root = fsspec.core.url_to_fs(bucket)
    here = storage._this_machine()
    if here is None:
        pytest.skip("this system does not say its boot id and process namespace")
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host = socket.gethostname()
    try:
        for refused in (
            lease_of_another_build(5, host=host, pid=alive.pid, machine=here),
            lease_of_another_build(5, host=host, pid=finished.pid, machine="another-boot pid:[1]"),
            lease_of_another_build(5, host=host, pid=finished.pid),
        ):
            fs.pipe_file(f"{root}/{LEASE}", refused)
            with pytest.raises(StorageError, match="another m2u-make-dataset run is building"):
                _build(bucket, faces, shard_size=4)
    finally:
        alive.kill()
        alive.wait()
    fs.pipe_file(f"{root}/{LEASE}", lease_of_another_build(5, host=host, pid=finished.pid, machine=here))
    capsys.readouterr()
    _build(bucket, faces, shard_size=4)
    said = capsys.readouterr().err
    assert f"pid {finished.pid}" in said and "ran on this machine and its process is gone" in said, said
    assert _lease(bucket) is None and fs.exists(f"{root}/manifest.parquet")


def test_the_lease_is_renewed_while_the_build_runs(bucket, monkeypatch):
    monkeypatch.setattr(storage, "LEASE_RENEW_S", 0.05, raising=False)

    def slow_build(local: str):
        Path(local).mkdir(parents=True, exist_ok=True)
        first = _lease(bucket)
        time.sleep(0.5)
        return first, _lease(bucket)

    first, later = build_at_url(bucket, slow_build)
    assert first is not None and later is not None and later["token"] == first["token"]
    assert datetime.fromisoformat(later["renewed"]) > datetime.fromisoformat(first["renewed"])
    assert later["started"] == first["started"]


def test_a_build_whose_lease_was_taken_over_meanwhile_uploads_nothing(bucket, faces):
    """Its renewals failed for longer than the staleness limit and another machine's build took the URL over:
    its upload would remove that build's files."""
    fs, root = fsspec.core.url_to_fs(bucket)
    config = BuildConfig(mask_engine="synthetic", size=64, workers=1, progress=False, shard_size=2)
    taken_over = lease_of_another_build(0)

    def build_then_lose_the_lease(local: str):
        result = build_dataset([str(faces)], local, config)
        fs.pipe_file(f"{root}/{LEASE}", taken_over)
        return result

    with pytest.raises(
        UploadError, match=r"taken over by another build \(host build-host-2, pid 4242"
    ) as caught:
        build_at_url(bucket, build_then_lose_the_lease)
    assert str(cache_folder(bucket)) in str(caught.value)  # kept for a rerun
    assert _remote(bucket) == {LEASE: taken_over}  # nothing uploaded; the other build's lease stays


def test_an_upload_stops_at_the_next_file_once_the_lease_is_found_taken_over(bucket, faces, monkeypatch):
    """The lease was checked once, before the upload: a build taking the URL over during a long upload (this one's
    renewals having failed) had its files removed or replaced by the rest of it."""
    fs, root = fsspec.core.url_to_fs(bucket)
    monkeypatch.setattr(storage, "LEASE_RENEW_S", 0.02, raising=False)
    config = BuildConfig(mask_engine="synthetic", size=64, workers=1, progress=False, shard_size=2)
    taken_over = lease_of_another_build(0)
    send, sent = storage._send, []

    def send_then_lose_the_lease(fs_, target, **options):
        send(fs_, target, **options)
        if not target.endswith(".tar"):
            return  # the URL's probe, this build's own lease, the upload's other files
        sent.append(target)
        if len(sent) == 1:  # the first shard is up; another machine's build takes the URL
            fs.pipe_file(f"{root}/{LEASE}", taken_over)
            time.sleep(0.3)  # this build's next renewal reads it

    monkeypatch.setattr(storage, "_send", send_then_lose_the_lease)
    with pytest.raises(
        UploadError, match=r"taken over by another build \(host build-host-2.*upload stopped there"
    ):
        build_at_url(bucket, lambda local: build_dataset([str(faces)], local, config))
    remote = _remote(bucket)
    shards = [name for name in remote if name.endswith(".tar")]
    assert len(sent) == len(shards) == 1 and "manifest.parquet" not in remote and remote[LEASE] == taken_over


def test_renewals_failing_are_said_once_and_past_the_stale_limit_stop_the_upload(bucket, monkeypatch, capsys):
    monkeypatch.setattr(storage, "LEASE_RENEW_S", 0.01, raising=False)
    monkeypatch.setattr(storage, "LEASE_STALE_S", 0.3, raising=False)
    lease = storage._UrlLease(bucket)
    lease.take()
    try:
        lease.check_held()  # held: nothing raised
        monkeypatch.setattr(lease, "_write", lambda **_: (_ for _ in ()).throw(OSError("throttled")))
        deadline = time.monotonic() + 5
        while not lease.lost and time.monotonic() < deadline:
            time.sleep(0.02)
        said = [line for line in capsys.readouterr().err.splitlines() if "could not be renewed" in line]
        assert len(said) == 1 and "throttled" in said[0] and "will not upload" in said[0]
        with pytest.raises(
            storage.StorageError, match=r"could not be renewed for over .*upload stopped there"
        ):
            lease.check_held()
        with pytest.raises(storage.StorageError, match="nothing was uploaded"):
            lease.confirm()
    finally:
        lease.release()


@pytest.mark.parametrize("refusal", [ValueError, NotImplementedError, TypeError, OSError])
def test_a_driver_refusing_exclusive_create_its_own_way_gets_a_plain_write(bucket, monkeypatch, refusal):
    """Only ValueError and NotImplementedError were taken as "no exclusive create here": a driver raising another
    type for mode "xb" failed every build to its URLs at the lease."""
    fs, root = fsspec.core.url_to_fs(bucket)
    open_file = fs.open

    def no_exclusive_create(path, mode="rb", **options):
        if mode == "xb":
            raise refusal("mode 'xb' is not supported")
        return open_file(path, mode, **options)

    monkeypatch.setattr(fs, "open", no_exclusive_create)
    storage._send(fs, f"{root}/file.json", data=b"{}", exclusive=True)
    assert fs.cat_file(f"{root}/file.json") == b"{}"
    with pytest.raises(FileExistsError):  # where the create is exclusive, a file there still stops it
        monkeypatch.setattr(fs, "open", open_file)
        storage._send(fs, f"{root}/file.json", data=b"[]", exclusive=True)


def test_the_librarys_build_to_a_url_uploads_as_the_command_does(bucket, faces, tmp_path, monkeypatch):
    """build_dataset(inputs, URL) builds in the cache and uploads, as m2u-make-dataset -o URL: it took the URL for a
    path, made a local folder named "memory:" (or "s3:") and uploaded nothing."""
    monkeypatch.chdir(tmp_path)
    config = BuildConfig(mask_engine="synthetic", size=64, workers=1, progress=False, shard_size=4)
    result = build_dataset([str(faces)], bucket, config)
    assert result.out_dir == cache_folder(bucket)
    _mirrors(bucket, cache_folder(bucket))
    assert "manifest.parquet" in _remote(bucket) and LEASE not in _remote(bucket)
    assert not any(p.name.endswith(":") for p in tmp_path.iterdir())  # no folder named after the scheme
    with pytest.raises(BuildError, match="--partition needs OUT to be a folder"):
        build_dataset([str(faces)], bucket, BuildConfig(mask_engine="synthetic", size=64, partition=(0, 2)))
