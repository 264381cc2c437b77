"""What the model-using CLIs (m2u-eval, m2u-unmask, m2u-export) share: the model-file options, user errors."""

from __future__ import annotations

import click

# Errors a user can cause with bad arguments or files: shown as one clean line, not a traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, OSError)


def user_errors() -> tuple[type[BaseException], ...]:
    from m2u.training.checkpoint import CheckpointError

    return (*_USER_ERRORS, CheckpointError)


def model_file_options(function):
    """The two model files every two-stage command takes."""
    model_file = click.Path(exists=True, dir_okay=False)
    function = click.option(
        "--generator", "generator_path", required=True, type=model_file, help="CARU2-Net model file."
    )(function)
    return click.option("--mseg", "mseg_path", required=True, type=model_file, help="M-Seg model file.")(
        function
    )
