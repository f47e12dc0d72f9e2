"""The per-host id a peer name derives from: a file of 32 hex digits under the state directory (the shell side
of peer.py: this module does the file I/O)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from weave_node.core.errors import ConfigError

HOST_ID_BYTES = 16


def load_or_create_host_id(path: Path) -> bytes:
    """Read the 16-byte host id (32 hex digits) from `path`, or create it atomically with random bytes.

    Creation writes a temporary file in the same directory, fsyncs it, sets mode 0644 and renames it over `path`,
    so a crash leaves either no file or a complete one. Raises ConfigError naming the file when it holds anything
    but one hex id, or cannot be read or written.
    """
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return _create_host_id(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read host id file {path}: {e}") from e
    value = text.strip()
    if len(value) != 2 * HOST_ID_BYTES or not all(c in "0123456789abcdefABCDEF" for c in value):
        raise ConfigError(f"host id file {path} does not hold a {2 * HOST_ID_BYTES}-hex-digit id; remove it to reset")
    return bytes.fromhex(value)


def _create_host_id(path: Path) -> bytes:
    host_id = os.urandom(HOST_ID_BYTES)
    tmp = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(host_id.hex() + "\n")
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = ""
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise ConfigError(f"cannot write host id file {path}: {e}") from e
    finally:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return host_id
