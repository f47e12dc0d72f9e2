"""Router configuration from flags, environment (Weave's names) and an env file. Pure: no I/O but reading
the password file, which is checked for its mode before it is read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from weave_node.core.errors import ConfigError
from weave_node.ipam.address import parse_range
from weave_node.ipam.model import parse_init

DEFAULT_PORT = 6783
DEFAULT_STATUS_ADDR = "127.0.0.1:6784"
DEFAULT_STATUS_SOCKET = "/run/weave-node/weave.sock"
DEFAULT_STATE_DIR = "/var/lib/weave-node"
DEFAULT_CONN_LIMIT = 100


@dataclass(frozen=True)
class PeerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_peer(text: str, default_port: int = DEFAULT_PORT) -> PeerAddress:
    """`weave launch PEER...` semantics: an IP or host name, with or without a port ("[v6]:port" for IPv6)."""
    text = text.strip()
    if not text:
        raise ConfigError("empty peer address")
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"bad peer address {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"bad peer address {text!r}")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    port = default_port
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise ConfigError(f"bad port in peer address {text!r}")
        port = int(port_text)
    if not host or any(c.isspace() for c in host):
        raise ConfigError(f"bad peer address {text!r}")
    return PeerAddress(host, port)


def parse_peers(text: str) -> tuple[PeerAddress, ...]:
    """WEAVE_PEERS: peers separated by spaces or commas."""
    return tuple(parse_peer(p) for p in text.replace(",", " ").split())


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    addr = parse_peer(text, default_port=-1)
    if addr.port < 0:
        raise ConfigError(f"{what} needs host:port, not {text!r}")
    return addr.host, addr.port


@dataclass(frozen=True)
class RouterConfig:
    name: str | None = None  # MAC-formatted; default derived from the host id
    nickname: str = field(default_factory=lambda: os.uname().nodename)
    port: int = DEFAULT_PORT
    listen_host: str = "0.0.0.0"  # noqa: S104 - peers connect from other hosts by design
    peers: tuple[PeerAddress, ...] = ()
    conn_limit: int = DEFAULT_CONN_LIMIT
    password: bytes | None = None
    status_addr: str = DEFAULT_STATUS_ADDR  # "" disables the TCP status API
    status_socket: str = DEFAULT_STATUS_SOCKET  # "" disables the unix socket
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 15.0
    gossip_interval: float = 10.0
    ipalloc_range: str = "10.32.0.0/12"
    ipalloc_init: str = ""  # "" = consensus among the initial peers and us
    ipam_reclaim_after: float = 600.0  # 0 disables automatic reclaim
    ipam_reclaim_replaced: bool = True  # WEAVE_NO_IPAM_RECLAIM_REPLACED: a re-imaged host's old identity waits too
    datapath: str = "kernel"  # "kernel" = bridge + VXLAN; "none" = mesh and IPAM only (no kernel changes)
    mtu: int | None = None  # WEAVE_MTU; None = underlay MTU minus the VXLAN overhead
    fastdp: bool = True  # WEAVE_NO_FASTDP turns the VXLAN path off
    sleeve: bool = True  # WEAVE_NO_SLEEVE turns the userspace fallback (and encrypted pod traffic) off
    sleeve_aesgcm: bool = True  # WEAVE_NO_SLEEVE_AESGCM: seal with NaCl secretbox even where AES-NI is there
    metrics_addr: str = "127.0.0.1:6782"  # "" disables; open it to Prometheus explicitly (a firewall concern)
    peer_retain: float = 60.0  # seconds a departed peer keeps its forwarding entries (and adopted ones at start)
    warnings: tuple[str, ...] = ()


def read_password_file(path: Path) -> bytes:
    """The password from a file only root (the owner) can read: refuse a group/world-readable file."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"password file {path}: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"password file {path} is readable by others (mode {st.st_mode & 0o777:04o}): chmod 600 it")
    data = path.read_bytes().strip()
    if not data:
        raise ConfigError(f"password file {path} is empty")
    return data


def _ipam_settings(pick: Callable[[str, str], object], n_peers: int) -> tuple[str, str, float]:
    ipalloc_range = str(pick("ipalloc_range", "IPALLOC_RANGE") or "10.32.0.0/12")
    ipalloc_init = str(pick("ipalloc_init", "IPALLOC_INIT") or "")
    parse_range(ipalloc_range)  # fail now, with a clear message, rather than when the first pod starts
    parse_init(ipalloc_init, n_peers + 1)
    raw = pick("ipam_reclaim_after", "WEAVE_IPAM_RECLAIM_AFTER")
    try:
        reclaim_after = float(str(raw)) if raw is not None else 600.0
    except ValueError:
        raise ConfigError(f"--ipam-reclaim-after must be seconds, not {raw!r}") from None
    if reclaim_after < 0:
        raise ConfigError("--ipam-reclaim-after must be >= 0 (0 disables automatic reclaim)")
    return ipalloc_range, ipalloc_init, reclaim_after


def _metrics_addr(pick: Callable[[str, str], object]) -> str:
    addr = str(pick("metrics_addr", "WEAVE_METRICS_ADDR") or "127.0.0.1:6782")
    if addr == "none":
        return ""
    parse_hostport(addr, "--metrics-addr")
    return addr


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
        if not 576 <= mtu <= 65485:
            raise ConfigError(f"WEAVE_MTU must be between 576 and 65485, not {mtu}")
    fastdp = _flag_off(pick("no_fastdp", "WEAVE_NO_FASTDP"))
    sleeve = _flag_off(pick("no_sleeve", "WEAVE_NO_SLEEVE"))
    return datapath, mtu, fastdp, sleeve


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

    port_raw = pick("port", "WEAVE_PORT")
    try:
        port = int(str(port_raw)) if port_raw is not None else DEFAULT_PORT
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
    datapath, mtu, fastdp, sleeve = _datapath_settings(pick)
    ipalloc_range, ipalloc_init, reclaim_after = _ipam_settings(pick, len(peers))
    return RouterConfig(
        name=str(name) if name else None,
        nickname=str(nickname) if nickname else os.uname().nodename,
        port=port,
        listen_host=str(flags.get("listen_host") or "0.0.0.0"),  # noqa: S104
        peers=peers,
        conn_limit=conn_limit,
        password=password,
        status_addr=status_addr,
        status_socket="" if socket_path == "none" else str(socket_path or DEFAULT_STATUS_SOCKET),
        state_dir=Path(str(state_dir or DEFAULT_STATE_DIR)),
        heartbeat_interval=hb,
        heartbeat_timeout=seconds("heartbeat_timeout", hb * 3),
        gossip_interval=seconds("gossip_interval", 10.0),
        ipalloc_range=ipalloc_range,
        ipalloc_init=ipalloc_init,
        ipam_reclaim_after=reclaim_after,
        ipam_reclaim_replaced=_flag_off(pick("no_ipam_reclaim_replaced", "WEAVE_NO_IPAM_RECLAIM_REPLACED")),
        datapath=datapath,
        mtu=mtu,
        fastdp=fastdp,
        sleeve=sleeve,
        sleeve_aesgcm=_flag_off(pick("no_sleeve_aesgcm", "WEAVE_NO_SLEEVE_AESGCM")),
        peer_retain=seconds("peer_retain", 60.0),
        metrics_addr=_metrics_addr(pick),
        warnings=tuple(warnings),
    )
