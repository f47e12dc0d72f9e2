"""rtnetlink requests sent together and answered in one pass, on a plain netlink socket opened in a network
namespace. A pod ADD configures the pod end in two such batches (~0.1 ms) where pyroute2's IPRoute costs its
construction (~1 ms) and one round trip per request. The messages are pyroute2's own classes (its marshalling);
only the socket and the sequencing are ours."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE, RTM_SETLINK
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from weave_node.datapath.netns import DatapathError, made_in

IFF_UP = 0x1
IFA_F_NODAD = 0x02  # ifaddrmsg flag: no duplicate address detection
RT_TABLE_MAIN, RTPROT_STATIC, RTN_UNICAST = 254, 4, 1  # what pyroute2's route("replace", ...) sends by default
NETLINK_ROUTE = 0
RECV_SIZE = 65536
TIMEOUT = 5.0  # the kernel answers while send() runs; a pod worker thread must never wait forever all the same


@contextlib.contextmanager
def socket_in(netns: str) -> Iterator[socket.socket]:
    """A NETLINK_ROUTE socket created in `netns` (a path)."""
    sock = made_in(
        netns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    )
    try:
        sock.settimeout(TIMEOUT)
        sock.bind((0, 0))
        yield sock
    finally:
        sock.close()


@dataclass
class Batch:
    """Requests to send in one datagram; run() returns each request's answer (a GET's reply, None for an ACK)
    or raises naming the first that failed. The kernel handles the requests in order, each on its own."""

    sock: socket.socket
    _requests: list[tuple[int, str, bytes]] = field(default_factory=list)
    _seq: int = 0

    def add(self, what: str, msg: Any, kind: int, flags: int) -> int:
        self._seq += 1
        msg["header"]["type"] = kind
        msg["header"]["flags"] = NLM_F_REQUEST | flags
        msg["header"]["sequence_number"] = self._seq
        msg.encode()
        self._requests.append((self._seq, what, bytes(msg.data)))
        return self._seq

    def run(self) -> dict[int, Any]:
        what = {seq: name for seq, name, _ in self._requests}
        self.sock.send(b"".join(data for _, _, data in self._requests))
        self._requests.clear()
        answers: dict[int, Any] = {}
        failed: list[tuple[int, int]] = []
        marshal = MarshalRtnl()
        while len(answers) < len(what):
            try:
                data = self.sock.recv(RECV_SIZE)
            except TimeoutError:
                missing = sorted(set(what) - set(answers))
                raise DatapathError(f"{what[missing[0]]}: no answer from the kernel in {TIMEOUT} s") from None
            for msg in marshal.parse(data):
                seq = msg["header"]["sequence_number"]
                if seq not in what or seq in answers:
                    continue
                if msg["header"]["type"] == NLMSG_ERROR:
                    code = msg["error"] or 0
                    answers[seq] = None
                    if code:
                        failed.append((seq, abs(code)))
                else:
                    answers[seq] = msg
        if failed:
            seq, code = min(failed)
            raise DatapathError(f"{what[seq]}: {os.strerror(code)}")
        return answers


def get_link(batch: Batch, name: str) -> int:
    msg = ifinfmsg()
    msg["attrs"] = [("IFLA_IFNAME", name)]
    return batch.add(f"link {name}", msg, RTM_GETLINK, 0)


def set_link(batch: Batch, *, index: int = 0, name: str = "", mtu: int = 0, up: bool = True) -> int:
    """By index, or by name (index 0: the kernel looks the name up)."""
    msg = ifinfmsg()
    msg["index"] = index
    msg["flags"] = IFF_UP if up else 0
    msg["change"] = IFF_UP
    msg["attrs"] = [("IFLA_IFNAME", name)] if name else []
    if mtu:
        msg["attrs"].append(("IFLA_MTU", mtu))
    return batch.add(f"set link {name or index}", msg, RTM_SETLINK, NLM_F_ACK)


def add_address(batch: Batch, index: int, address: str, prefixlen: int) -> int:
    msg = ifaddrmsg()
    msg["family"] = socket.AF_INET6 if ":" in address else socket.AF_INET
    msg["flags"] = IFA_F_NODAD if ":" in address else 0  # IPAM hands it out once: no "tentative" second
    msg["prefixlen"] = prefixlen
    msg["index"] = index
    msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
    return batch.add(f"address {address}/{prefixlen}", msg, RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)


def replace_default_route(batch: Batch, gateway: str, index: int) -> int:
    msg = rtmsg()
    msg["family"] = socket.AF_INET6 if ":" in gateway else socket.AF_INET
    msg["table"] = RT_TABLE_MAIN
    msg["proto"] = RTPROT_STATIC
    msg["type"] = RTN_UNICAST
    msg["attrs"] = [("RTA_TABLE", RT_TABLE_MAIN), ("RTA_GATEWAY", gateway), ("RTA_OIF", index)]
    return batch.add(f"default route via {gateway}", msg, RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)
