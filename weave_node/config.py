"""Router configuration from flags, environment (Weave's names) and an env file. Pure: no I/O but reading
the password file, which is checked for its mode before it is read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from weave_node.core.address import PeerAddress, Range, parse_hostport, parse_peers, parse_range, parse_ranges
from weave_node.core.errors import ConfigError
from weave_node.core.facts import (
    BRIDGE_NETFILTER_MODES,
    DEFAULT_MESH_PORT,
    DEFAULT_METRICS_ADDR,
    DEFAULT_RANGE,
    DEFAULT_STATE_DIR,
    DEFAULT_STATUS_ADDR,
    DEFAULT_STATUS_SOCKET,
    MTU_MAX,
    MTU_MIN,
    PASSWORD_FILE_MODE_MASK,
)
from weave_node.dns import settings as dns_settings
from weave_node.dns.settings import DnsSettings
from weave_node.ipam.model import Init, parse_init
from weave_node.mesh.settings import DEFAULT_CONN_LIMIT, MeshSettings


@dataclass(frozen=True)
class RouterConfig:
    name: str | None = None  # MAC-formatted; default derived from the host id
    nickname: str = field(default_factory=lambda: os.uname().nodename)
    port: int = DEFAULT_MESH_PORT
    listen_host: str = "0.0.0.0"  # noqa: S104 - peers connect from other hosts by design
    peers: tuple[PeerAddress, ...] = ()
    conn_limit: int = DEFAULT_CONN_LIMIT
    password: bytes | None = field(default=None, repr=False)
    previous_password: bytes | None = field(default=None, repr=False)  # still accepted during a rotation
    accept_unencrypted: bool = False  # WEAVE_ACCEPT_UNENCRYPTED: with a password, peers without one are taken too
    status_addr: str = DEFAULT_STATUS_ADDR  # "" disables the TCP status API
    status_socket: str = DEFAULT_STATUS_SOCKET  # "" disables the unix socket
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 15.0
    gossip_interval: float = 10.0
    ipalloc_range: Range = field(default_factory=lambda: parse_range(DEFAULT_RANGE))  # IPv4, or IPv6 alone
    ipalloc_range6: Range | None = None  # dual-stack: IPALLOC_RANGE's IPv6 range beside the IPv4 one
    ipalloc_init: Init | None = None  # None: consensus among the initial peers and us (see `init`)
    ipam_reclaim_after: float = 600.0  # 0 disables automatic reclaim
    ipam_reclaim_replaced: bool = True  # WEAVE_NO_IPAM_RECLAIM_REPLACED: a re-imaged host's old identity waits too
    datapath: str = "kernel"  # "kernel" = bridge + VXLAN; "none" = mesh and IPAM only (no kernel changes)
    mtu: int | None = None  # WEAVE_MTU; None = underlay MTU minus the VXLAN overhead
    fastdp: bool = True  # WEAVE_NO_FASTDP turns the VXLAN path off
    sleeve: bool = True  # WEAVE_NO_SLEEVE turns the userspace fallback (and encrypted pod traffic) off
    sleeve_aesgcm: bool = True  # WEAVE_NO_SLEEVE_AESGCM: seal with NaCl secretbox even where AES-NI is there
    bridge_netfilter: str = "auto"  # WEAVE_BRIDGE_NETFILTER: auto|on|off (overlay.netfilter)
    direct: bool = True  # WEAVE_NO_DIRECT turns direct mode (no encapsulation between L2 neighbours) off
    encryption: str = "auto"  # WEAVE_ENCRYPTION (with a password): auto|esp|wireguard|sleeve (_encryption)
    esp_rekey: float = 3600.0  # WEAVE_ESP_REKEY: seconds between rekeys of an ESP pair
    metrics_addr: str = DEFAULT_METRICS_ADDR  # "" disables; open it to Prometheus explicitly (a firewall concern)
    dns: DnsSettings = field(default_factory=DnsSettings)  # WEAVE_NO_DNS, WEAVE_DNS_* (dns/settings.py)
    peer_retain: float = 60.0  # seconds a departed peer keeps its forwarding entries (and adopted ones at start)
    warnings: tuple[str, ...] = ()

    @property
    def init(self) -> Init:
        """IPALLOC_INIT as parsed, or its default: consensus among the initial peers and us."""
        return self.ipalloc_init or parse_init("", len(self.peers) + 1)


def read_password_file(path: Path) -> bytes:
    """The password from a file only root (the owner) can read: refuse a group/world-readable file."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"password file {path}: {exc.strerror}") from exc
    if st.st_mode & PASSWORD_FILE_MODE_MASK:
        raise ConfigError(f"password file {path} is readable by others (mode {st.st_mode & 0o777:04o}): chmod 600 it")
    try:
        data = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"password file {path}: {exc.strerror}") from exc
    if not data:
        raise ConfigError(f"password file {path} is empty")
    return data


@dataclass(frozen=True)
class LiveSettings:
    """What `weave-node reload` changes in a running router (no restart): the peer list and the passwords."""

    peers: tuple[PeerAddress, ...]
    password: bytes | None = field(repr=False)
    previous_password: bytes | None = field(repr=False)
    accept_unencrypted: bool = False


def _passwords(
    pick: Callable[[str, str], object], env: Mapping[str, str], warnings: list[str]
) -> tuple[bytes | None, bytes | None]:
    password: bytes | None = None
    pw_file = pick("password_file", "WEAVE_PASSWORD_FILE")
    if pw_file:
        password = read_password_file(Path(str(pw_file)))
    elif env.get("WEAVE_PASSWORD"):
        password = env["WEAVE_PASSWORD"].encode()
        warnings.append(
            "WEAVE_PASSWORD is set in the environment, where other root processes can read it: "
            "prefer WEAVE_PASSWORD_FILE (a 0600 file)"
        )
    previous: bytes | None = None
    previous_file = pick("previous_password_file", "WEAVE_PREVIOUS_PASSWORD_FILE")
    if previous_file:
        if password is None:
            raise ConfigError(
                "a previous password (WEAVE_PREVIOUS_PASSWORD_FILE) without a password: it is only accepted beside "
                "the current one, during a rotation"
            )
        previous = read_password_file(Path(str(previous_file)))
        if previous == password:
            previous = None  # the rotation's second step done early: nothing more to accept
    return password, previous


def live_settings(doc: Mapping[str, object]) -> LiveSettings:
    """A reload request (`POST /reload`: peers, password_file, previous_password_file, accept_unencrypted) -> the
    settings it asks
    for; the password files are read (and their mode checked) here. ConfigError on anything wrong."""
    peers_raw = doc.get("peers", [])
    if not isinstance(peers_raw, list) or not all(isinstance(p, str) and p.split() == [p] for p in peers_raw):
        raise ConfigError("peers must be a list of addresses")
    files: dict[str, str] = {}
    for key in ("password_file", "previous_password_file"):
        value = doc.get(key)
        if value not in (None, ""):
            if not isinstance(value, str):
                raise ConfigError(f"{key} must be a path")
            files[key] = value
    accept = doc.get("accept_unencrypted", False)
    if not isinstance(accept, bool):
        raise ConfigError("accept_unencrypted must be true or false")
    unknown = set(doc) - {"peers", "password_file", "previous_password_file", "accept_unencrypted"}
    if unknown:
        raise ConfigError(f"unknown reload settings: {', '.join(sorted(unknown))}")
    password, previous = _passwords(lambda flag, _var: files.get(flag), {}, [])
    return LiveSettings(parse_peers(" ".join(peers_raw)), password, previous, accept)


def _ipam_settings(pick: Callable[[str, str], object], n_peers: int) -> tuple[tuple[Range, Range | None], Init, float]:
    # Parsed here, once: a bad value fails at start with a clear message, and every domain gets a typed value.
    text = str(pick("ipalloc_range", "IPALLOC_RANGE") or DEFAULT_RANGE)
    ranges = parse_ranges(text)
    # The first range is the overlay's own (the bridge's gossiped address, the heartbeats): IPv4's when there is
    # one, else the IPv6 range alone (IPv6-only pods); the second is dual-stack's IPv6 range.
    ipalloc_range: tuple[Range, Range | None] = (ranges[0], ranges[1] if len(ranges) > 1 else None)
    ipalloc_init = parse_init(str(pick("ipalloc_init", "IPALLOC_INIT") or ""), n_peers + 1)
    raw = pick("ipam_reclaim_after", "WEAVE_IPAM_RECLAIM_AFTER")
    try:
        reclaim_after = float(str(raw)) if raw is not None else 600.0
    except ValueError:
        raise ConfigError(f"--ipam-reclaim-after must be seconds, not {raw!r}") from None
    if reclaim_after < 0:
        raise ConfigError("--ipam-reclaim-after must be >= 0 (0 disables automatic reclaim)")
    return ipalloc_range, ipalloc_init, reclaim_after


def _metrics_addr(pick: Callable[[str, str], object]) -> str:
    addr = str(pick("metrics_addr", "WEAVE_METRICS_ADDR") or DEFAULT_METRICS_ADDR)
    if addr == "none":
        return ""
    parse_hostport(addr, "--metrics-addr")
    return addr


def strict_flag(value: object, name: str) -> bool:
    """A setting that weakens security: only known words; anything else is an error, never "on"."""
    word = str(value or "").strip().lower()
    if word in ("", "0", "false", "no", "off"):
        return False
    if word in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be 1/true/yes/on or 0/false/no/off, not {value!r}")


def _flag_off(value: object) -> bool:
    return str(value or "").lower() in ("", "0", "false", "no")


def _datapath_settings(pick: Callable[[str, str], object]) -> tuple[str, int | None, bool, bool]:
    datapath = str(pick("datapath", "WEAVE_DATAPATH") or "kernel")
    if datapath not in ("kernel", "none"):
        raise ConfigError(f"--datapath must be 'kernel' or 'none', not {datapath!r}")
    raw = pick("mtu", "WEAVE_MTU")
    mtu: int | None = None
    if raw not in (None, ""):
        try:
            mtu = int(str(raw))
        except ValueError:
            raise ConfigError(f"WEAVE_MTU must be a number, not {raw!r}") from None
        if not MTU_MIN <= mtu <= MTU_MAX:
            raise ConfigError(f"WEAVE_MTU must be between {MTU_MIN} and {MTU_MAX}, not {mtu}")
    fastdp = _flag_off(pick("no_fastdp", "WEAVE_NO_FASTDP"))
    sleeve = _flag_off(pick("no_sleeve", "WEAVE_NO_SLEEVE"))
    return datapath, mtu, fastdp, sleeve


ENCRYPTION_MODES = ("auto", "esp", "wireguard", "sleeve")


def _encryption(pick: Callable[[str, str], object]) -> tuple[str, float]:
    """WEAVE_ENCRYPTION (with a password): auto = ESP for fastdp where both kernels can (WireGuard where this one has
    no ESP but WireGuard), the sealed sleeve otherwise; esp = ESP without asking the kernel first (its failures show
    in the log and status); wireguard = WireGuard where this kernel has it, never ESP; sleeve = the sealed sleeve
    for all pod traffic. WEAVE_ESP_REKEY: seconds between ESP rekeys."""
    mode = str(pick("encryption", "WEAVE_ENCRYPTION") or "auto").lower()
    if mode not in ENCRYPTION_MODES:
        raise ConfigError(f"WEAVE_ENCRYPTION must be one of {', '.join(ENCRYPTION_MODES)}, not {mode!r}")
    raw = pick("esp_rekey", "WEAVE_ESP_REKEY")
    try:
        rekey = float(str(raw)) if raw not in (None, "") else 3600.0
    except ValueError:
        raise ConfigError(f"WEAVE_ESP_REKEY must be a number of seconds, not {raw!r}") from None
    if not 5 <= rekey <= 86400:
        raise ConfigError(f"WEAVE_ESP_REKEY must be between 5 and 86400 seconds, not {rekey:g}")
    return mode, rekey


def _bridge_netfilter(pick: Callable[[str, str], object]) -> str:
    mode = str(pick("bridge_netfilter", "WEAVE_BRIDGE_NETFILTER") or "auto").lower()
    if mode not in BRIDGE_NETFILTER_MODES:
        raise ConfigError(f"WEAVE_BRIDGE_NETFILTER must be one of {', '.join(BRIDGE_NETFILTER_MODES)}, not {mode!r}")
    return mode


def from_env_and_flags(env: Mapping[str, str], flags: Mapping[str, object]) -> RouterConfig:
    """Flags win over environment variables (Weave's names), which win over defaults."""
    warnings: list[str] = []

    def pick(flag: str, var: str | None = None) -> object:
        value = flags.get(flag)
        if value is not None:
            return value
        return env.get(var) if var else None

    peers_text = pick("peers", "WEAVE_PEERS")
    peers = parse_peers(" ".join(peers_text) if isinstance(peers_text, list) else str(peers_text or ""))

    limit_raw = pick("conn_limit", "CONN_LIMIT")
    try:
        conn_limit = int(str(limit_raw)) if limit_raw is not None else DEFAULT_CONN_LIMIT
    except ValueError:
        raise ConfigError(f"CONN_LIMIT must be a number, not {limit_raw!r}") from None
    if conn_limit < 0:
        raise ConfigError(f"CONN_LIMIT must be >= 0, not {conn_limit}")

    password, previous_password = _passwords(pick, env, warnings)

    port_raw = pick("port", "WEAVE_PORT")
    try:
        port = int(str(port_raw)) if port_raw is not None else DEFAULT_MESH_PORT
    except ValueError:
        raise ConfigError(f"port must be a number, not {port_raw!r}") from None
    if not 0 <= port < 65536:
        raise ConfigError(f"port out of range: {port}")

    status_addr = str(pick("status_addr", "WEAVE_STATUS_ADDR") or DEFAULT_STATUS_ADDR)
    if status_addr != "none":
        host, _ = parse_hostport(status_addr, "--status-addr")
        if host not in ("127.0.0.1", "::1", "localhost") and not flags.get("status_any_addr"):
            raise ConfigError(
                f"--status-addr {status_addr} is not loopback: the status API has no authentication; "
                "add --status-any-addr if you really mean it"
            )
    else:
        status_addr = ""

    name = pick("name", "WEAVE_NAME")
    nickname = pick("nickname", "WEAVE_NICKNAME")
    socket_path = pick("status_socket", "WEAVE_STATUS_SOCKET")
    state_dir = pick("state_dir", "WEAVE_STATE_DIR")

    def seconds(flag: str, default: float) -> float:
        raw = flags.get(flag)
        if raw is None:
            return default
        value = float(str(raw))
        if value <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be > 0")
        return value

    hb = seconds("heartbeat_interval", 5.0)
    encryption, esp_rekey = _encryption(pick)
    datapath, mtu, fastdp, sleeve = _datapath_settings(pick)
    (ipalloc_range, ipalloc_range6), ipalloc_init, reclaim_after = _ipam_settings(pick, len(peers))
    return RouterConfig(
        name=str(name) if name else None,
        nickname=str(nickname) if nickname else os.uname().nodename,
        port=port,
        listen_host=str(flags.get("listen_host") or "0.0.0.0"),  # noqa: S104
        peers=peers,
        conn_limit=conn_limit,
        password=password,
        previous_password=previous_password,
        accept_unencrypted=strict_flag(
            pick("accept_unencrypted", "WEAVE_ACCEPT_UNENCRYPTED"), "WEAVE_ACCEPT_UNENCRYPTED"
        ),
        status_addr=status_addr,
        status_socket="" if socket_path == "none" else str(socket_path or DEFAULT_STATUS_SOCKET),
        state_dir=Path(str(state_dir or DEFAULT_STATE_DIR)),
        heartbeat_interval=hb,
        heartbeat_timeout=seconds("heartbeat_timeout", hb * 3),
        gossip_interval=seconds("gossip_interval", 10.0),
        ipalloc_range=ipalloc_range,
        ipalloc_range6=ipalloc_range6,
        ipalloc_init=ipalloc_init,
        ipam_reclaim_after=reclaim_after,
        ipam_reclaim_replaced=_flag_off(pick("no_ipam_reclaim_replaced", "WEAVE_NO_IPAM_RECLAIM_REPLACED")),
        datapath=datapath,
        mtu=mtu,
        fastdp=fastdp,
        sleeve=sleeve,
        sleeve_aesgcm=_flag_off(pick("no_sleeve_aesgcm", "WEAVE_NO_SLEEVE_AESGCM")),
        bridge_netfilter=_bridge_netfilter(pick),
        direct=_flag_off(pick("no_direct", "WEAVE_NO_DIRECT")),
        encryption=encryption,
        esp_rekey=esp_rekey,
        dns=dns_settings.from_pick(pick, _flag_off),
        peer_retain=seconds("peer_retain", 60.0),
        metrics_addr=_metrics_addr(pick),
        warnings=tuple(warnings),
    )


def mesh_settings(config: RouterConfig) -> MeshSettings:
    """The part of the configuration the mesh reads."""
    return MeshSettings(
        port=config.port,
        listen_host=config.listen_host,
        peers=config.peers,
        conn_limit=config.conn_limit,
        gossip_interval=config.gossip_interval,
    )
