"""The admission server: AdmissionReview answers with JSON patches, served over TLS on a thread of its own
(answering while the operator's loop is busy), following rotated certificates; and the caches it reads."""

from __future__ import annotations

import asyncio
import base64
import copy
import http.client
import json
import logging
import re
import socket
import ssl
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dra_operator.admission import mirror, tls
from dra_operator.admission.mirror import NameMirror, UnknownMessage
from dra_operator.admission.patch import json_patch
from dra_operator.admission.server import AdmissionServer
from dra_operator.admission.webhook import AdmissionContext, answer, review
from dra_operator.operator.admitting import AdmissionFeed
from dra_operator.operator.state import CLAIMS, CLASSES, INDEXES, TEMPLATES, State

Json = dict[str, Any]


def applied(obj: Json, ops: list[Json]) -> Json:
    """RFC 6902 add/remove/replace, as the API server applies them."""
    result = copy.deepcopy(obj)
    for op in ops:
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]]
        target = result
        for token in tokens[:-1]:
            target = target[token]
        if op["op"] == "remove":
            del target[tokens[-1]]
        else:
            assert op["op"] in ("add", "replace")
            assert (tokens[-1] in target) == (op["op"] == "replace"), op
            target[tokens[-1]] = copy.deepcopy(op["value"])
    return result


@pytest.mark.parametrize(
    ("old", "new", "ops"),
    [
        ({"a": 1}, {"a": 1}, []),
        ({"a": 1}, {"a": 2}, [{"op": "replace", "path": "/a", "value": 2}]),
        ({"a": 1}, {"a": True}, [{"op": "replace", "path": "/a", "value": True}]),  # 1 == True in Python
        ({}, {"m": {"x": 1}}, [{"op": "add", "path": "/m", "value": {"x": 1}}]),
        ({"m": {"x": 1, "y": 2}}, {"m": {"x": 1}}, [{"op": "remove", "path": "/m/y"}]),
        (
            {"metadata": {"labels": {"a/b": "1", "t~": "2"}}},
            {"metadata": {"labels": {"a/b": "3"}}},
            [
                {"op": "remove", "path": "/metadata/labels/t~0"},
                {"op": "replace", "path": "/metadata/labels/a~1b", "value": "3"},
            ],
        ),
        ({"l": [1, 2]}, {"l": [1]}, [{"op": "replace", "path": "/l", "value": [1]}]),  # lists whole
    ],
)
def test_json_patch_touches_only_what_changed(old: Json, new: Json, ops: list[Json]) -> None:
    assert json_patch(old, new) == ops
    assert applied(old, ops) == new


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text("ab/~", max_size=2))
_json = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text("ab/~", max_size=2), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text("ab/~", max_size=2), _json, max_size=4), st.data())
def test_json_patch_turns_any_object_into_any_other(old: Json, data: st.DataObject) -> None:
    new = data.draw(st.dictionaries(st.text("ab/~", max_size=2), _json, max_size=4))
    assert applied(old, json_patch(old, new)) == new


def fed(
    claims: tuple[str, ...] = (), classes: tuple[Json, ...] = (), builtin_dra: bool = True
) -> tuple[AdmissionFeed, list[Json], dict[str, dict[Any, list[Json]]]]:
    state = State()
    indexes: dict[str, dict[Any, list[Json]]] = {name: {} for name in INDEXES}
    for name in claims:
        indexes[CLAIMS][("ns", name)] = [
            {"metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"}}
        ]
    for klass in classes:
        indexes[CLASSES][("", klass["metadata"]["name"])] = [klass]
    state.bind(indexes)
    feed = AdmissionFeed(state, builtin_dra=builtin_dra)
    sent: list[Json] = []
    feed.send = sent.append
    return feed, sent, indexes


def mirrored(messages: list[Json]) -> NameMirror:
    found = NameMirror()
    for message in messages:
        found.apply(json.loads(json.dumps(message)))  # as it crosses the wire
    return found


def test_the_feed_sends_names_once_the_caches_are_filled_and_a_snapshot_rebuilds_them() -> None:
    gpu = {"metadata": {"name": "gpu"}, "spec": {"extendedResourceName": "example.com/gpu"}}
    feed, sent, indexes = fed(("c",), (gpu,))
    feed.seen(CLAIMS, ("ns", "early"), True)
    assert sent == [], "before the caches are filled the snapshot at warm-up covers every event"
    assert not mirrored(feed.snapshot()).ready.is_set()
    feed.warm()
    found = mirrored(sent)
    assert found.ready.is_set() and found.claim_exists("ns", "c") and not found.template_exists("ns", "c")
    assert dict(found.extended_resources()) == {"example.com/gpu": "gpu"}
    feed.seen(CLAIMS, ("ns", "d"), True)
    feed.seen(TEMPLATES, ("ns", "t"), True)
    feed.seen(CLAIMS, ("ns", "c"), False)
    found = mirrored(sent)
    assert (
        found.claim_exists("ns", "d")
        and found.template_exists("ns", "t")
        and not found.claim_exists("ns", "c")
    )
    published = found.extended_resources()
    indexes[CLASSES][("", "fpga")] = [
        {"metadata": {"name": "fpga"}, "spec": {"extendedResourceName": "x/fpga"}}
    ]
    feed.classes_changed()
    assert published == {"example.com/gpu": "gpu"}, "a view once handed out never changes under its reader"
    assert dict(mirrored(sent).extended_resources()) == {"example.com/gpu": "gpu", "x/fpga": "fpga"}
    # A fresh admission process is sent the snapshot: the names it answers from are the index's.
    indexes[CLAIMS].pop(("ns", "c"))
    indexes[CLAIMS][("ns", "d")] = [{"metadata": {"name": "d", "namespace": "ns", "resourceVersion": "2"}}]
    fresh = mirrored([*sent, *feed.snapshot()])
    assert fresh.ready.is_set() and fresh.claim_exists("ns", "d") and not fresh.template_exists("ns", "t")
    assert dict(fresh.extended_resources()) == {"example.com/gpu": "gpu", "x/fpga": "fpga"}


def test_the_mirror_holds_a_namespace_once_however_many_names_it_keys() -> None:
    found = mirrored([mirror.present(mirror.CLAIMS, [("team-a", "c1"), ("team-a", "c2")])])
    assert found.claim_exists("team-a", "c1") and found.claim_exists("team-a", "c2")
    first, second = sorted(found._names[mirror.CLAIMS])  # what it holds, not what it answers
    assert first[0] is second[0]


def test_without_built_in_dra_no_name_is_sent_since_every_reference_is_ours() -> None:
    feed, sent, _ = fed(("c",), builtin_dra=False)
    feed.warm()
    feed.seen(CLAIMS, ("ns", "d"), True)
    assert {m["op"] for m in sent} == {"extended", "ready"}


@pytest.mark.parametrize(
    "message",
    [{}, {"op": "present", "kind": "pods", "keys": []}, {"op": "extended", "names": []}, {"op": "later"}],
)
def test_the_mirror_refuses_a_message_it_does_not_know(message: Json) -> None:
    with pytest.raises(UnknownMessage):
        NameMirror().apply(message)


POD: Json = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p", "namespace": "ns"},
    "spec": {
        "containers": [{"name": "c", "image": "i", "resources": {"claims": [{"name": "gpu"}]}}],
        "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "t"}],
    },
}


def admission_review(obj: Json, uid: str = "u-1") -> bytes:
    request = {
        "uid": uid,
        "kind": {"kind": obj["kind"]},
        "namespace": "ns",
        "operation": "CREATE",
        "object": obj,
    }
    return json.dumps(
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    ).encode()


def ready_context() -> AdmissionContext:
    ctx = AdmissionContext(caches=NameMirror())
    ctx.ready.set()
    return ctx


def test_a_mutating_answer_patches_the_object_into_the_reviewed_one() -> None:
    ctx = ready_context()
    got = asyncio.run(answer(ctx, "mutate-pods", admission_review(POD)))
    response = got["response"]
    assert got["kind"] == "AdmissionReview" and response["uid"] == "u-1" and response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    assert applied(POD, ops) == asyncio.run(review(ctx, "Pod", POD, "ns"))
    assert all(not op["path"].startswith("/metadata/name") for op in ops)


def test_an_object_without_claims_passes_unpatched_and_a_bad_one_is_refused_with_its_field() -> None:
    ctx = ready_context()
    plain = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}}
    assert asyncio.run(answer(ctx, "mutate-pods", admission_review(plain)))["response"] == {
        "uid": "u-1",
        "allowed": True,
    }
    bad = copy.deepcopy(POD)
    bad["spec"]["resourceClaims"] = [{"name": "gpu"}]
    response = asyncio.run(answer(ctx, "mutate-pods", admission_review(bad)))["response"]
    assert response["allowed"] is False and response["status"]["code"] == 422
    assert "spec.resourceClaims[0]: must specify one of" in response["status"]["message"]
    klass = {
        "apiVersion": "resource.dra-operator.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": "x"},
        "spec": {"selectors": [{"cel": {"expression": "device.driver =="}}]},
    }
    response = asyncio.run(answer(ctx, "validate-deviceclasses", admission_review(klass)))["response"]
    assert response["allowed"] is False and "compilation failed" in response["status"]["message"]
    with pytest.raises(ValueError, match=r"request\.uid"):
        asyncio.run(answer(ctx, "mutate-pods", b'{"kind": "AdmissionReview"}'))


def post(port: int, path: str, body: bytes, ca: Path) -> tuple[int, Json]:
    context = ssl.create_default_context(cafile=str(ca))
    request = urllib.request.Request(
        f"https://127.0.0.1:{port}/{path}", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_server_answers_over_tls_while_the_operators_loop_is_busy(tmp_path: Path) -> None:
    files = tls.generate(tmp_path, ["127.0.0.1"])
    reviews: list[str] = []
    server = AdmissionServer(
        ready_context(), "127.0.0.1", 0, files.cert, files.key, on_review=lambda path, s: reviews.append(path)
    )
    server.start()
    try:
        got: list[tuple[int, Json]] = []

        def client() -> None:
            got.append(post(server.port, "mutate-pods", admission_review(POD), files.ca))

        caller = threading.Thread(target=client)
        caller.start()
        # This thread stands for the operator's event loop deep in a decision: it never yields to the server
        # (no await, no sleep) until the answer came; the server still answers, from its own thread.
        while caller.is_alive() and not got:
            sum(range(1000))
        caller.join(10)
        status, body = got[0]
        assert status == 200 and body["response"]["allowed"] is True and body["response"]["patch"]
        assert reviews == ["mutate-pods"]
        status, body = post(server.port, "mutate-nothing", b"{}", files.ca)
        assert status == 404 and "no admission webhook at /mutate-nothing" in body["message"]
        status, body = post(server.port, "mutate-pods", b"not json", files.ca)
        assert status == 400 and "not JSON" in body["message"]
    finally:
        server.stop()


def test_a_rotated_certificate_is_served_at_the_next_handshake(tmp_path: Path) -> None:
    first = tls.generate(tmp_path / "first", ["127.0.0.1"])
    server = AdmissionServer(ready_context(), "127.0.0.1", 0, first.cert, first.key, reload_check_seconds=0.0)
    server.start()
    try:
        assert post(server.port, "mutate-pods", admission_review(POD), first.ca)[0] == 200
        second = tls.generate(tmp_path / "second", ["127.0.0.1"])  # a new CA as well, as cert-manager may
        first.cert.write_bytes(second.cert.read_bytes())
        first.key.write_bytes(second.key.read_bytes())
        assert post(server.port, "mutate-pods", admission_review(POD), second.ca)[0] == 200
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            post(server.port, "mutate-pods", admission_review(POD), first.ca)
    finally:
        server.stop()


def test_a_port_in_use_fails_the_start_with_the_address(tmp_path: Path) -> None:
    files = tls.generate(tmp_path, ["127.0.0.1"])
    first = AdmissionServer(ready_context(), "127.0.0.1", 0, files.cert, files.key)
    first.start()
    try:
        second = AdmissionServer(ready_context(), "127.0.0.1", first.port, files.cert, files.key)
        with pytest.raises(RuntimeError, match=re.escape(f"cannot listen on 127.0.0.1:{first.port}")):
            second.start()
    finally:
        first.stop()


def test_the_server_speaks_http_as_the_api_server_calls_it(tmp_path: Path) -> None:
    """One kept-alive connection serves review after review (the API server's `?timeout=` query ignored),
    and a request it cannot serve gets a status that says why, not a dropped connection or a hang."""
    files = tls.generate(tmp_path, ["127.0.0.1"])
    reviews: list[str] = []
    server = AdmissionServer(
        ready_context(), "127.0.0.1", 0, files.cert, files.key, on_review=lambda path, s: reviews.append(path)
    )
    server.start()
    context = ssl.create_default_context(cafile=str(files.ca))
    try:
        connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
        for _ in range(3):
            connection.request("POST", "/mutate-pods?timeout=10s", admission_review(POD))
            reply = connection.getresponse()
            assert reply.status == 200 and json.loads(reply.read())["response"]["allowed"] is True
        assert reviews == ["mutate-pods"] * 3
        sockets = {connection.sock.getsockname()}
        connection.request("GET", "/mutate-pods")
        reply = connection.getresponse()
        assert reply.status == 405 and "POSTed" in json.loads(reply.read())["message"]
        connection.close()
        assert len(sockets) == 1, "the three reviews shared one connection"

        too_big = b"{" + b" " * (8 << 20) + b"}"
        connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
        try:
            connection.request("POST", "/mutate-pods", too_big)
            reply = connection.getresponse()
            assert reply.status == 413
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered 413 and closed before the whole body was sent: also a refusal
        connection.close()

        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket,
        ):
            tls_socket.sendall(b"POST /mutate-pods HTTP/1.1\r\nContent-Length: x\r\n\r\n")
            answer = b""
            while chunk := tls_socket.recv(65536):  # the server answers, then closes
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"bad request" in answer

        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket,
        ):
            tls_socket.sendall(b"POST /mutate-pods HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        # The server gave up on the half-sent request and still serves the next one.
        assert post(server.port, "mutate-pods", admission_review(POD), files.ca)[0] == 200
    finally:
        server.stop()


def test_a_stop_with_connections_open_ends_them_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The API server keeps its connections open; the server's stop (the operator leaving) ends them without
    an error in the log (the chaos test counts tracebacks in the operator's logs)."""
    files = tls.generate(tmp_path, ["127.0.0.1"])
    server = AdmissionServer(ready_context(), "127.0.0.1", 0, files.cert, files.key)
    server.start()
    context = ssl.create_default_context(cafile=str(files.ca))
    connections = [
        http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10) for _ in range(3)
    ]
    try:
        for connection in connections:
            connection.request("POST", "/mutate-pods", admission_review(POD))
            assert connection.getresponse().read()
        with caplog.at_level(logging.DEBUG):
            server.stop()
        assert server._thread is not None and not server._thread.is_alive()
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    finally:
        for connection in connections:
            connection.close()
