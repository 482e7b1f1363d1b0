"""The project's own error types: problems with a user's config, files, data or saved state.

Every such error derives from :class:`MiniGPT4Error` (besides the built-in type it has always
been, so ``except ValueError`` in users' code keeps working). Its message is written to be read on
its own: the entry points print it as one line and exit with a non-zero status, without a
traceback. Anything else that escapes an entry point is a bug and keeps its traceback.
"""

from __future__ import annotations


class MiniGPT4Error(Exception):
    """A problem with the user's input that the message explains in words (not a bug)."""
