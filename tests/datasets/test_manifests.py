"""The documented schema is the schema: the README's table is generated from m2u.datasets.layout.COLUMNS, which
the Parquet files carry as metadata; the CLI offers the scale-out options."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from click.testing import CliRunner

from m2u.datasets.cli import main as cli_main
from m2u.datasets.layout import COLUMNS, MANIFEST_SCHEMA, SPLIT_SCHEMA, schema_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_is_the_schema():
    assert schema_markdown() in README.read_text(encoding="utf-8")
    assert [name for name, *_ in COLUMNS] == MANIFEST_SCHEMA.names
    assert set(SPLIT_SCHEMA.names) < set(MANIFEST_SCHEMA.names) and {"key", "shard"} <= set(
        SPLIT_SCHEMA.names
    )


def test_the_parquet_files_carry_the_meanings(synthetic_dataset):
    manifest = pq.read_schema(synthetic_dataset / "manifest.parquet")
    assert manifest.metadata[b"m2u.table"] == b"manifest"
    for name, _, nullable, meaning, _ in COLUMNS:
        assert manifest.field(name).metadata[b"description"].decode() == meaning
        assert manifest.field(name).nullable == nullable


def test_the_cli_offers_the_scale_out_options():
    result = CliRunner().invoke(cli_main, ["-h"])
    assert result.exit_code == 0
    for option in ("--distributor", "--ray-address", "--partition", "--finalize"):
        assert option in result.output
    bad = CliRunner().invoke(cli_main, ["x", "-o", "y", "--partition", "3/2"])
    assert bad.exit_code == 2 and "--partition" in bad.output


def test_ray_missing_or_unreachable_is_one_clear_sentence(tmp_path, monkeypatch, demo_faces):
    faces = demo_faces(4)
    args = [
        str(faces),
        "-o",
        str(tmp_path / "out"),
        "--mask-engine",
        "synthetic",
        "--quiet",
        "--distributor",
        "ray",
    ]
    with monkeypatch.context() as patch:
        patch.setitem(__import__("sys").modules, "ray", None)  # as if Ray were not installed
        result = CliRunner().invoke(cli_main, args)
    assert result.exit_code == 2 and "pip install 'm2u[ray]'" in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    ray = __import__("pytest").importorskip("ray")
    if ray.is_initialized():
        return
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    result = CliRunner().invoke(cli_main, [*args, "--ray-address", "auto"])  # no cluster runs here
    assert result.exit_code == 2 and "--ray-address auto: no Ray cluster there" in result.output


def test_a_relative_dataset_folder_with_a_colon_in_its_name_is_a_folder_not_a_uri(tmp_path, monkeypatch):
    """pyarrow took `ds:1/manifest.parquet` for a URI of an unknown file system: the build failed after its work."""
    from m2u.core.inputs import find_inputs
    from m2u.datasets import write_synthetic_dataset
    from m2u.datasets.layout import read_manifest
    from m2u.datasets.loader import count_samples

    monkeypatch.chdir(tmp_path)
    write_synthetic_dataset("ds:1", 8, size=32, seed=0, split=(0.5, 0.25, 0.25))
    assert len(read_manifest("ds:1")) == 8 and count_samples("ds:1", "train") == 4
    import pyarrow as pa
    from PIL import Image

    photos = [tmp_path / f"{i}.png" for i in range(2)]
    for photo in photos:
        Image.new("RGB", (8, 8)).save(photo)
    pq.write_table(pa.table({"path": [str(p) for p in photos]}), tmp_path / "list:1.parquet")
    found = find_inputs(["list:1.parquet"], tmp_path / "out")  # a list file of that kind too
    assert [entry.path for entry in found.entries] == photos


def test_a_manifest_holding_the_same_rows_keeps_its_bytes(synthetic_dataset, tmp_path):
    """A rerun on a finished dataset wrote manifest.parquet again: by another m2u (other column notes) or another
    pyarrow the bytes changed though no row did, and m2u-train tells a dataset by its manifest's SHA-256 on a
    resume (it would refuse the same dataset as another)."""
    import shutil

    import pyarrow as pa

    from m2u.datasets.layout import write_parquet_atomic

    folder = tmp_path / "ds"
    shutil.copytree(synthetic_dataset, folder)
    path = folder / "manifest.parquet"
    before = path.read_bytes()
    table = pq.read_table(path)
    noted = pa.schema(
        [field.with_metadata({b"description": b"another m2u's note"}) for field in table.schema],
        metadata={**(table.schema.metadata or {}), b"written_by": b"another pyarrow"},
    )
    write_parquet_atomic(table.cast(noted), path)
    assert path.read_bytes() == before
    keys = table.column("key").to_pylist()
    changed = table.set_column(table.schema.get_field_index("key"), "key", pa.array([*keys[:-1], "other"]))
    write_parquet_atomic(changed, path)
    assert path.read_bytes() != before and pq.read_table(path).column("key").to_pylist()[-1] == "other"
