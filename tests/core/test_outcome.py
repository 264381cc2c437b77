"""One status vocabulary for the per-file tools (m2u-mask, m2u-make-dataset, m2u-unmask)."""

from __future__ import annotations

import pytest

from m2u.core.imageio import ImageReadError
from m2u.core.outcome import Outcome, Status


def test_the_three_tools_share_the_vocabulary():
    from m2u.datasets.layout import Status as ManifestStatus
    from m2u.masking.batch import STATUSES

    assert ManifestStatus is Status
    assert [s.value for s in STATUSES] == ["ok", "no_face", "refused", "error"]


def test_an_unknown_status_is_refused_and_a_known_string_is_taken():
    assert Outcome("no_face", "no face found").status is Status.NO_FACE
    with pytest.raises(ValueError):
        Outcome("unreadable")


def test_errors_keep_their_own_reason_or_name_their_type():
    assert Outcome.error(ImageReadError("truncated file")).fields() == {
        "status": "error",
        "reason": "truncated file",
    }
    assert Outcome.error(KeyError("x")).reason == "KeyError: 'x'"
