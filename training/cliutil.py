"""What the model-using CLIs (m2u-eval, m2u-unmask, m2u-export) share: the model-file options, user errors."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import click

# Errors a user can cause with bad arguments or files: shown as one clean line, not a traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, OSError)


def user_errors() -> tuple[type[BaseException], ...]:
    from m2u.training.checkpoint import CheckpointError

    return (*_USER_ERRORS, CheckpointError)


def model_file_options(function):
    """The two model files every two-stage command takes; neither given: the model shipped with m2u."""
    model_file = click.Path(exists=True, dir_okay=False)
    function = click.option(
        "--generator",
        "generator_path",
        default=None,
        type=model_file,
        help="CARU2-Net model file (default: the model shipped with m2u).",
    )(function)
    return click.option(
        "--mseg",
        "mseg_path",
        default=None,
        type=model_file,
        help="M-Seg model file (default: the model shipped with m2u).",
    )(function)


@contextlib.contextmanager
def model_warnings() -> Iterator[None]:
    """Show the warnings model files give (an option contradicting a file, a resized dataset) as one
    'warning: ...' line each on stderr, as they happen."""
    from m2u.training.inference.restore import ModelUsageWarning

    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if issubclass(category, ModelUsageWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            previous(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", ModelUsageWarning)
        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = previous
