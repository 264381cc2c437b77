"""The dataset's inputs: keys and identities on top of ``m2u.core.inputs.discover``, the one input discovery
of every m2u tool (folders searched recursively, globs, list files (text, CSV, Parquet); hidden files and folders
passed over and counted; m2u-make-dataset says how many it passed over).

Keys: a folder's files are keyed by their path relative to the folder, a glob's by their path relative to the
glob's fixed leading directory, a list file's by their path relative to the list file's folder (or by file name
when elsewhere). The key is that relative path without its extension, lower-cased, with "/" turned into "__" and
any character outside ``[a-z0-9_-]`` into "-" (``10009_082483.jpg`` → ``10009_082483``); over-long keys are cut
and suffixed with a hash. Inputs whose keys would collide ("a b.jpg" and "a-b.jpg", or two names of only
non-ASCII letters) each get a hash of their relative path appended, so every input keeps a distinct key; their
split and seed still come from the key before the hash (`InputItem.name_key`, `split_key`), so adding a colliding
file changes only the key recorded; a name with letters or digits outside ASCII, which the key loses, has its
split and seed drawn with a hash of the name too.

Identities come from, in order: an ``identity`` column of a CSV/Parquet list, an identity file (CelebA's
``identity_CelebA.txt``: "<file name> <identity>" per line), or a file-name pattern such as
``{identity}_{id}.jpg`` (``{identity}`` is captured, any other ``{name}`` matches anything).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from m2u.core.errors import SettingError
from m2u.core.imageio import DigestCache, ImageReadError, read_input_bytes
from m2u.core.inputs import (
    IMAGE_SUFFIXES,
    LIST_SUFFIXES,
    Discovery,
    InputError,
    check_arguments,
    discover,
    input_list,
    no_images_error,
)
from m2u.datasets.layout import MAX_KEY_LENGTH
from m2u.datasets.plan import InputItem

__all__ = [
    "LIST_SUFFIXES",
    "discover_inputs",
    "find_dataset_inputs",
    "identity_pattern_regex",
    "input_items",
    "make_key",
    "read_identity_file",
    "read_sources",
    "split_key",
]


def make_key(relative: str) -> str:
    """The sample key of an input from its relative path (see the module docstring); a name's two Unicode
    spellings (macOS writes NFD, most else NFC) key alike."""
    if not relative.isascii():
        relative = unicodedata.normalize("NFC", relative)
    stem = relative.replace("\\", "/")
    stem = stem.rsplit(".", 1)[0] if "." in Path(stem).name else stem
    key = re.sub(r"[^a-z0-9_/-]", "-", stem.lower()).replace("/", "__").strip("_-")
    if not key:
        key = "x"
    if len(key) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(relative.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        key = f"{key[: MAX_KEY_LENGTH - 13].rstrip('_-')}-{digest}"
    if not key[0].isalnum():
        key = f"x{key}"[:MAX_KEY_LENGTH]
    return key


def split_key(relative: str) -> str:
    """The key an input's split and mask seed are drawn from: its sample key before any collision hash
    (`make_key`), so adding a colliding file moves no other; but where the key has lost letters or digits of the
    name (any outside ASCII: `фото_а.jpg`, `日本語.jpg` and `x.jpg` all key as "x", `josé` and `josè` as "jos"),
    with a hash of the name as well (Unicode NFC, as macOS and Linux spell it alike): such names would otherwise
    share one split and one mask."""
    if relative.isascii():
        return make_key(relative)
    name = unicodedata.normalize("NFC", relative.replace("\\", "/"))
    key = make_key(name)
    if not any(ch.isalnum() and not ch.isascii() for ch in name):
        return key  # only marks or symbols outside ASCII: the key keeps every letter and digit
    return _with_digest(key, name)


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
    """CelebA-style identity file: "<file name> <identity>" per line → {file name: identity}. The identity is the
    line's last field, so a file name may hold spaces."""
    mapping: dict[str, str] = {}
    first_line: dict[str, int] = {}
    try:
        text = read_input_bytes(path).decode("utf-8")  # a regular file only: a FIFO would block the build
    except ImageReadError as exc:
        raise SettingError("identity_file", f"{path}: {exc.reason}") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.rsplit(None, 1)
        if len(fields) < 2:
            raise ValueError(f"{path}:{number}: expected '<file name> <identity>', got {line!r}")
        name, identity = unicodedata.normalize("NFC", fields[0]), fields[1]  # a macOS name as a Linux one
        if mapping.get(name, identity) != identity:
            # Which one is right cannot be told, and the wrong one can put a person in two splits.
            raise ValueError(
                f"{path}:{number}: {name} has identity {identity}, but {mapping[name]} on line {first_line[name]}; "
                "give each file one identity"
            )
        mapping[name] = identity
        first_line.setdefault(name, number)
    return mapping


def discover_inputs(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    identity_file: str | os.PathLike[str] | None = None,
    identity_pattern: str | None = None,
    limit: int | None = None,
    exclude: Sequence[str | os.PathLike[str]] = (),
) -> list[InputItem]:
    """All input photos, sorted by source path, deduplicated, with keys and identities; ``limit`` keeps the first N
    (`find_dataset_inputs`, then `input_items`)."""
    found = find_dataset_inputs(inputs, exclude=exclude)
    return input_items(found, identity_file=identity_file, identity_pattern=identity_pattern, limit=limit)


def find_dataset_inputs(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    exclude: Sequence[str | os.PathLike[str]] = (),
) -> Discovery:
    """The build's one discovery: ``m2u.core.inputs.discover`` (the rules of every m2u tool; nothing under an
    ``exclude`` folder). Every entry is kept, also a missing, unreadable or non-regular one (a FIFO, a device): the
    build records it as an error row, and reads it only after checking on the open file that it is a regular file.
    FileNotFoundError when an argument names nothing; ValueError when the inputs hold no image, or one argument
    of several holds none (a dataset is not built without it)."""
    inputs = input_list(inputs)  # one path is one input, not its characters
    if not inputs:
        raise ValueError("no inputs given")
    try:
        check_arguments(inputs)
    except InputError as exc:
        raise FileNotFoundError(str(exc)) from None
    try:
        found = discover(inputs, exclude=exclude)
    except InputError as exc:
        raise ValueError(str(exc)) from None
    if not found.entries:
        raise ValueError(str(no_images_error(found)))  # the words of every m2u tool
    for text, count in found.per_input.items():
        if not count and not found.repeated_per_input.get(text):
            raise ValueError(f"input {text!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def read_sources(found: Discovery, limit: int | None = None) -> list[str]:
    """The absolute paths of the inputs of a discovery that a build reads, in its order: each file once, sorted by
    path; `limit` keeps the first N (the one rule of `limit`: m2u-pipeline fingerprints these files alone)."""
    if limit is not None and limit < 1:
        raise SettingError("limit", f"must be >= 1, got {limit}")
    sources = sorted({os.path.abspath(e.path) for e in found.entries})
    return sources if limit is None else sources[:limit]


def input_items(
    found: Discovery,
    *,
    identity_file: str | os.PathLike[str] | None = None,
    identity_pattern: str | None = None,
    limit: int | None = None,
) -> list[InputItem]:
    """The dataset's inputs of a discovery: sorted by source path, deduplicated, with keys and identities;
    ``limit`` keeps the first N."""
    entries = [(e.path, e.relative, e.identity) for e in found.entries]
    by_name = read_identity_file(identity_file) if identity_file else {}
    pattern = identity_pattern_regex(identity_pattern) if identity_pattern else None
    unique: dict[str, tuple[Path, str, str]] = {}
    for path, relative, identity in entries:
        unique.setdefault(os.path.abspath(path), (path, relative, identity))
    items = []
    sources = sorted(unique)
    keys = _disambiguate([(unique[source][1], source) for source in sources])
    for source, key in zip(sources, keys, strict=True):
        name_key = split_key(unique[source][1])
        path, relative, identity = unique[source]
        if not identity and by_name:
            identity = by_name.get(unicodedata.normalize("NFC", path.name), "")
        if not identity and pattern is not None:
            match = pattern.fullmatch(path.name)
            identity = match.group("identity") if match else ""
        items.append(InputItem(base_key=key, source=source, identity=identity, name_key=name_key))
    if limit is not None:
        read = set(read_sources(found, limit))
        items = [item for item in items if item.source in read]
    return _with_duplicates_joined(items)


def _with_duplicates_joined(items: list[InputItem]) -> list[InputItem]:
    """`items` with each input whose bytes equal an earlier one's (by source path) pointing at that input's split
    key (`InputItem.same_as`). Only files sharing a size with another are read (a SHA-256 each)."""
    by_size: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        try:
            info = os.stat(item.source)
        except OSError:
            continue  # the build reports it
        if stat.S_ISREG(info.st_mode):
            by_size.setdefault(info.st_size, []).append(index)
    joined = list(items)
    digests = DigestCache()
    for indices in by_size.values():
        if len(indices) < 2:
            continue
        first_of: dict[str, InputItem] = {}
        for index in indices:
            try:
                digest = digests.sha256(items[index].source)
            except (ImageReadError, OSError):
                continue
            first = first_of.setdefault(digest, items[index])
            if first is not items[index]:
                joined[index] = dataclasses.replace(
                    items[index],
                    same_as=first.same_as or first.stable_key,
                    same_identity_as=first.same_identity_as or first.identity,
                )
    return joined
