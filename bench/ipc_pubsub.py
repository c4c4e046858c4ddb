"""Local pub/sub: Hedgerow IPC + the official SDK vs mosquitto + paho (QoS 1), same run.

1 publisher -> 1 and -> 10 subscribers, 256-byte messages, every publish acknowledged
on both sides (IPC: the PublishToTopic response; MQTT: QoS 1 PUBACK, and QoS 1 to the
subscribers), asynchronous publishing with a window of WINDOW in flight on both sides.
Throughput is messages published per second until every subscriber has every message;
latency is publish-to-delivery at a fixed 2,000 msg/s to 10 subscribers. The publisher
runs in this process, each subscriber in a process of its own (one GIL for all would
measure the GIL): the same layout on both sides.

throughput_ceiling_1 (report only): the same SDK publisher, the same way, against a
stand-in server in the bench (`_stub_serve`) that stores and forwards nothing: it answers
the connect and each PublishToTopic with a ready-made response at once. No server can
acknowledge faster than that, so it is the most any server reaches with this client;
throughput_ratio_1_ceiling is it ÷ mosquitto+paho in the same run (as
stream_append's append_ratio_1_ceiling does for the stream manager).
"""

from __future__ import annotations

import binascii
import collections
import contextlib
import json
import multiprocessing
import os
import pathlib
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Protocol

import paho.mqtt.client as mqtt
from awsiot.greengrasscoreipc import connect, model
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from paho.mqtt.enums import CallbackAPIVersion

from bench import _agent, _ipc, harness
from hedgerow.core import eventstream as es
from tests.support.mosquitto import Mosquitto

SIZE = 256
COUNT = 5000
WINDOW = 64
RATE = 2000
LATENCY_SECONDS = 3.0
TOPIC = "bench/pubsub"


class Publisher(Protocol):
    def publish(self, payload: bytes) -> Callable[[], None]:
        """Send; the returned call waits for the acknowledgement."""

    def close(self) -> None: ...


# --- subscribers: one process each (the bench measures the servers, not one GIL) ---------

def _subscriber(kind: str, where: str, token: str, pipe: Connection) -> None:
    """Subscribe, say "ready", then per round: count `want` messages (with their
    latencies when timing) and answer when the last arrived, on CLOCK_MONOTONIC (one
    clock for every process of the machine)."""
    state = {"count": 0, "want": 0, "timing": False, "done": 0.0}
    latencies: list[float] = []
    finished = threading.Event()

    def got(payload: bytes | bytearray) -> None:
        now = time.monotonic()
        if state["timing"]:
            latencies.append(now - struct.unpack_from(">d", payload)[0])
        state["count"] += 1
        if state["count"] == state["want"]:
            state["done"] = now
            finished.set()

    if kind == "ipc":
        ipc = GreengrassCoreIPCClientV2(client=connect(ipc_socket=where, authtoken=token),
                                        executor=None)
        ipc.subscribe_to_topic(topic=TOPIC, on_stream_event=lambda e: got(
            e.binary_message.message))
    else:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{token}")
        client.on_message = lambda _c, _u, m: got(m.payload)
        subscribed = threading.Event()
        client.on_subscribe = lambda *_a: subscribed.set()
        client.connect("127.0.0.1", int(where))
        client.loop_start()
        client.subscribe(TOPIC, qos=1)
        subscribed.wait(30)
    pipe.send("ready")
    while (order := pipe.recv()) is not None:
        latencies.clear()
        finished.clear()
        state.update(count=0, want=order[0], timing=order[1], done=0.0)
        cpu = time.process_time()  # every thread of this process: the client's own cost
        pipe.send("armed")
        finished.wait(300)
        pipe.send((state["done"], state["count"], list(latencies), time.process_time() - cpu))


class Subscribers:
    def __init__(self, kind: str, where: str, tokens: list[str]) -> None:
        ctx = multiprocessing.get_context("spawn")  # never fork a process holding awscrt
        self.pipes, self.procs = [], []
        self.cpu_seconds = 0.0  # the subscribers' CPU in the last round
        for token in tokens:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_subscriber, args=(kind, where, token, theirs),
                               daemon=True)
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)
        for pipe in self.pipes:
            if not pipe.poll(60) or pipe.recv() != "ready":
                raise TimeoutError("a subscriber did not subscribe")

    def arm(self, want: int, timing: bool) -> None:
        for pipe in self.pipes:
            pipe.send((want, timing))
        for pipe in self.pipes:
            pipe.recv()

    def results(self) -> tuple[float, list[float]]:
        """When the last subscriber had everything; every latency."""
        done, latencies = 0.0, []
        self.cpu_seconds = 0.0
        for pipe in self.pipes:
            if not pipe.poll(300):
                raise TimeoutError("a subscriber did not get every message")
            at, count, mine, cpu = pipe.recv()
            if not at:
                raise TimeoutError(f"a subscriber got {count} messages")
            done = max(done, at)
            latencies += mine
            self.cpu_seconds += cpu
        return done, latencies

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


# --- publishers (in this process) -------------------------------------------------------

class IpcPublisher:
    def __init__(self, ipc: GreengrassCoreIPCClientV2) -> None:
        self.ipc = ipc

    def publish(self, payload: bytes) -> Callable[[], None]:
        future = self.ipc.publish_to_topic_async(
            topic=TOPIC, publish_message=model.PublishMessage(
                binary_message=model.BinaryMessage(message=payload)))
        return lambda: future.result(30)

    def close(self) -> None:
        self.ipc.close()


class MqttPublisher:
    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub")
        self.client.max_inflight_messages_set(WINDOW)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, payload: bytes) -> Callable[[], None]:
        info = self.client.publish(TOPIC, payload, qos=1)
        return lambda: info.wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _send(publisher: Publisher, count: int, rate: float | None) -> float:
    """Publish `count` messages (at `rate` per second, or as fast as acknowledged with
    WINDOW in flight), each stamped with its send time; when the first went out."""
    filler = b"x" * (SIZE - 8)
    began = time.monotonic()
    pending: collections.deque[Callable[[], None]] = collections.deque()
    for i in range(count):
        if rate is not None:
            due = began + i / rate
            while (now := time.monotonic()) < due:
                time.sleep(min(0.0005, due - now))
        pending.append(publisher.publish(struct.pack(">d", time.monotonic()) + filler))
        if len(pending) >= WINDOW:
            pending.popleft()()
    for wait in pending:
        wait()
    return began


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(publisher: Publisher, subs: Subscribers, server_pid: int,
             latency: bool) -> dict[str, float]:
    subs.arm(COUNT, timing=False)  # warm-up round
    _send(publisher, COUNT, None)
    subs.results()
    best, server_cpu, publisher_cpu = 0.0, 0.0, 0.0
    for _ in range(2):
        subs.arm(COUNT, timing=False)
        server, mine = _cpu_seconds(server_pid), time.process_time()
        began = _send(publisher, COUNT, None)
        done, _ = subs.results()
        server_cpu += _cpu_seconds(server_pid) - server
        publisher_cpu += time.process_time() - mine
        best = max(best, COUNT / (done - began))
    # Where the time goes, per message: the server's CPU per delivery, and the
    # publishing client's own CPU per publish (this process holds only the publisher).
    out = {"throughput": best,
           "server_us": server_cpu / (2 * COUNT * len(subs.pipes)) * 1e6,
           "publisher_us": publisher_cpu / (2 * COUNT) * 1e6}
    if latency:
        count = int(RATE * LATENCY_SECONDS)
        subs.arm(count, timing=True)
        busy = _Busy()
        _send(publisher, count, RATE)
        _, latencies = subs.results()
        out["busy"] = busy.fraction()
        out["client_us"] = subs.cpu_seconds / (count * len(subs.pipes)) * 1e6
        ms = [s * 1000 for s in latencies]
        out["p50"], out["p99"] = harness.percentile(ms, 50), harness.percentile(ms, 99)
    return out


class _Busy:
    """How busy every core of the machine was since this was made, 0..1 (/proc/stat):
    near 1, latency is time spent waiting for a core, whoever the server is."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
        idle = ticks[3] + ticks[4]  # idle + iowait
        return sum(ticks) - idle, sum(ticks)

    def fraction(self) -> float:
        busy, total = self._read()
        return (busy - self.start[0]) / max(1, total - self.start[1])


# --- the ceiling: the SDK publisher against a server that does nothing ---------------------

def _stub_serve(path: str) -> None:
    """A stand-in for the agent that stores and forwards nothing: it accepts any connect
    and answers each request with an empty PublishToTopicResponse at once, all the answers
    to one read in one write (as the agent does). One thread per connection, blocking
    sockets, in a process of its own."""
    accepted = es.render_rpc(es.RpcMessage(es.MessageType.CONNECT_ACK,
                                           es.Flag.CONNECTION_ACCEPTED))
    # Every answer but its stream id is the same: rendered once, the id patched in.
    template = es.render_application(1, "aws.greengrass#PublishToTopicResponse", {},
                                     terminate=True)
    sid_at = es.PRELUDE_BYTES + len(es.render_rpc_headers(  # :stream-id ends the three
        es.MessageType.APPLICATION_MESSAGE, es.Flag.NONE, 0)) - 4

    def answer(sid: int) -> bytes:
        frame = bytearray(template)
        struct.pack_into(">i", frame, sid_at, sid)
        struct.pack_into(">I", frame, len(frame) - 4, binascii.crc32(frame[:-4]))
        return bytes(frame)

    def serve(conn: socket.socket) -> None:
        decoder = es.Decoder()
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                out = []
                for item in decoder.feed(data):
                    if isinstance(item, es.FrameError):
                        return
                    rpc = es.resolve_rpc(item)
                    if isinstance(rpc, es.FrameError):
                        return
                    if rpc.type is es.MessageType.CONNECT:
                        out.append(accepted)
                    elif rpc.type is es.MessageType.APPLICATION_MESSAGE and \
                            rpc.header(es.OPERATION) is not None:
                        out.append(answer(rpc.stream_id))
                if out:
                    conn.sendall(b"".join(out))

    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path + ".new")
    listener.listen()
    os.rename(path + ".new", path)  # the path shows once it is listening: no refused connect
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def _ceiling() -> dict[str, float]:
    """The SDK publisher's rate (and CPU per publish, its own and the stub's) against
    `_stub_serve`: warm-up, then the best of two rounds, as `_measure`."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="bench-ipc-stub-"))
    path = str(folder / "ipc.sock")
    stub = multiprocessing.get_context("spawn").Process(target=_stub_serve, args=(path,),
                                                         daemon=True)
    stub.start()
    try:
        _agent.wait(lambda: os.path.exists(path), 60)
        assert stub.pid is not None
        publisher = IpcPublisher(GreengrassCoreIPCClientV2(
            client=connect(ipc_socket=path, authtoken="stub"), executor=None))
        try:
            _send(publisher, COUNT, None)
            best, stub_cpu, publisher_cpu = 0.0, 0.0, 0.0
            for _ in range(2):
                server, mine = _cpu_seconds(stub.pid), time.process_time()
                began = _send(publisher, COUNT, None)
                took = time.monotonic() - began
                stub_cpu += _cpu_seconds(stub.pid) - server
                publisher_cpu += time.process_time() - mine
                best = max(best, COUNT / took)
        finally:
            publisher.close()
    finally:
        stub.kill()
        stub.join(10)
        shutil.rmtree(folder, ignore_errors=True)
    return {"throughput": best, "stub_us": stub_cpu / (2 * COUNT) * 1e6,
            "publisher_us": publisher_cpu / (2 * COUNT) * 1e6}


def _run_side(kind: str, where: str, tokens: list[str], server_pid: int,
              make: Callable[[], Publisher]) -> dict[str, float]:
    out: dict[str, float] = {}
    for n in (1, 10):
        subs = Subscribers(kind, where, tokens[:n])
        publisher = make()
        try:
            found = _measure(publisher, subs, server_pid, latency=n == 10)
        finally:
            publisher.close()
            subs.close()
        for key in ("throughput", "server_us", "publisher_us"):
            out[f"{key}_{n}"] = found.pop(key)
        out.update(found)
    return out


def run() -> Iterator[harness.Figure]:
    agent = _agent.BenchAgent()
    try:
        subs = [f"sub{i}" for i in range(10)]
        _ipc.start(agent, ["pub", *subs])
        records = json.loads((agent.root / "state" / "components.json").read_text())
        ipc = _run_side("ipc", str(agent.root / "ipc" / "ipc.sock"),
                        [records[n]["token"] for n in subs], agent.proc.pid,
                        lambda: IpcPublisher(_ipc.client(agent, "pub")))
    finally:
        agent.close()
    ceiling = _ceiling()
    with Mosquitto() as broker:
        assert broker.proc is not None
        mq = _run_side("mqtt", str(broker.port), subs, broker.proc.pid,
                       lambda: MqttPublisher(broker.port))
    for n in (1, 10):
        yield harness.Figure(f"throughput_ratio_{n}", ipc[f"throughput_{n}"], "msg/s",
                             mq[f"throughput_{n}"], ">= 1.0x mosquitto+paho (QoS 1)")
    yield harness.Figure(
        "throughput_ceiling_1", ceiling["throughput"], "msg/s", None,
        f"report only: the SDK publisher against a stub server that stores and forwards "
        f"nothing (publisher {ceiling['publisher_us']:.0f} us, stub "
        f"{ceiling['stub_us']:.0f} us of CPU per publish)")
    yield harness.Figure("throughput_ratio_1_ceiling", ceiling["throughput"], "msg/s",
                         mq["throughput_1"], "report only: the most any server reaches "
                         "with the SDK publisher, ÷ mosquitto+paho")
    yield harness.Figure("p99_ms_2000", ipc["p99"], "ms", mq["p99"],
                         "<= 5 ms (10 subscribers at 2,000 msg/s; baseline: mosquitto)")
    yield harness.Figure("p50_ms_2000", ipc["p50"], "ms", mq["p50"],
                         "report only (baseline: mosquitto+paho)")
    # Where the time goes: the servers' own CPU per delivered message (the agent, all of
    # it, against mosquitto), and the publishing clients' CPU per publish (SDK vs paho).
    for n in (1, 10):
        yield harness.Figure(f"server_cpu_us_per_delivery_{n}", ipc[f"server_us_{n}"], "us",
                             mq[f"server_us_{n}"], "report only (the agent vs mosquitto)")
    yield harness.Figure("publisher_cpu_us_per_publish_1", ipc["publisher_us_1"], "us",
                         mq["publisher_us_1"], "report only (SDK publisher vs paho)")
    # Why p99 is what it is: the clients' own CPU per delivery, and how busy the cores
    # were during the latency round (a saturated machine queues every message).
    yield harness.Figure("client_cpu_us_per_delivery_2000", ipc["client_us"], "us",
                         mq["client_us"], "report only (SDK subscriber vs paho subscriber)")
    yield harness.Figure("machine_busy_2000", ipc["busy"], "fraction of all cores",
                         mq["busy"], "report only (near 1.0: latency is queueing for a core)")


if __name__ == "__main__":
    for figure in run():
        print(json.dumps(figure.to_json()))
