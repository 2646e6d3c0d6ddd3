"""The control socket's frames: a call's parts come back as sent, and a reply's plain form reads like the message
(``mig ps`` and ``mig status`` print the same from either)."""

from __future__ import annotations

import json

import pytest

from client import _render
from migrated.errors import AppNotFoundError, DaemonError, MigError
from migrated.transport._control_wire import HEADER, FrameKind, call_frame, error_frame, parse_call, parse_error, plain
from migrated.transport.v1 import control_pb2 as pb

APP = pb.AppInfo(
    name="sim", state=pb.APP_STATE_RUNNING, kind=pb.APP_KIND_REPL, host="h1", home="h0", pid=42, file="/a/sim.py",
    app_class="Sim", cwd="/a", args=["--steps", "3"], started_at=1.7e9, ended_at=0, exit_code=0, reason="",
    console_seq=2**40, version=2**33, autosave=0.5, keep="last=3", restart="never", restarts=2, epoch=2**35,
    files_home="h0",
)  # fmt: skip


def _payload(data: bytes) -> tuple[int, bytes]:
    size, kind = HEADER.unpack(data[: HEADER.size])
    assert len(data) == HEADER.size + size
    return kind, data[HEADER.size :]


@pytest.mark.parametrize("as_plain", [False, True])
def test_a_call_is_read_as_it_was_sent(as_plain: bool) -> None:
    request = pb.KillRequest(name="sim", force=True)
    kind, payload = _payload(call_frame("Kill", request.SerializeToString(), as_plain))
    assert kind == FrameKind.CALL
    method, parsed, plain_asked = parse_call(payload)
    assert (method.name, parsed, plain_asked, method.streaming) == ("Kill", request, as_plain, False)
    assert parse_call(_payload(call_frame("Logs"))[1])[0].streaming


def test_an_unknown_method_is_one_sentence() -> None:
    with pytest.raises(DaemonError, match="no method 'Nope'; mig and migrated are different versions"):
        parse_call(_payload(call_frame("Nope"))[1])


def test_an_error_keeps_its_class_and_sentence() -> None:
    parsed = parse_error(_payload(error_frame(AppNotFoundError("no app is called 'x'")))[1])
    assert type(parsed) is AppNotFoundError and parsed.message == "no app is called 'x'"
    assert type(parse_error(b'{"error": "FromANewerDaemon", "message": "m"}')) is MigError
    assert isinstance(parse_error(b"\xff"), DaemonError)


def test_the_plain_form_prints_as_the_message_does() -> None:
    reply = pb.ListReply(apps=[APP, pb.AppInfo(name="idle")])
    through_json = _render.fields(json.loads(json.dumps(plain(reply))))
    assert [_render.app_json(app) for app in through_json.apps] == [_render.app_json(app) for app in reply.apps]
    assert through_json.apps[0].epoch == 2**35 and through_json.apps[0].version == 2**33  # 64-bit stay numbers
    status = pb.StatusReply(host="h", version="1", pid=7, state_dir="/s", started_at=1.0, apps_running=1,
                            apps_total=2, rss_bytes=2**33, device_id="d", listen="0.0.0.0:1", mdns=True)  # fmt: skip
    assert _render.status_json(_render.fields(plain(status))) == _render.status_json(status)
