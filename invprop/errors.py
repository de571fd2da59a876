"""The one exception type for user mistakes: stages and the CLI print it as a single line."""


class InvpropError(Exception):
    """A problem the user can fix (bad params, missing file, mismatched artifact).

    The message names the offending key or file and says how to fix it; entry points print
    it without a traceback and exit with status 2.
    """
