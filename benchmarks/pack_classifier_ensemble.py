"""Pack classifier files trained by one recipe with different seeds into one ensemble file
(m2u.inference.mask_presence.MaskPresenceEnsemble: the members' probabilities averaged), which the loaders read as
they read one net.

    .venv/bin/python benchmarks/pack_classifier_ensemble.py runs/seed0.safetensors runs/seed1.safetensors \\
        runs/seed2.safetensors -o runs/mask_presence.safetensors

Measured on 2026-12-05 (docs/real-masks.md, "Three retrains averaged"; not shipped): the shipped mask classifier's command run with
`--seed 1` and `--seed 2`, packed with the shipped file (seed 0), then `benchmarks/tune_masked_rule.py --classifier
FILE` and `benchmarks/real_masks.py --classifier FILE --min-mouth-probability 0.95`.

The members are packed in the order given; an ensemble given as a member is unpacked into its nets. A member given
twice (the same file, or a byte-identical copy) is refused. An existing output file is never overwritten.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path


def pack(members: list[Path], out: Path) -> int:
    """Write the ensemble of `members` (classifier files) to `out`; returns the number of nets packed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from m2u.inference.mask_presence import MaskPresenceEnsemble, classifier_from_weights

    if out.exists():
        raise FileExistsError(
            f"{out} exists: give another output file (an ensemble is never written over a file)"
        )
    nets = []
    seen: dict[str, Path] = {}  # sha256 of each member's bytes -> the member
    for member in members:
        if not member.is_file():
            raise FileNotFoundError(f"no classifier file at {member}")
        digest = hashlib.sha256(member.read_bytes()).hexdigest()
        if digest in seen:  # the same file twice (or a copy of it): one net counted twice, not an ensemble
            same = "the same file" if seen[digest].resolve() == member.resolve() else "a copy of"
            raise ValueError(f"{member} is {same} {seen[digest]}: give each member once")
        seen[digest] = member
        try:
            net = classifier_from_weights(load_file(str(member)))
        # Not a safetensors file, or the weights of another net (keys or shapes that do not fit): say which file.
        except (SafetensorError, KeyError, RuntimeError, ValueError) as error:
            raise ValueError(f"{member}: not a classifier file ({type(error).__name__}: {error})") from None
        nets.extend(net.members if isinstance(net, MaskPresenceEnsemble) else [net])
    if len(nets) < 2:
        raise ValueError("an ensemble needs at least two nets")
    out.parent.mkdir(parents=True, exist_ok=True)
    state = MaskPresenceEnsemble(list(nets)).state_dict()
    save_file({key: value.contiguous() for key, value in state.items()}, str(out))
    return len(nets)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("members", type=Path, nargs="+", help="classifier files (.safetensors)")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        count = pack(args.members, args.out)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {args.out}: {count} nets")


if __name__ == "__main__":
    main()
