"""Reading a TOML configuration file (trust policy, serve tokens): every failure a ``ConfigError`` naming the file.

Example::

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "trust.toml"
    >>> _ = f.write_text('schema = "kolm.trust/1"\\n', encoding="utf-8")
    >>> read_toml(f, what="trust file")
    {'schema': 'kolm.trust/1'}
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from kolm_audit.errors import ConfigError

__all__ = ["read_toml"]


def read_toml(path: str | Path, *, what: str) -> dict[str, Any]:
    """The TOML document in ``path``; ``what`` names it in the error ("cannot read <what> (<reason>)")."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} ({exc.strerror})", file=str(path)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid TOML ({exc})", file=str(path)) from None
