"""The project's error types: one line that names the problem and the fix (torch-free)."""

from types import ModuleType


class Sg2vError(Exception):
    """Base of every error sg2v raises for bad input; CLIs print it as one line and exit non-zero."""

    exit_code = 1


class GraphError(Sg2vError, ValueError):
    """A scene graph that is malformed or does not fit the vocabulary / model (CLI exit status 2)."""

    exit_code = 2
    what = "graph"  # the commands' one line says "invalid graph: ..."


class VocabError(Sg2vError, ValueError):
    """A vocabulary file that is malformed."""


class ConfigError(Sg2vError, ValueError):
    """A setting or config dict that does not describe something this version can build or run."""


class CheckpointError(Sg2vError):
    """A checkpoint that is missing, corrupt, or of another format version."""


class BundleError(Sg2vError):
    """A bundle that is missing, corrupt, tampered with, or of another format version."""


class DatasetError(Sg2vError):
    """A data set to convert, or a converted one, that is missing, malformed or of another format version."""


class MissingDependencyError(Sg2vError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


class Cancelled(Sg2vError):
    """A generation stopped by its cancel event at a stage or sampler step (CLI exit status 130)."""

    exit_code = 130


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none (for one-line errors)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency or raise `MissingDependencyError` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{module} is required for this feature but is not installed ({e}); "
            f"install it with: pip install 'sg2v[{extra}]'"
        ) from None


def shown(value: object, limit: int = 40) -> str:
    """A short repr of a user's value for a one-line message: cut at `limit` characters, and an integer too
    large to print (Python refuses str() past 4300 digits) given by its size instead."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"{'-' if value < 0 else ''}<an integer of {value.bit_length()} bits>"
    try:
        text = repr(value)
    except ValueError:  # a container holding such an integer
        text = f"<a {type(value).__name__} that cannot be printed>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
