"""WireGuard for the fast datapath (WEAVE_ENCRYPTION=wireguard): VXLAN between per-host addresses inside one
WireGuard device per host. The design is in docs/architecture.md ("Encrypted fastdp")."""
