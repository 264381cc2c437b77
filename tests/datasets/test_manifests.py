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
