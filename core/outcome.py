"""The outcome of one input file in every per-file tool (m2u-mask, m2u-make-dataset, m2u-unmask): one status
vocabulary, each with a reason in plain words. The reports and manifests of the three tools use these values."""

from __future__ import annotations

import enum
from dataclasses import dataclass

# A rerun's input that gets no output this time (no face, refused, an error) whose earlier output is at its output
# name: said after that path in its row's reason. Finished work is never deleted (m2u-unmask and m2u-mask alike).
EARLIER_OUTPUT_KEPT = "is an earlier run's output, left as it is"


class Status(enum.StrEnum):
    OK = "ok"
    NO_FACE = "no_face"
    # Faces were found but every one was refused (a mask the placement checks reject, a face upside down): a
    # property of the photo, not a failure of the tool.
    REFUSED = "refused"
    # m2u-unmask only: faces were found but none wears a mask (each is left exactly as it is, with its reason).
    NOT_MASKED = "not_masked"
    # The file could not be used (missing, unreadable, a special file) or a failure of ours; the reason says which.
    ERROR = "error"


@dataclass(frozen=True)
class Outcome:
    status: Status
    reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "status", Status(self.status)
        )  # a plain string is checked against the vocabulary

    @classmethod
    def error(cls, exc: BaseException) -> Outcome:
        """An exception as an error outcome: its own `.reason` when it has one (ImageReadError), else its type and
        message."""
        reason = getattr(exc, "reason", None)
        return cls(
            Status.ERROR, reason if isinstance(reason, str) and reason else f"{type(exc).__name__}: {exc}"
        )

    def fields(self) -> dict[str, str]:
        """The `status` and `reason` columns of a report row."""
        return {"status": self.status.value, "reason": self.reason}
