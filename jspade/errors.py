"""The project's error types for what a user can cause and fix (a bad option, file, checkpoint, data
folder, run folder). `jspade.cli.run` reports these as one line each, exit status 1 (a script turns a
ConfigError of its own arguments into exit status 2); any other exception, a plain ValueError
included, is a bug and keeps its traceback.

They also derive from ValueError, so code that caught the ValueError they replace still catches them.
"""


class JspadeError(Exception):
    """An error the user can fix; its message names the file, flag or key and the reason."""


class ConfigError(JspadeError, ValueError):
    """A configuration value (TOML preset, --section.key flag, a checkpoint's stored config) that is
    of the wrong type, out of range, unknown, or contradicts another."""
