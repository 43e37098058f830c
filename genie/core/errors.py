"""The one exception type that the `genie` command turns into a single line on stderr and exit code 2."""


class GenieInputError(Exception):
    """Bad user input: a missing or malformed file, folder, option or config.

    The message must name the input and the problem in one line; the command prints it
    without a traceback and exits with code 2.
    """
