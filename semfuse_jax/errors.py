"""The one error type every semfuse_jax failure a user can act on is raised as."""

import errno


class SemfuseError(Exception):
    """A problem with the user's input, files or settings, described in one line.

    Command-line tools print the message as ``<tool>: error: <message>`` and exit with status 1;
    library callers can catch this one type.
    """


class DiskFullError(SemfuseError):
    """A write failed because the file system is full (or a quota or file-size limit is hit):
    the whole run stops, since every later write would fail too."""


def write_error(path: object, exc: OSError) -> SemfuseError:
    """The one-line error of a failed write of ``path``: a :class:`DiskFullError` when the
    device is full, else a :class:`SemfuseError` naming the system's reason."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return DiskFullError(
            f"cannot write {path}: {exc.strerror}; free some space and run again (a batch run "
            "continues with --resume)"
        )
    return SemfuseError(f"cannot write {path}: {exc.strerror or exc}")


class MissingLayersError(SemfuseError):
    """The weights lack layers that the requested computation needs."""

    def __init__(self, missing: list[str], source: str, wanted: str) -> None:
        self.missing = list(missing)
        super().__init__(
            f"weights {source} lack layer(s) {', '.join(missing)} needed for {wanted}; "
            "use a full VGG19 file (see `semfuse-weights list`)"
        )
