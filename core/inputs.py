"""Finding the input files of every m2u tool (m2u-mask, m2u-make-dataset, m2u-unmask): one set of rules.

An input argument is
- a folder: searched recursively for files with an image suffix (`IMAGE_SUFFIXES`); files and folders whose name
  starts with "." are hidden and passed over (notebooks' .ipynb_checkpoints copies would otherwise be read twice),
  and counted; files without an image suffix are passed over and counted by suffix;
- a glob (``photos/*.jpg``, ``**`` recursive): its matches with an image suffix;
- a list file (.txt/.lst: one path per line, "#" comments; .csv/.parquet: a path column and optionally an
  ``identity`` column): every listed path, relative paths taken from the list file's folder;
- any other file: taken whatever its suffix (the content decides; a bad one gets its own row).

Every entry found is returned, including those that cannot be read: `InputEntry.problem` says why (missing, a
broken or looping symbolic link, a folder, a FIFO, a device file or a socket, no read permission), found with
`stat` alone — no byte of such a file is ever read, so a FIFO cannot hang a run and ``/dev/zero`` cannot fill the
memory. Tools turn those entries into error rows. `open_regular` repeats the check on the open descriptor, so a
file swapped for a FIFO after discovery is refused too.

A tool's own output folder is passed as `exclude`: a rerun never reads its earlier outputs back as inputs
(``m2u-mask photos -o photos/masked``). `check_output_folder` refuses an output folder that is an input folder
or an input glob's folder (``photos`` for ``photos/*.jpg``), or whose outputs would replace an input;
`output_lock` keeps two runs from writing one output folder at once. `claim_output_names` names the outputs of
the per-file tools (m2u-mask, m2u-unmask) so that a rerun gives each input the name the earlier run gave it,
whatever the order of the inputs (m2u-make-dataset keys by content).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from m2u.core.fileio import (
    RECORD_NAME,
    arrow_path,
    atomic_write_text,
    claim_name,
    folder_storing_no_files,
    remove_temp_files,
    replace_problem,
)
from m2u.core.imageio import (
    DEFAULT_MAX_FILE_BYTES,
    IMAGE_SUFFIXES,
    ImageReadError,
    is_hidden,
    is_image_entry,
    open_regular,
    probe,
    read_input_bytes,
)

LIST_SUFFIXES = (".txt", ".lst", ".csv", ".parquet")
PATH_COLUMNS = ("path", "file", "filename", "source", "image")
IDENTITY_COLUMN = "identity"


class InputError(ValueError):
    """An input argument that cannot be used at all (not a file row: the run stops before any work)."""


@dataclass(frozen=True)
class InputEntry:
    """One input file: `path` as found, `relative` its path below the folder, glob base or list file's folder
    (posix; the file name for a file given directly), `origin` the argument it came from."""

    path: Path
    relative: str
    origin: str
    identity: str = ""
    # Why it cannot be read, found without reading it; "" when it looks like a readable regular file.
    problem: str = ""


@dataclass
class Discovery:
    entries: list[InputEntry] = field(default_factory=list)
    # Passed over in folder scans: hidden image files, files without an image suffix (by suffix), and files under
    # an excluded folder (the tool's own output).
    hidden: int = 0
    no_image_suffix: dict[str, int] = field(default_factory=dict)
    excluded: int = 0
    # Of `excluded`, how many under each excluded folder, by what that folder is ("output folder", "labels folder"):
    # the sentence names the folder the files are in (a labels folder inside the photos' was called the output's).
    excluded_in: dict[str, int] = field(default_factory=dict)
    mask_files: int = 0  # m2u-mask's ground-truth masks (NAME_mask.png beside NAME.json): not photos
    # Files in a folder below an input folder that m2u wrote into (it holds m2u.core.fileio's record): an earlier
    # run's outputs kept inside the photos' folder (`m2u-mask in -o in/results`), which a later scan of that
    # folder must not take for photos (masked photos read as unmasked ground truth). Given itself, such a folder
    # is read (m2u-unmask on m2u-mask's outputs).
    m2u_outputs: int = 0
    repeated: int = 0  # files the arguments name more than once (one input each)
    # Symbolic links to folders inside the input folders: not followed (a link can loop back, `loop -> ..`, or
    # lead anywhere), and counted so that a user sees why the files behind them were not read.
    linked_folders: int = 0
    folders: list[Path] = field(default_factory=list)  # the input folders, as given
    globs: list[str] = field(default_factory=list)  # the input globs, as given (folders: `input_folders`)
    per_input: dict[str, int] = field(default_factory=dict)  # entries found per argument
    # per argument, the files it names that an earlier argument named already (read once, under the earlier one)
    repeated_per_input: dict[str, int] = field(default_factory=dict)

    def input_folders(self, role: str = "input") -> list[tuple[Path, str]]:
        """Every folder the inputs read from as a whole, each with how the user named it: the input folders ("the
        input folder F") and each glob's fixed leading folder ("the folder F of the input glob P": ``photos`` for
        ``photos/*.jpg``, ``.`` for ``*.jpg``), which holds its matches and any file a later match may be. `role`:
        what the inputs are ("faces": "the faces folder F")."""
        named = [(folder, f"the {role} folder {folder}") for folder in self.folders]
        return named + [
            (_glob_base(pattern), f"the folder {_glob_base(pattern)} of the {role} glob {pattern}")
            for pattern in self.globs
        ]

    def describe_skipped(self) -> str:
        """A sentence naming what the folder scans passed over, so a user sees why fewer rows than files came
        out; "" when nothing was."""
        sentences = []
        if self.no_image_suffix:
            total = sum(self.no_image_suffix.values())
            listed = ", ".join(
                f"{suffix} {n}"
                for suffix, n in sorted(self.no_image_suffix.items(), key=lambda kv: (-kv[1], kv[0]))
            )
            sentences.append(
                f"{total} file(s) in the input folders have no image suffix and were not read ({listed})"
            )
        if self.hidden:
            sentences.append(
                f"{self.hidden} image file(s) in the input folders are hidden (a name or folder starting with "
                "'.') and were not read"
            )
        if self.mask_files:
            sentences.append(
                f"{self.mask_files} mask file(s) written by m2u-mask (NAME_mask.png beside NAME.json) were not "
                "read as photos"
            )
        for role, count in (self.excluded_in or {OUTPUT_FOLDER: self.excluded}).items():
            if count:
                sentences.append(f"{count} file(s) inside the {role} were not read as inputs")
        if self.repeated:
            sentences.append(f"{self.repeated} file(s) named more than once by the inputs were read once")
        if self.linked_folders:
            sentences.append(
                f"{self.linked_folders} symbolic link(s) to folders in the input folders were not followed; give "
                "such a folder itself to read it"
            )
        if self.m2u_outputs:
            sentences.append(
                f"{self.m2u_outputs} file(s) in folders an earlier m2u run wrote into (holding {RECORD_NAME}) inside "
                "the input folders were not read; give such a folder itself to read it"
            )
        return "; ".join(sentences)


OUTPUT_FOLDER = "output folder"  # what an excluded folder is unless `discover`'s `roles` says otherwise


def _inside(path: Path, folders: Sequence[Path]) -> bool:
    return any(path == folder or folder in path.parents for folder in folders)


def _count_excluded(
    found: Discovery, path: Path, folders: Sequence[Path], roles: Mapping[Path, str], n: int
) -> None:
    """Count `n` files at `path` (resolved) passed over as inside one of the excluded `folders`, under that
    folder's role (the innermost folder's, where one excluded folder holds another)."""
    inside = [folder for folder in folders if path == folder or folder in path.parents]
    role = (
        roles.get(max(inside, key=lambda folder: len(folder.parts)), OUTPUT_FOLDER)
        if inside
        else OUTPUT_FOLDER
    )
    found.excluded += n
    found.excluded_in[role] = found.excluded_in.get(role, 0) + n


def _below(base: str | os.PathLike[str], exclude: Sequence[Path]) -> list[Path]:
    """The folders of `exclude` strictly inside `base`: an output folder above an input folder (``-o .``) does not
    hide the inputs, and one equal to an input folder is refused by check_output_folder."""
    root = _resolved(base)
    return [folder for folder in exclude if root in folder.parents]


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(path))


def _named_place(path: Path) -> str:
    """The file an input entry names, for "named more than once": its folder resolved (a folder reached through a
    link or `..` is the same folder: `photos_link/a.jpg` and `photos/a.jpg` were two inputs, one photo read twice,
    a duplicate sample), its own name as it is (a link to a photo is an input of its own, named by the link)."""
    return os.path.join(os.path.realpath(path.parent), path.name)


MASK_FILE_SUFFIX = "_mask.png"  # m2u-mask writes NAME_mask.png and NAME.json beside the masked photo


def is_mask_file(path: Path) -> bool:
    """An m2u-mask ground-truth mask: NAME_mask.png with NAME.json (its metadata) beside it. Folder scans pass
    these over (counted), so m2u-mask's output folder can be given as it is to m2u-unmask or m2u-make-dataset."""
    name = path.name
    if not name.endswith(MASK_FILE_SUFFIX):
        return False
    return path.with_name(name[: -len(MASK_FILE_SUFFIX)] + ".json").is_file()


def _scan_folder(
    folder: Path, origin: str, exclude: Sequence[Path], found: Discovery, roles: Mapping[Path, str]
) -> list[InputEntry]:
    entries = []
    # Given an m2u output folder itself (m2u-mask's OUT to m2u-unmask), its subfolders are part of it, records and
    # all; inside any other folder, a folder holding a record is an earlier run's output, not read.
    output_tree = {folder} if (folder / RECORD_NAME).is_file() else set()
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        if exclude and _inside(_resolved(root_path), exclude):
            _count_excluded(found, _resolved(root_path), exclude, roles, len(files))
            dirs[:] = []
            continue
        if root_path.parent in output_tree:
            output_tree.add(root_path)
        elif RECORD_NAME in files and root_path != folder:
            found.m2u_outputs += len(files) - 1
            dirs[:] = []
            continue
        # Symbolic links to folders are listed in `dirs` and not followed (as rglob does not follow them), only
        # counted; broken and looping links are in `files`, so they get a row with their problem.
        linked = [name for name in dirs if os.path.islink(os.path.join(root, name))]
        found.linked_folders += len(linked)
        dirs[:] = sorted(set(dirs) - set(linked))
        for name in sorted(files):
            path = root_path / name
            if name == RECORD_NAME or name.startswith(".m2u-"):
                continue  # m2u's own record of what it wrote there (m2u.core.fileio) or lock: never an input
            if not is_image_entry(path):
                suffix = path.suffix.lower() or "(none)"
                found.no_image_suffix[suffix] = found.no_image_suffix.get(suffix, 0) + 1
            elif is_hidden(path, folder):
                found.hidden += 1
            elif is_mask_file(path):
                found.mask_files += 1
            else:
                entries.append(InputEntry(path, path.relative_to(folder).as_posix(), origin, "", probe(path)))
    return sorted(entries, key=lambda e: e.relative)


def _glob_base(pattern: str) -> Path:
    """The fixed leading folder of a glob (``photos/2024`` for ``photos/2024/*.jpg``)."""
    parts = Path(pattern).parts
    fixed = list(parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))])
    return Path(*fixed) if fixed else Path(".")


def _scan_glob(
    pattern: str, exclude: Sequence[Path], found: Discovery, roles: Mapping[Path, str]
) -> list[InputEntry]:
    base = _glob_base(pattern)
    entries = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        if not is_image_entry(path):
            continue
        if exclude and _inside(_resolved(path), exclude):
            _count_excluded(found, _resolved(path), exclude, roles, 1)
            continue
        entries.append(InputEntry(path, path.relative_to(base).as_posix(), pattern, "", probe(path)))
    return entries


def _list_rows(list_file: Path) -> list[tuple[str, str]]:
    suffix = list_file.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        text = read_input_bytes(list_file).decode("utf-8")
        return [(line.strip(), "") for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if suffix == ".csv":
        text = read_input_bytes(list_file).decode("utf-8")
        records = list(csv.DictReader(io.StringIO(text, newline="")))
        columns = list(records[0]) if records else []
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(arrow_path(list_file))
        columns, records = table.column_names, table.to_pylist()
    lowered = {c.lower(): c for c in columns}
    path_column = next((lowered[c] for c in PATH_COLUMNS if c in lowered), None)
    if path_column is None:
        raise InputError(f"{list_file}: no path column; expected one of {', '.join(PATH_COLUMNS)}")
    identity_column = lowered.get(IDENTITY_COLUMN)
    rows = []
    for record in records:
        value = None if identity_column is None else record[identity_column]
        path = record[path_column]  # None: a Parquet null, which str() would make a file named "None"
        rows.append(("" if path is None else str(path), "" if value is None else str(value)))
    return rows


def _scan_list(list_file: Path) -> list[InputEntry]:
    root = list_file.parent.resolve()
    entries = []
    for row, (text, identity) in enumerate(_list_rows(list_file), start=1):
        if (
            not text.strip()
        ):  # an empty cell of a CSV or Parquet list: a row of its own, never the list's folder
            where = f"{list_file.stem}-row{row}"
            problem = f"an empty path (row {row} of {list_file.name})"
            entries.append(InputEntry(list_file.parent / where, where, str(list_file), identity, problem))
            continue
        path = Path(text) if Path(text).is_absolute() else list_file.parent / text
        try:
            relative = path.resolve().relative_to(root).as_posix()
        except (ValueError, OSError, RuntimeError):
            relative = path.name
        if relative in (
            "",
            ".",
        ):  # the list's folder or a root ("." or "/"): no name to key or write outputs by
            relative = f"{list_file.stem}-row{row}"
        entries.append(InputEntry(path, relative, str(list_file), identity, probe(path)))
    return entries


def is_list_file(path: Path) -> bool:
    return path.suffix.lower() in LIST_SUFFIXES and path.is_file()


def input_list(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> list[str | os.PathLike[str]]:
    """The inputs as a list: one path (a `str` or `PathLike`) is one input. A string is also an iterable, of its
    characters: `unmask_files("photo.jpg", ...)` read "p", "h", ... and "." (the whole working folder), and "/"
    (the whole file system)."""
    if isinstance(inputs, str | os.PathLike):
        return [inputs]
    if isinstance(inputs, bytes):
        raise TypeError("inputs are paths as str or os.PathLike (or a list of them), not bytes")
    return list(inputs)


def check_arguments(inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> None:
    """Raise InputError naming the first argument that names nothing: neither an existing path (a broken link
    counts as existing: it gets a row) nor a glob."""
    for item in input_list(inputs):
        text = os.fspath(item)
        if not os.path.lexists(text) and not glob.has_magic(text):
            if text == "-":  # the Unix habit for standard input: said what to give instead
                raise InputError(
                    "input '-' does not exist: inputs are not read from standard input; write the paths into a list "
                    "file (paths.txt, one a line) and give that"
                )
            raise InputError(f"input {text!r} does not exist")


def discover(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    exclude: Iterable[str | os.PathLike[str]] = (),
    roles: Mapping[str | os.PathLike[str], str] | None = None,
) -> Discovery:
    """Every input entry of `inputs` (see the module docstring), in argument order, each argument's entries
    sorted; nothing under an `exclude` folder is taken. `roles`: what an excluded folder is, for the sentence
    saying what was passed over ("labels folder"; default "output folder"). Arguments that do not exist are entries
    with a problem ("no such file"); a list file that cannot be parsed raises InputError."""
    excluded = [_resolved(p) for p in exclude]
    said = {_resolved(folder): role for folder, role in (roles or {}).items()}
    found = Discovery()
    seen: set[str] = set()
    for item in input_list(inputs):
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            found.folders.append(path)
            entries = _scan_folder(path, text, _below(path, excluded), found, said)
        elif glob.has_magic(text) and not path.exists():
            found.globs.append(text)
            entries = _scan_glob(text, _below(_glob_base(text), excluded), found, said)
        elif is_list_file(path):
            try:
                entries = _scan_list(path)
            except ImageReadError as exc:
                raise InputError(f"list file {text}: {exc.reason}") from exc
            except (UnicodeDecodeError, csv.Error, OSError) as exc:
                raise InputError(f"list file {text} cannot be read: {exc}") from exc
        else:
            entries = [InputEntry(path, path.name, text, "", probe(path))]
        fresh = []
        for entry in entries:  # a file named twice ("s3 ./s3", a folder and a photo in it) is one input
            where = _named_place(entry.path)
            if where in seen:
                found.repeated += 1
                found.repeated_per_input[text] = found.repeated_per_input.get(text, 0) + 1
            else:
                seen.add(where)
                fresh.append(entry)
        found.per_input[text] = found.per_input.get(text, 0) + len(fresh)
        found.entries.extend(fresh)
    return found


def changes_in_words(changes: Mapping[str, Sequence[str]], most: int = 3) -> str:
    """Inputs that differ from an earlier run's, briefly, for the line saying why it is rerun or refused:
    `changes` maps a kind ("added", "changed", "removed") to its names, in the order said: "2 photos added,
    1 removed: a.jpg, b.jpg, c.jpg"; the first `most` names, then "(and N more)"; "" when none differ."""
    counted = [(kind, list(names)) for kind, names in changes.items() if names]
    if not counted:
        return ""
    (first, first_names), rest = counted[0], counted[1:]
    counts = [f"{len(first_names)} photo{'s' if len(first_names) > 1 else ''} {first}"]
    counts += [f"{len(names)} {kind}" for kind, names in rest]
    named = [name for _, names in counted for name in names]
    more = f" (and {len(named) - most} more)" if len(named) > most else ""
    return f"{', '.join(counts)}: {', '.join(named[:most])}{more}"


def no_images_error(found: Discovery) -> InputError:
    """The one error every tool gives when its inputs hold no image file, saying what was passed over."""
    said = found.describe_skipped()
    return InputError("no image files found in the inputs" + (f" ({said})" if said else ""))


def _identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def earlier_names(out_dir: str | os.PathLike[str], rows: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(input, output name inside `out_dir`) of an earlier run's report rows (input, output path as written: OUT
    as that run was given it); rows without an output, or whose output is not inside `out_dir`, are left out."""
    out = _resolved(out_dir)
    names = []
    for source, output in rows:
        if not source or not output:
            continue
        where = _resolved(output)
        if out in where.parents:
            names.append((source, where.relative_to(out).as_posix()))
    return names


def names_ledger(out_dir: str | os.PathLike[str], tool: str) -> Path:
    """The file in OUT where `tool` (m2u-unmask, m2u-mask) keeps which input each of its output names belongs to,
    over all its runs into OUT (`remember_output_names`): hidden, never an input, never a listed output."""
    return (
        Path(out_dir) / f".{tool}.names"
    )  # JSON, named off `*.json`: a glob for the outputs' metadata misses it


def read_names_ledger(out_dir: str | os.PathLike[str], tool: str) -> list[tuple[str, str]]:
    """(input, output name inside OUT) of every earlier run of `tool` into OUT; [] when there is none, or when the
    file there is not one m2u wrote (check_output_folder refuses it later) or cannot be read."""
    path = names_ledger(out_dir, tool)
    if not path.is_file() or replace_problem(path):
        return []
    try:
        pairs = json.loads(path.read_text(encoding="utf-8"))["names"]
        return [(str(source), str(name)) for source, name in pairs]
    except (OSError, ValueError, KeyError, TypeError):
        return []  # a damaged ledger holds no names: report.csv still gives the last run's


def remember_output_names(
    out_dir: str | os.PathLike[str], tool: str, pairs: Iterable[tuple[str, str]]
) -> None:
    """Add this run's (input, output name) `pairs` to `tool`'s ledger in OUT, keeping the earlier runs' pairs
    whose input still exists. The last run's report.csv alone was the memory: a photo not given in that run lost
    its name, and a later run's photo of the same name replaced its restoration."""
    kept: dict[tuple[str, str], None] = {}
    for source, name in [*((os.path.abspath(s), n) for s, n in pairs), *read_names_ledger(out_dir, tool)]:
        if _identity(source) is not None:  # a photo moved or deleted since holds no name
            kept.setdefault((source, name), None)
    lines = ",\n".join(
        json.dumps(list(pair)) for pair in kept
    )  # one input a line: a ledger a person can read
    atomic_write_text(names_ledger(out_dir, tool), f'{{"generator": "m2u", "names": [\n{lines}\n]}}\n')


def claim_output_names(
    entries: Sequence[InputEntry],
    wanted: Sequence[tuple[str, str]],
    earlier: Iterable[tuple[str, str]] = (),
) -> list[str]:
    """Each entry's output name inside OUT, from its `wanted` (stem, suffix): `stem + suffix`, or -2, -3... where
    that name is taken (m2u.core.fileio.claim_name), handed out in input order.

    `earlier`: (input, output name) pairs earlier runs into the same OUT gave (`earlier_names` of the last run's
    report, and `read_names_ledger`: every run's). Names handed out in input order alone would depend on that order
    (a/x.jpg and b/X.jpg given as "a b" and as "b a" swap x.jpg and X-2.jpg), so a rerun in another order would
    replace each restoration with another photo's.
    An input that run named keeps its name, whatever the order now, where it is still a name this input could get
    (a changed suffix, as with another output format, gives a new one); the names that run gave to photos that
    still exist are handed to no other input, so a new input whose name clashes gets a fresh one and no earlier
    output is renamed or replaced. Inputs are matched by file identity: the report holds the paths as typed."""
    held: dict[tuple[int, int], str] = {}
    taken: set[str] = set()
    for source, name in earlier:
        identity = _identity(source)
        if identity is not None:  # a photo moved or deleted since holds no name
            held.setdefault(identity, name)
            taken.add(name.casefold())
    names: list[str | None] = []
    for entry, (stem, suffix) in zip(entries, wanted, strict=True):
        identity = None if entry.problem else _identity(entry.path)
        # pop: a file given twice under two names (a hard link) keeps its name once
        kept = held.pop(identity, None) if identity is not None else None
        names.append(kept if kept is not None and _may_be_named(kept, stem, suffix) else None)
    return [
        given if given is not None else claim_name(stem, suffix, taken)
        for given, (stem, suffix) in zip(names, wanted, strict=True)
    ]


def _may_be_named(name: str, stem: str, suffix: str) -> bool:
    """Whether claim_name can give `name` to an input that wants (stem, suffix): `stem+suffix` or `stem-k+suffix`."""
    return re.fullmatch(re.escape(stem) + r"(-([2-9]|[1-9][0-9]+))?" + re.escape(suffix), name) is not None


class OutputFolderError(ValueError):
    """An output folder a run must not write: an input folder, one whose outputs would replace inputs, or one
    another run is writing."""


def output_location_problem(out_dir: str | os.PathLike[str], setting: str = "out_dir") -> str:
    """Why the output folder `out_dir` cannot be written ("" when it can): it exists and is not a folder, or the
    nearest folder above it that exists is a file or cannot be written into (a read-only disk, /proc). Found
    before any work, so the run stops with one sentence instead of an error number at its first write."""
    path = Path(out_dir)
    there = path  # as the user wrote it: the message names the file they know
    while not os.path.lexists(there) and there != there.parent:
        there = there.parent
    made = "" if there == path else f" cannot be made: {there}"
    if not os.path.isdir(there):  # a file, a broken link, a FIFO
        if made:
            return f"`{setting}` {out_dir}{made} is not a folder; choose another output folder"
        return f"`{setting}` {out_dir} exists and is not a folder; choose another output folder"
    effective = os.access in os.supports_effective_ids
    if not os.access(there, os.W_OK | os.X_OK, effective_ids=effective):
        return f"`{setting}` {out_dir}{made} is not writable; choose another output folder"
    # Writable to root, yet nothing can be made there (/proc): refused now, not at the first write.
    storing_nothing = folder_storing_no_files(path / "x") if made else ""
    if storing_nothing:
        return (
            f"`{setting}` {out_dir} cannot be made: {storing_nothing} is on a file system that stores no files (the "
            "kernel's, as /proc is); choose another output folder"
        )
    return ""


def input_folder_named(out_dir: str | os.PathLike[str], found: Discovery, role: str = "input") -> str:
    """How the user named the input folder or glob folder (`Discovery.input_folders`) that the output folder
    `out_dir` is ("the input folder F", "the folder F of the input glob P"; the same folder however written:
    `x/../photos`, a link), else "". ``m2u-unmask 'photos/*.jpg' -o photos`` writes among the photos as
    ``m2u-unmask photos -o photos`` would, and a rerun of the glob reads the outputs back as inputs."""
    out = _resolved(out_dir)
    for folder, named in found.input_folders(role):
        if _resolved(folder) == out:
            return named
    return ""


def input_folder_problem(out_dir: str | os.PathLike[str], found: Discovery, setting: str = "out_dir") -> str:
    """ "`setting` OUT is the input folder F" (or "... is the folder F of the input glob P") when the output folder
    `out_dir` is one (`input_folder_named`), else "". The caller says what would go wrong there."""
    named = input_folder_named(out_dir, found)
    return f"`{setting}` {out_dir} is {named}" if named else ""


def check_output_folder(
    out_dir: str | os.PathLike[str],
    found: Discovery,
    outputs: Iterable[str | os.PathLike[str]] = (),
    setting: str = "out_dir",
) -> None:
    """Refuse (OutputFolderError) an output folder that is one of the input folders or an input glob's folder
    (`input_folder_problem`), or `outputs` (the paths the run will write) that would replace an input file. Inputs
    inside the output folder are excluded by `discover(..., exclude=[out_dir])`, so an output folder inside an
    input folder (or a glob's folder) is fine. The messages name the output folder's `setting` in backticks
    (m2u.core.errors: a CLI says its flag)."""
    problem = output_location_problem(out_dir, setting)
    if problem:
        raise OutputFolderError(problem)
    problem = input_folder_problem(out_dir, found, setting)
    if problem:
        raise OutputFolderError(
            f"{problem}: outputs would be mixed with (and could replace) the photos; choose another output folder"
        )
    inputs = {_resolved(e.path) for e in found.entries if not e.problem}
    for target in outputs:
        if _resolved(target) in inputs:
            raise OutputFolderError(
                f"`{setting}` {out_dir}: the output {target} would replace an input file of the same name; "
                "choose another output folder"
            )
        # A link planted at an output's name, or another file there that m2u did not write: refused before any
        # work (m2u.core.fileio refuses it again at the write).
        problem = replace_problem(target)
        if problem:
            raise OutputFolderError(f"`{setting}` {out_dir}: {problem}")


def lock_problem(path: Path) -> str:
    """Why the lock file `path` must not be opened ("" when it may): a lock is never opened through a link (a
    link planted at OUT/.<tool>.lock would let the lock's writes land in the link's target)."""
    if os.path.islink(path):
        return f"{path} is a symbolic link; m2u does not open its lock files through links (remove the link)"
    if os.path.lexists(path) and not os.path.isfile(path):
        return f"{path} exists and is not a regular file"
    return ""


def open_lock_file(path: str | os.PathLike[str]) -> int:
    """A descriptor of the lock file `path` (created when missing) for flock, never opened through a link; for
    locks filelock cannot take (the dataset build's shared partition locks). OutputFolderError otherwise."""
    path = Path(path)
    problem = lock_problem(path)
    if problem:
        raise OutputFolderError(problem)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise OutputFolderError(
            f"cannot open the lock {path}: {lock_problem(path) or exc.strerror or exc}"
        ) from None


LOCK_PREFIX, LOCK_SUFFIX = ".m2u-", ".lock"  # every run's lock: OUT/.<tool>.lock (tools are named m2u-...)


# A temporary file this many seconds old is a killed write's: a write in progress adds to its file within seconds.
# Younger ones are left to a later run: they may be another run's, writing into a folder above or below this one
# or taking no lock (m2u-export), whose file removed midway would fail its rename.
KILLED_WRITE_AGE_S = 600.0


def remove_killed_writes(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that writes killed midway (kill -9, a power loss) left in the output folder
    `out_dir` and its subfolders: atomic_write's hidden ``.<name>.<8 hex>.tmp`` names only (a person's own
    ``notes.tmp`` stays), at least KILLED_WRITE_AGE_S old, links never followed, and not in a subfolder holding
    a run's lock file (another output folder: its own run clears it). Called with the run's lock held
    (output_lock). Returns what was removed, sorted."""
    removed = []
    now = time.time()
    for root, dirs, files in os.walk(out_dir):  # os.walk does not follow links to folders
        locks = [n for n in files if n.startswith(LOCK_PREFIX) and n.endswith(LOCK_SUFFIX)]
        if root != os.fspath(out_dir) and locks:
            dirs[:] = []
            continue
        removed += remove_temp_files(root, hidden_only=True, older_than=now - KILLED_WRITE_AGE_S)
    return sorted(removed)


def _reports_of_lock(path: Path) -> list[str]:
    """The report names a run recorded in its lock file (`output_lock`'s `reports`); [] for a lock of a run that
    recorded none (training, or an m2u from before the record) or one that cannot be read."""
    try:
        with open(
            path, "rb", opener=lambda name, flags: os.open(name, flags | getattr(os, "O_NOFOLLOW", 0))
        ) as f:
            text = f.read(65536)
        names = json.loads(text)["reports"] if text.strip() else []
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [name for name in names if isinstance(name, str)] if isinstance(names, list) else []


def _lock_held(path: Path) -> bool:
    """Whether a run holds the lock file `path` now (`output_lock`'s flock): asked with a shared lock, which the
    holder's exclusive one refuses; never through a link. A lock that cannot be opened or asked is not held."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


# Commands whose run owns its whole output folder (m2u-pipeline's RUN: its stages, records and stale outputs), not
# only its reports: any other command's run there, or any run in a folder inside it, is refused (`m2u-eval -o RUN`
# wrote its report beside the stages, and `m2u-eval -o RUN/evaluation` replaced the pipeline's finished report).
WHOLE_FOLDER_TOOLS = ("m2u-pipeline",)

# The run folders (real paths) that this process's WHOLE_FOLDER_TOOLS runs hold (`output_lock`): their stages write
# inside them through the other commands' libraries (RUN/evaluation through m2u-eval's `evaluate`), which a run
# of another process must not.
_HELD_WHOLE_FOLDERS: set[str] = set()


def whole_folder_problem(out_dir: str | os.PathLike[str], tool: str) -> str:
    """Why `tool` must not write into `out_dir` ("" when it may): `out_dir` is a WHOLE_FOLDER_TOOLS run folder of
    another command, or lies inside such a run folder at any depth (the same folder however written: a link, `..`),
    unless this process's run holds that folder (its own stages). A run folder is known by its lock file."""
    out = Path(out_dir)
    place = Path(os.path.realpath(out))
    for folder in (place, *place.parents):
        if str(folder) in _HELD_WHOLE_FOLDERS:
            return ""
        for owner in WHOLE_FOLDER_TOOLS:
            if not os.path.lexists(folder / f".{owner}{LOCK_SUFFIX}") or (folder == place and owner == tool):
                continue
            if folder == place:
                return (
                    f"{out} is an {owner} run folder, every file of which is that run's; this {tool} run would mix "
                    "with it: choose another output folder (-o)"
                )
            return (
                f"{out} is inside the {owner} run folder {folder}, every file of which is that run's; this {tool} "
                "run would mix with it: choose an output folder outside it (-o)"
            )
    return ""


# What marks a folder m2u-export wrote: its record of the export, written last (m2u.inference.export's
# EXPORT_SUMMARY). Here, below inference, so that the commands that refuse to write into one (m2u-train) can tell.
EXPORT_RECORD = "export.json"


def export_folder_problem(out_dir: str | os.PathLike[str]) -> str:
    """ "OUT is an m2u-export folder (export.json, mseg.onnx)" where m2u-export wrote an export into `out_dir` (its
    export.json, m2u's by the folder's record: a person's own file of that name is not), else ""."""
    out = Path(out_dir)
    record = out / EXPORT_RECORD
    if not record.is_file() or replace_problem(record):
        return ""
    onnx = sorted(path.name for path in out.glob("*.onnx"))
    return f"{out} is an m2u-export folder ({', '.join([EXPORT_RECORD, *onnx])})"


def report_clash(out_dir: str | os.PathLike[str], tool: str, reports: Iterable[str]) -> str:
    """Why `tool` must not write its `reports` into `out_dir` ("" when it may): another m2u command's run there
    wrote reports of the same names that are still there (m2u-unmask's and m2u-eval real-masks' faces.jsonl and
    index.html; m2u-mask's and m2u-unmask's report.csv), which this run would replace with its own, and the folder
    would hold one command's outputs beside the other's reports. Each run records its report names in its lock file,
    so any command can tell, whichever package it lives in. A WHOLE_FOLDER_TOOLS run folder, and every folder inside
    it, is refused to every other run, whatever its reports' names (`whole_folder_problem`)."""
    out = Path(out_dir)
    ours = set(reports)
    problem = whole_folder_problem(out, tool)
    if problem or not out.is_dir():
        return problem
    if not ours:
        return ""
    for entry in sorted(os.listdir(out)):
        if not (entry.startswith(LOCK_PREFIX) and entry.endswith(LOCK_SUFFIX)) or entry == f".{tool}.lock":
            continue
        recorded = [name for name in _reports_of_lock(out / entry) if name in ours]
        other = entry[1 : -len(LOCK_SUFFIX)]
        if recorded and _lock_held(out / entry):  # still writing: its reports are not there yet, but will be
            return (
                f"another {other} run is writing {out} (its {', '.join(recorded)}, which this {tool} run would "
                "replace with its own); wait for it to finish and choose another output folder"
            )
        theirs = [name for name in recorded if (out / name).exists()]
        if theirs:
            return (
                f"{out} holds an {other} run's {', '.join(theirs)}, which this {tool} run would replace with its own; "
                "choose another output folder (or move that run's files)"
            )
    return ""


@contextlib.contextmanager
def output_lock(
    out_dir: str | os.PathLike[str], tool: str, setting: str = "out_dir", reports: Sequence[str] = ()
) -> Iterator[list[Path]]:
    """Hold an exclusive lock on OUT/.<tool>.lock while a run writes OUT (filelock's flock, opened with
    O_NOFOLLOW and never truncated; the kernel releases it even after SIGKILL): a second run on the same OUT is
    refused at once instead of interleaving its files and report. Once it is held, the temporary files of an
    earlier run's writes killed midway are removed (`remove_killed_writes`; yielded): every command that locks
    its output folder starts clean, and none removes what a run still writing owns. `reports`: the names of the
    reports the run writes at OUT's top, recorded in the lock file; a folder holding another command's reports
    of those names is refused (`report_clash`)."""
    import filelock

    path = Path(out_dir) / f".{tool}.lock"
    problem = lock_problem(path) or report_clash(out_dir, tool, reports)
    if problem:
        raise OutputFolderError(problem)
    lock = filelock.UnixFileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise OutputFolderError(
            f"another {tool} run is writing {out_dir}; wait for it to finish or choose another `{setting}`"
        ) from None
    except OSError as exc:
        raise OutputFolderError(f"cannot lock {path}: {lock_problem(path) or exc.strerror or exc}") from None
    # Asked again once held: another command's run that started beside this one, both past the check above before
    # either held its lock, is seen by one of them (or both, and neither writes).
    problem = report_clash(out_dir, tool, reports)
    if problem:
        lock.release()
        raise OutputFolderError(problem)
    held = os.path.realpath(out_dir) if tool in WHOLE_FOLDER_TOOLS else None
    try:
        if reports:
            _record_reports(path, reports)
        if held is not None:
            _HELD_WHOLE_FOLDERS.add(held)
        yield remove_killed_writes(out_dir)
    finally:
        if held is not None:
            _HELD_WHOLE_FOLDERS.discard(held)
        lock.release()


def _record_reports(path: Path, reports: Sequence[str]) -> None:
    """Write the run's report names into its lock file, which it holds. Only into a lock file that is m2u's: a
    regular file with one name (a hard link planted at the lock's name would be another file's bytes) that is empty
    or holds such a record; otherwise nothing is recorded, and nothing of the file is lost."""
    record = json.dumps({"reports": list(reports)}).encode()
    fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_size > 65536:
            return
        held = os.read(fd, 65536)
        if held.strip() and not _reports_of_lock(path):
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
    finally:
        os.close(fd)


def find_inputs(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | Discovery,
    out_dir: str | os.PathLike[str] | None,
) -> Discovery:
    """The one discovery of a per-file command (m2u-mask, m2u-unmask): the inputs of a run writing `out_dir`
    (never read as input). InputError when an argument names nothing. A `Discovery` is returned as it is: a caller
    that found the inputs already (to print `describe_skipped`, or for a contact sheet) never scans them twice."""
    if isinstance(inputs, Discovery):
        return inputs
    inputs = input_list(inputs)
    check_arguments(inputs)
    return discover(inputs, exclude=[] if out_dir is None else [out_dir])


__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "Discovery",
    "IMAGE_SUFFIXES",
    "InputEntry",
    "InputError",
    "LIST_SUFFIXES",
    "OutputFolderError",
    "check_arguments",
    "check_output_folder",
    "claim_output_names",
    "export_folder_problem",
    "discover",
    "earlier_names",
    "names_ledger",
    "read_names_ledger",
    "remember_output_names",
    "find_inputs",
    "input_folder_named",
    "input_folder_problem",
    "open_lock_file",
    "no_images_error",
    "open_regular",
    "output_location_problem",
    "output_lock",
    "probe",
    "read_input_bytes",
    "remove_killed_writes",
    "report_clash",
    "whole_folder_problem",
]
