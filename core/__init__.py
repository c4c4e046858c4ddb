"""The functional core shared by controller and agent: models, resolve, plan. Pure."""

import os as _os

# In a checkout, src/hedgerow/<name> is a symlink to this folder (see pyproject.toml).
# Find submodules by the real folder, so tracebacks, coverage and debuggers name the file
# people edit (core/…, controller/…, edge-agent/…); in an installed wheel this changes
# nothing. Import machinery only: nothing here reads or decides anything else.
__path__[:] = [_os.path.realpath(p) for p in __path__]
