"""The stream manager's own IPC client (hedgerow.streams.ipcclient) against the agent's
real IPC server and its real PublishToIoTCore (edge-agent/cloudipc.py) over a real,
offline cloud proxy: what it publishes lands in the agent's persisted spool; each
modelled refusal reaches the caller as its own exception; a wrong token cannot connect;
a lost connection fails what is waiting instead of hanging."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import Awaitable, Callable

import pytest

from hedgerow.agent import cloudipc, cloudproxy, cloudspool, ipcserver
from hedgerow.core import accesscontrol, cloudmessage
from hedgerow.streams import ipcclient

TOKEN = "stream-manager-token"
THING = "sm-ipc-thing"
POLICIES = accesscontrol.resolve_policies("hedgerow.StreamManager", {"accessControl": {
    accesscontrol.MQTTPROXY: {"sm:1": {"operations": [cloudipc.PUBLISH],
                                       "resources": ["devices/{iot:thingName}/streams/#"]}}}})


def lookup(token: str) -> ipcserver.Caller | None:
    if token != TOKEN:
        return None
    return ipcserver.Caller("hedgerow.StreamManager", token, POLICIES, THING)


def serve(tmp_path: pathlib.Path,
          test: Callable[[ipcserver.Server, pathlib.Path], Awaitable[None]],
          max_messages: int = 100) -> None:
    spool = tmp_path / "state" / "cloud-spool"
    # Offline (no connector): a publish is spooled and answered success, as on a device
    # whose network is down.
    proxy = cloudproxy.CloudProxy(spool, policy=cloudmessage.SpoolPolicy.REFUSE_NEW,
                                  max_messages=max_messages)

    async def main() -> None:
        server = ipcserver.Server(tmp_path / "ipc" / "ipc.sock", lookup,
                                  cloudipc.operations(proxy))
        await server.start()
        try:
            await test(server, spool)
        finally:
            server.close()
    asyncio.run(main())


def spooled(spool: pathlib.Path) -> list[tuple[str, bytes]]:
    return [(r.message.topic, r.message.payload)
            for r in cloudspool.SpoolFiles(spool).load()]


def test_publishes_reach_the_agent_and_refusals_are_exceptions(
        tmp_path: pathlib.Path) -> None:
    async def test(server: ipcserver.Server, spool: pathlib.Path) -> None:
        client = ipcclient.Client(str(server.path), TOKEN)
        await client.connect()
        mine = f"devices/{THING}/streams/telemetry"
        # Concurrent calls on the one connection, each its own stream.
        await asyncio.gather(*(client.publish_to_iot_core(mine, b"batch %d" % i)
                               for i in range(5)))
        assert sorted(spooled(spool)) == [(mine, b"batch %d" % i) for i in range(5)]

        with pytest.raises(ipcclient.UnauthorizedError) as refused:
            await client.publish_to_iot_core(f"devices/{THING}/secrets", b"x")
        assert "hedgerow.StreamManager is not authorized to call " \
               "aws.greengrass#PublishToIoTCore" in refused.value.message
        with pytest.raises(ipcclient.InvalidArgumentsError, match="topicName"):
            await client.publish_to_iot_core(f"devices/{THING}/streams/#", b"x")
        with pytest.raises(ipcclient.ServiceError, match="not served"):
            await client.call("aws.greengrass#NoSuchOperation", {})
        # The connection is still good after every refusal.
        await client.publish_to_iot_core(mine, b"after")
        assert spooled(spool)[-1] == (mine, b"after")
        await client.close()

    serve(tmp_path, test)


def test_a_full_spool_is_a_service_error(tmp_path: pathlib.Path) -> None:
    async def test(server: ipcserver.Server, spool: pathlib.Path) -> None:
        client = ipcclient.Client(str(server.path), TOKEN)
        await client.connect()
        topic = f"devices/{THING}/streams/s"
        await client.publish_to_iot_core(topic, b"fits")
        with pytest.raises(ipcclient.ServiceError, match="spool"):
            await client.publish_to_iot_core(topic, b"does not fit")
        assert spooled(spool) == [(topic, b"fits")]
        await client.close()

    serve(tmp_path, test, max_messages=1)


def test_a_wrong_token_cannot_connect(tmp_path: pathlib.Path) -> None:
    async def test(server: ipcserver.Server, spool: pathlib.Path) -> None:
        client = ipcclient.Client(str(server.path), "forged")
        with pytest.raises(ipcclient.ConnectionLostError, match="SVCUID"):
            await client.connect()
        assert not client.connected
        with pytest.raises(ipcclient.ConnectionLostError):
            await client.publish_to_iot_core(f"devices/{THING}/streams/s", b"x")
        assert spooled(spool) == []

    serve(tmp_path, test)


def test_a_lost_connection_fails_the_caller_and_a_new_one_works(
        tmp_path: pathlib.Path) -> None:
    async def test(server: ipcserver.Server, spool: pathlib.Path) -> None:
        client = ipcclient.Client(str(server.path), TOKEN)
        await client.connect()
        for conn in list(server.connections):  # the agent going away
            assert conn.transport is not None
            conn.transport.abort()
        with pytest.raises(ipcclient.ConnectionLostError):
            for _ in range(100):  # until the client has read the EOF
                await client.publish_to_iot_core(f"devices/{THING}/streams/s", b"x")
                await asyncio.sleep(0.01)
        assert not client.connected
        again = ipcclient.Client(str(server.path), TOKEN)
        await again.connect()
        await again.publish_to_iot_core(f"devices/{THING}/streams/s", b"again")
        assert spooled(spool)[-1][1] == b"again"
        await again.close()

    serve(tmp_path, test)


def test_resolve_error_maps_models_and_survives_a_bad_body() -> None:
    error = ipcclient.resolve_error("aws.greengrass#ServiceError", json.dumps(
        {"message": "the cloud broker refused"}).encode())
    assert isinstance(error, ipcclient.ServiceError)
    assert str(error) == "ServiceError: the cloud broker refused"
    odd = ipcclient.resolve_error("aws.greengrass#SomethingNew", b"not json")
    assert type(odd) is ipcclient.IpcError and odd.message == "(no message)"


def test_the_mqtt_export_imports_nothing_heavy() -> None:
    """The MQTT export costs the stream manager no MQTT or awscrt library: a fresh
    interpreter importing it (and what it runs on) loads none of them."""
    import subprocess
    import sys

    heavy = ["paho", "awscrt", "awsiot", "pydantic", "hedgerow.agent"]
    code = ("import sys, hedgerow.streams.mqttexport, hedgerow.streams.ipcclient; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
