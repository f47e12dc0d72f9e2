"""Entry point of the `weave-net` CNI plugin.

Hot path: standard library only (the runtime execs this for every pod). This first version answers VERSION
and reports every other command as not yet supported, with a spec error; the CNI issue fills it in.
"""

from __future__ import annotations

import json
import os
import sys

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_INVALID_ENV = 4


def _error(code: int, msg: str, details: str = "") -> int:
    doc = {"cniVersion": "1.1.0", "code": code, "msg": msg}
    if details:
        doc["details"] = details
    sys.stdout.write(json.dumps(doc) + "\n")
    return 1


def main() -> int:
    command = os.environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        sys.stdout.write(json.dumps({"cniVersion": "1.1.0", "supportedVersions": list(SUPPORTED_VERSIONS)}) + "\n")
        return 0
    if not command:
        return _error(ERR_INVALID_ENV, "CNI_COMMAND is not set", "weave-net is a CNI plugin: a runtime runs it")
    return _error(ERR_UNSUPPORTED_FIELD, f"{command} is not implemented yet in this build of weave-net")


if __name__ == "__main__":
    sys.exit(main())
