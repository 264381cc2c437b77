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
