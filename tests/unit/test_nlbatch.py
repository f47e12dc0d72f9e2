"""nlbatch.Batch against a fake socket that answers as the kernel does: one datagram per answer, in any order,
answers for other sequence numbers mixed in, errors as negative errnos; the first failure (by request order) is
the one reported, and a kernel that never answers is an error, not a hang."""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any

import pytest
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE, RTM_SETLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from weave_node.datapath import nlbatch
from weave_node.datapath.netns import DatapathError

pytestmark = pytest.mark.unit


def _ack(seq: int, code: int = 0) -> bytes:
    """NLMSG_ERROR as the kernel sends it: the error (negative errno, 0 for an ACK) and the request's header."""
    request = struct.pack("=IHHII", 32, RTM_SETLINK, NLM_F_REQUEST, seq, 0) + bytes(16)  # (an empty ifinfmsg)
    return struct.pack("=IHHII", 16 + 4 + len(request), NLMSG_ERROR, 0, seq, 0) + struct.pack("=i", -code) + request


def _link(seq: int, index: int, mac: str) -> bytes:
    msg = ifinfmsg()
    msg["header"]["type"] = RTM_NEWLINK
    msg["header"]["sequence_number"] = seq
    msg["index"] = index
    msg["attrs"] = [("IFLA_IFNAME", "eth0"), ("IFLA_ADDRESS", mac)]
    msg.encode()
    return bytes(msg.data)


class FakeSocket:
    def __init__(self, answers: list[bytes]) -> None:
        self.answers, self.sent = list(answers), b""

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def recv(self, size: int) -> bytes:
        if not self.answers:
            raise TimeoutError
        return self.answers.pop(0)


def _batch(answers: list[bytes]) -> tuple[nlbatch.Batch, FakeSocket]:
    fake = FakeSocket(answers)
    return nlbatch.Batch(fake), fake  # type: ignore[arg-type]


def test_a_batch_goes_out_in_one_send_and_its_answers_come_back_by_sequence() -> None:
    # answers out of order, one of another request (seq 9) mixed in
    batch, fake = _batch([_ack(3), _ack(9), _link(2, 7, "02:00:00:00:00:07"), _ack(1)])
    nlbatch.set_link(batch, index=1)
    get = nlbatch.get_link(batch, "eth0")
    nlbatch.set_link(batch, name="eth0", mtu=1376)
    answers = batch.run()
    assert answers[1] is None and answers[3] is None
    assert (answers[get]["index"], answers[get].get_attr("IFLA_ADDRESS")) == (7, "02:00:00:00:00:07")
    sent: list[Any] = list(MarshalRtnl().parse(fake.sent))
    assert [(m["header"]["type"], m["header"]["sequence_number"]) for m in sent] == [
        (RTM_SETLINK, 1), (RTM_GETLINK, 2), (RTM_SETLINK, 3)]  # fmt: skip
    assert sent[1]["header"]["flags"] == NLM_F_REQUEST  # a GET: its reply is the answer, no ACK
    assert sent[2]["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK
    assert (sent[2]["index"], sent[2].get_attr("IFLA_IFNAME"), sent[2].get_attr("IFLA_MTU")) == (0, "eth0", 1376)
    assert sent[2]["flags"] & nlbatch.IFF_UP and sent[2]["change"] & nlbatch.IFF_UP


def test_address_and_route_are_created_or_replaced_as_pyroute2_sends_them() -> None:
    batch, fake = _batch([_ack(1), _ack(2)])
    nlbatch.add_address(batch, 7, "10.32.0.5", 12)
    nlbatch.replace_default_route(batch, "10.32.0.1", 7)
    batch.run()
    addr, route = MarshalRtnl().parse(fake.sent)
    assert addr["header"]["type"] == RTM_NEWADDR and route["header"]["type"] == RTM_NEWROUTE
    for msg in (addr, route):
        assert msg["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    assert (addr["family"], addr["prefixlen"], addr["index"]) == (socket.AF_INET, 12, 7)
    assert addr.get_attr("IFA_LOCAL") == addr.get_attr("IFA_ADDRESS") == "10.32.0.5"
    assert (route["dst_len"], route["proto"], route["type"], route["table"]) == (0, 4, 1, 254)
    assert (route.get_attr("RTA_GATEWAY"), route.get_attr("RTA_OIF")) == ("10.32.0.1", 7)


def test_the_first_failure_in_request_order_is_reported_after_every_answer_is_read() -> None:
    batch, fake = _batch([_ack(2, errno.ENETUNREACH), _ack(1, errno.EEXIST)])
    nlbatch.add_address(batch, 7, "10.32.0.5", 12)
    nlbatch.replace_default_route(batch, "192.0.2.1", 7)
    with pytest.raises(DatapathError, match=r"address 10\.32\.0\.5/12: File exists"):
        batch.run()
    assert fake.answers == []


def test_a_kernel_that_does_not_answer_is_an_error_not_a_hang() -> None:
    batch, _ = _batch([_ack(1)])
    nlbatch.set_link(batch, index=1)
    nlbatch.replace_default_route(batch, "10.32.0.1", 7)
    with pytest.raises(DatapathError, match=r"default route via 10\.32\.0\.1: no answer"):
        batch.run()
