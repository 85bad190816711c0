"""The one error type every semfuse_jax failure a user can act on is raised as."""


class SemfuseError(Exception):
    """A problem with the user's input, files or settings, described in one line.

    Command-line tools print the message as ``<tool>: error: <message>`` and exit with status 1;
    library callers can catch this one type.
    """


class MissingLayersError(SemfuseError):
    """The weights lack layers that the requested computation needs."""

    def __init__(self, missing: list[str], source: str, wanted: str) -> None:
        self.missing = list(missing)
        super().__init__(
            f"weights {source} lack layer(s) {', '.join(missing)} needed for {wanted}; "
            "use a full VGG19 file (see `semfuse-weights list`)"
        )
