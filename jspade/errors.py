"""The project's error types for what a user can cause and fix (a bad option, file, checkpoint, data
folder, run folder, a request the model cannot serve). Every one derives from JspadeError, which
`jspade.cli.run` reports as one line, exit status 1 (a script turns a ConfigError of its own arguments
into exit status 2); any other exception, a plain ValueError included, is a bug and keeps its traceback.

The others live beside the code that raises them: CheckpointError and UnsafeFileError
(jspade.safe_load), DataError (jspade.data.readers), RunFolderError (jspade.train.run_folder), ...
Those that replaced a ValueError also derive from ValueError, so code that caught it still catches them.
"""


class JspadeError(Exception):
    """An error the user can fix; its message names the file, flag or key and the reason."""


class ConfigError(JspadeError, ValueError):
    """A configuration value (TOML preset, --section.key flag, a checkpoint's stored config) that is
    of the wrong type, out of range, unknown, or contradicts another."""


class UnsupportedRequest(JspadeError, ValueError):
    """A request the loaded model cannot serve: a style centre its bank lacks, CLIP input to a model
    without CLIP, a prompt longer than CLIP's context."""
