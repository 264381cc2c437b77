"""Finding the input photos: folders (recursive), globs, list files (text, CSV, Parquet), and their identities.

Folder scans pass over hidden files and folders (a name starting with "."; notebooks' .ipynb_checkpoints copies
would otherwise become duplicate photos); m2u-make-dataset says how many it passed over.

Keys: a folder's files are keyed by their path relative to the folder, a glob's by their path relative to the
glob's fixed leading directory, a list file's by their path relative to the list file's folder (or by file name
when elsewhere). The key is that relative path without its extension, lower-cased, with "/" turned into "__" and
any character outside ``[a-z0-9_-]`` into "-" (``10009_082483.jpg`` → ``10009_082483``); over-long keys are cut
and suffixed with a hash. Inputs whose keys would collide ("a b.jpg" and "a-b.jpg", or two names of only
non-ASCII letters) each get a hash of their relative path appended, so every input keeps a distinct key.

Identities come from, in order: an ``identity`` column of a CSV/Parquet list, an identity file (CelebA's
``identity_CelebA.txt``: "<file name> <identity>" per line), or a file-name pattern such as
``{identity}_{id}.jpg`` (``{identity}`` is captured, any other ``{name}`` matches anything).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from m2u.datasets.layout import MAX_KEY_LENGTH
from m2u.datasets.plan import InputItem
from m2u.masking import IMAGE_SUFFIXES, is_hidden, is_image_entry

LIST_SUFFIXES = (".txt", ".lst", ".csv", ".parquet")
PATH_COLUMNS = ("path", "file", "filename", "source", "image")
IDENTITY_COLUMN = "identity"


def make_key(relative: str) -> str:
    """The sample key of an input from its relative path (see the module docstring)."""
    stem = relative.replace("\\", "/")
    stem = stem.rsplit(".", 1)[0] if "." in Path(stem).name else stem
    key = re.sub(r"[^a-z0-9_/-]", "-", stem.lower()).replace("/", "__").strip("_-")
    if not key:
        key = "x"
    if len(key) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(relative.encode("utf-8")).hexdigest()[:12]
        key = f"{key[: MAX_KEY_LENGTH - 13].rstrip('_-')}-{digest}"
    if not key[0].isalnum():
        key = f"x{key}"[:MAX_KEY_LENGTH]
    return key


def _with_digest(key: str, text: str) -> str:
    digest = hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{key[: MAX_KEY_LENGTH - 13].rstrip('_-')}-{digest}"


def _disambiguate(entries: list[tuple[str, str]]) -> list[str]:
    """Keys for (relative path, source) pairs: ``make_key`` where it is unique; where several inputs share it
    ("a b.jpg" and "a-b.jpg", or names the sanitising empties), each of them gets a hash of its relative path
    (of its full source path when the relative paths are equal too), so no input is lost to a collision."""
    keys = [make_key(relative) for relative, _ in entries]
    counts: dict[str, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    relatives: dict[str, int] = {}
    for relative, _ in entries:
        relatives[relative] = relatives.get(relative, 0) + 1
    taken = {key for key in keys if counts[key] == 1}
    result = []
    for key, (relative, source) in zip(keys, entries, strict=True):
        if counts[key] > 1:
            key = _with_digest(key, relative if relatives[relative] == 1 else source)
            if key in taken:  # a file literally named like another's disambiguated key
                key = _with_digest(key, source)
            taken.add(key)
        result.append(key)
    return result


def identity_pattern_regex(pattern: str) -> re.Pattern[str]:
    """Compile ``{identity}_{id}.jpg`` into a regex matched against file names."""
    if "{identity}" not in pattern:
        raise ValueError(f"identity pattern {pattern!r} must contain {{identity}}")
    parts = re.split(r"(\{[a-zA-Z_][a-zA-Z0-9_]*\})", pattern)
    regex = ""
    for part in parts:
        if part == "{identity}":
            regex += r"(?P<identity>.+?)"
        elif part.startswith("{") and part.endswith("}"):
            regex += r".+?"
        else:
            regex += re.escape(part)
    return re.compile(regex, re.IGNORECASE)


def read_identity_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """CelebA-style identity file: "<file name> <identity>" per line → {file name: identity}."""
    mapping = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) < 2:
                raise ValueError(f"{path}:{number}: expected '<file name> <identity>', got {line!r}")
            mapping[fields[0]] = fields[1]
    return mapping


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _folder_entries(folder: Path) -> list[tuple[Path, str, str]]:
    return [
        (p, p.relative_to(folder).as_posix(), "")
        for p in sorted(folder.rglob("*"))
        if is_image_entry(p) and not is_hidden(p, folder)
    ]


def _glob_entries(pattern: str) -> list[tuple[Path, str, str]]:
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]]
    base = Path(*fixed) if fixed else Path(".")
    return [
        (Path(p), Path(p).relative_to(base).as_posix(), "")
        for p in sorted(glob.glob(pattern, recursive=True))
        if is_image_entry(Path(p))
    ]


def _list_entries(list_file: Path) -> list[tuple[Path, str, str]]:
    rows: list[tuple[str, str]] = []
    suffix = list_file.suffix.lower()
    if suffix in (".csv", ".parquet"):
        if suffix == ".csv":
            with open(list_file, newline="", encoding="utf-8") as f:
                records = list(csv.DictReader(f))
                columns = list(records[0]) if records else []
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(list_file)
            columns, records = table.column_names, table.to_pylist()
        lowered = {c.lower(): c for c in columns}
        path_column = next((lowered[c] for c in PATH_COLUMNS if c in lowered), None)
        if path_column is None:
            raise ValueError(f"{list_file}: no path column; expected one of {', '.join(PATH_COLUMNS)}")
        identity_column = lowered.get(IDENTITY_COLUMN)
        for record in records:
            identity = (
                ""
                if identity_column is None or record[identity_column] is None
                else str(record[identity_column])
            )
            rows.append((str(record[path_column]), identity))
    else:
        for line in list_file.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                rows.append((line, ""))
    root = list_file.parent.resolve()
    entries = []
    for text, identity in rows:
        path = Path(text) if Path(text).is_absolute() else list_file.parent / text
        try:
            relative = path.resolve().relative_to(root).as_posix()
        except ValueError:
            relative = path.name
        entries.append((path, relative, identity))
    return entries


def discover_inputs(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    identity_file: str | os.PathLike[str] | None = None,
    identity_pattern: str | None = None,
    limit: int | None = None,
) -> list[InputItem]:
    """All input photos, sorted by source path, deduplicated, with keys and identities; ``limit`` keeps the first N.

    Files named in list files are kept even when missing or unreadable: the build records them as errors.
    """
    if not inputs:
        raise ValueError("no inputs given")
    entries: list[tuple[Path, str, str]] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            found = _folder_entries(path)
        elif glob.has_magic(text):
            found = _glob_entries(text)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            found = _list_entries(path)
        elif path.is_file() and _is_image(path):
            found = [(path, path.name, "")]
        elif not path.exists():
            raise FileNotFoundError(f"input {text!r} does not exist")
        else:
            raise ValueError(
                f"input {text!r} is neither a folder, a glob, an image nor a list file ({', '.join(LIST_SUFFIXES)})"
            )
        if not found:
            raise ValueError(f"input {text!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        entries.extend(found)

    by_name = read_identity_file(identity_file) if identity_file else {}
    pattern = identity_pattern_regex(identity_pattern) if identity_pattern else None
    unique: dict[str, tuple[Path, str, str]] = {}
    for path, relative, identity in entries:
        unique.setdefault(os.path.abspath(path), (path, relative, identity))
    items = []
    sources = sorted(unique)
    keys = _disambiguate([(unique[source][1], source) for source in sources])
    for source, key in zip(sources, keys, strict=True):
        path, relative, identity = unique[source]
        if not identity and path.name in by_name:
            identity = by_name[path.name]
        if not identity and pattern is not None:
            match = pattern.fullmatch(path.name)
            identity = match.group("identity") if match else ""
        items.append(InputItem(base_key=key, source=source, identity=identity))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        items = items[:limit]
    return items
