"""
The PeerJS dialect across nodes: two real C{twistd} processes sharing one
real C{redis-server}, PeerJS clients on plain WebSockets.
"""

from __future__ import annotations

import pytest

from .test_cluster_real import Cluster
from .test_verified_rooms_real import Raw


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(
        tmp_path_factory.mktemp("peerjscluster"), "--peerjs-expire-timeout", "3"
    )
    try:
        yield cluster.start(2)
    finally:
        cluster.stop()


class Client(Raw):
    def __init__(self, node, peer_id: str, token: str = "t0k") -> None:
        super().__init__(
            f"{node.base}/peerjs/peerjs?key=peerjs&id={peer_id}&token={token}"
        )


def opened(node, peer_id: str, token: str = "t0k") -> Client:
    client = Client(node, peer_id, token)
    assert client.next() == {"type": "OPEN"}
    return client


def test_relay_across_nodes(cluster):
    """
    Ids on two nodes reach each other by id, src written by the sender's
    node.
    """
    node1, node2 = cluster.nodes
    alice = opened(node1, "alice1")
    bob = opened(node2, "bob1")
    alice.send({"type": "OFFER", "src": "x", "dst": "bob1", "payload": {"sdp": "o"}})
    assert bob.next() == {
        "type": "OFFER",
        "src": "alice1",
        "dst": "bob1",
        "payload": {"sdp": "o"},
    }
    bob.send({"type": "ANSWER", "dst": "alice1", "payload": {"sdp": "a"}})
    assert alice.next()["src"] == "bob1"
    alice.close()
    bob.close()


def test_id_taken_across_nodes(cluster):
    """
    An id held on one node is ID-TAKEN on the other; once its holder has
    gone it is free there.
    """
    node1, node2 = cluster.nodes
    holder = opened(node1, "carol2", "one")
    intruder = Client(node2, "carol2", "two")
    assert intruder.next() == {"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}}
    intruder.close()
    holder.close()
    for _ in range(50):
        client = Client(node2, "carol2", "two")
        if client.next() == {"type": "OPEN"}:
            break
        client.close()
    else:
        raise AssertionError("carol2 never became free on node2")
    client.close()


def test_queue_across_nodes(cluster):
    """
    A message queued on one node for an id that is not connected reaches
    it when it connects to the other node; one for an id that never comes
    expires.
    """
    node1, node2 = cluster.nodes
    alice = opened(node1, "alice3")
    alice.send({"type": "OFFER", "dst": "dave3", "payload": {"n": 1}})
    alice.send({"type": "OFFER", "dst": "nobody3", "payload": {"n": 2}})
    dave = opened(node2, "dave3")
    assert dave.next() == {
        "type": "OFFER",
        "src": "alice3",
        "dst": "dave3",
        "payload": {"n": 1},
    }
    assert alice.next() == {"type": "EXPIRE", "src": "nobody3", "dst": "alice3"}
    alice.close()
    dave.close()
