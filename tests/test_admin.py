"""The admin listener (DESIGN §6) and graceful shutdown (DESIGN §5) of a real node."""

from __future__ import annotations

import json
import time

from prometheus_client.parser import text_string_to_metric_families

from pushsvc_client.v1 import push_pb2
from tests.nodeproc import NodeProcess, auth
from tests.waiting import wait_for
from tests.wsclient import open_ws

AUTH = auth()

FAMILIES = (
    "pushsvc_connections",
    "pushsvc_messages_pushed_total",
    "pushsvc_frames_sent_total",
    "pushsvc_acks_total",
    "pushsvc_push_duration_seconds",
    "pushsvc_forward_total",
    "pushsvc_store_errors_total",
    "pushsvc_cpu_busy_ratio",
)


def metrics(node: NodeProcess) -> dict[str, float]:
    """Every unlabelled sample (and labelled ones as name{k="v"}) of /metrics."""
    status, text = node.admin_get("/metrics")
    assert status == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    return out


def test_healthz_and_readyz(node: NodeProcess) -> None:
    status, body = node.admin_get("/healthz")
    assert status == 200, body
    status, body = node.admin_get("/readyz")
    assert status == 200, body
    assert json.loads(body)["ready"] is True
    status, _ = node.admin_get("/nope")
    assert status == 404


def test_metrics_families(node: NodeProcess) -> None:
    status, text = node.admin_get("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    types = {
        "pushsvc_connections": "gauge",
        "pushsvc_messages_pushed": "counter",
        "pushsvc_frames_sent": "counter",
        "pushsvc_acks": "counter",
        "pushsvc_push_duration_seconds": "histogram",
        "pushsvc_forward": "counter",
        "pushsvc_store_errors": "counter",
    }
    for name, kind in types.items():
        assert name in families, name
        assert families[name].type == kind, (name, families[name].type)
    for name in FAMILIES:  # the exposed names, labelled families without samples included
        assert f"# HELP {name} " in text, name
        assert f"# TYPE {name} " in text, name


def test_metrics_move(node: NodeProcess) -> None:
    before = metrics(node)
    assert before["pushsvc_connections"] == 0
    with node.stub() as stub:
        with open_ws(node, "metered") as client:
            wait_for(lambda: metrics(node)["pushsvc_connections"] == 1, what="connections 1")
            stub.Push(push_pb2.PushRequest(user_ids=["metered"], payload=b'{"m":1}'), metadata=AUTH)
            (msg,) = client.messages(1)
            after_push = wait_for(
                lambda: (
                    (m := metrics(node))["pushsvc_frames_sent_total"]
                    == before["pushsvc_frames_sent_total"] + 1  # the message frame
                    and m["pushsvc_other_frames_sent_total"]
                    >= before["pushsvc_other_frames_sent_total"] + 1  # the welcome
                    and m
                ),
                what="frames_sent to move",
            )
            assert (
                after_push["pushsvc_messages_pushed_total"]
                == before["pushsvc_messages_pushed_total"] + 1
            )
            assert (
                after_push["pushsvc_push_duration_seconds_count"]
                == before["pushsvc_push_duration_seconds_count"] + 1
            )
            assert after_push["pushsvc_acks_total"] == before["pushsvc_acks_total"]
            client.send({"type": "ack", "seq": msg["seq"]})
            wait_for(
                lambda: metrics(node)["pushsvc_acks_total"] == before["pushsvc_acks_total"] + 1,
                what="acks to move",
            )
        wait_for(lambda: metrics(node)["pushsvc_connections"] == 0, what="connections 0")
    assert metrics(node)["pushsvc_store_errors_total"] == 0


def test_metrics_count_online_only_pushes(node: NodeProcess) -> None:
    """Answered on grpcio's thread before the loop delivers them: the loop counts
    each frame and push when it delivers."""
    before = metrics(node)
    with node.stub() as stub, open_ws(node, "live-metered") as client:
        for n in range(5):
            stub.Push(
                push_pb2.PushRequest(
                    user_ids=["live-metered"], payload=b'{"n":%d}' % n, ttl_seconds=0
                ),
                metadata=AUTH,
            )
        assert [m["data"]["n"] for m in client.messages(5)] == [0, 1, 2, 3, 4]
        after = wait_for(
            lambda: (
                (m := metrics(node))["pushsvc_frames_sent_total"]
                == before["pushsvc_frames_sent_total"] + 5
                and m
            ),
            what="frames_sent to move",
        )
        assert after["pushsvc_messages_pushed_total"] == before["pushsvc_messages_pushed_total"] + 5
        assert (
            after["pushsvc_push_duration_seconds_count"]
            == before["pushsvc_push_duration_seconds_count"] + 5
        )


def test_sigterm_drains_with_1012_and_exits_0(node: NodeProcess) -> None:
    with open_ws(node, "drained") as client, open_ws(node, "drained2") as other:
        started = time.monotonic()
        code = node.stop(timeout=30)
        elapsed = time.monotonic() - started
        assert code == 0, node.log()
        assert elapsed < 25, elapsed
        for c in (client, other):
            close_code, reason = c.close_code()
            assert close_code is not None, "no close frame from the server"
            assert close_code == 1012, (close_code, reason)
