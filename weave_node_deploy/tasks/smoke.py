"""Smoke service: proves SSH + systemd on a host with a trivial, hardened unit. Idempotent."""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, systemd

from weave_node_deploy.paths import TEMPLATES

DEFAULTS = {
    "smoke_port": 8099,  # the service listens on 127.0.0.1 only
}


@deploy("weave-node smoke service", data_defaults=DEFAULTS)
def smoke_service() -> None:
    files.directory(name="Content directory", path="/var/lib/weave-smoke", mode="755")
    files.template(
        name="Content naming this host",
        src=str(TEMPLATES / "smoke/index.html.j2"),
        dest="/var/lib/weave-smoke/index.html",
        mode="644",
        hostname=host.name,
    )
    unit = files.template(
        name="Unit file",
        src=str(TEMPLATES / "smoke/weave-smoke.service.j2"),
        dest="/etc/systemd/system/weave-smoke.service",
        mode="644",
        port=host.data.smoke_port,
    )
    systemd.daemon_reload(name="Reload systemd (unit changed)", _if=unit.did_change)
    systemd.service(name="Service running and enabled", service="weave-smoke.service", running=True, enabled=True)
    systemd.service(name="Restart (unit changed)", service="weave-smoke.service", restarted=True, _if=unit.did_change)
