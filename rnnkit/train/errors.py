"""The error of the applications: a problem with what the user gave (files, options, run
folders), told in one line that names the file or option, what was expected and what came.

The command line prints it without a traceback (rnnkit.cli turns it into a ClickException).
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input (files, options, run folders): one line, no traceback."""
