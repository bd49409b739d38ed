import asyncio
import gc
import weakref

import grpc
import numpy as np
import pytest

from common import rpc
from common.wire import pack, unpack


def test_generic_bytes_service_round_trip_and_large_messages():
    def echo_sum(req, ctx):
        meta, (x,) = unpack(req)
        return pack({"n": meta["n"]}, [x.sum(keepdims=True), x])

    server, port = rpc.serve("Test", {"EchoSum": echo_sum})
    try:
        ch = rpc.channel(f"127.0.0.1:{port}")
        call = rpc.method(ch, "Test", "EchoSum")
        big = np.ones(3_000_000, np.float32)  # 12 MB: over gRPC's 4 MiB default limit
        meta, (s, back) = unpack(call(pack({"n": 1}, [big]), timeout=30))
        assert meta == {"n": 1} and s[0] == 3_000_000
        np.testing.assert_array_equal(back, big)
        with pytest.raises(grpc.RpcError) as e:
            rpc.method(ch, "Test", "Nope")(b"", timeout=5)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        ch.close()
    finally:
        server.stop(None)


def test_aio_server_answers_a_sync_client():
    import asyncio
    import threading

    ready = threading.Event()
    state = {}

    async def handler(req, ctx):
        return req[::-1]

    async def main():
        server, port = await rpc.serve_aio("Rev", {"Reverse": handler})
        state["port"] = port
        ready.set()
        while not state.get("stop"):
            await asyncio.sleep(0.01)
        await server.stop(None)

    t = threading.Thread(target=asyncio.run, args=(main(),))
    t.start()
    try:
        assert ready.wait(10)
        with rpc.channel(f"127.0.0.1:{state['port']}") as ch:
            assert rpc.method(ch, "Rev", "Reverse")(b"abc", timeout=5) == b"cba"
    finally:
        state["stop"] = True
        t.join(10)


def test_a_stream_method_answers_each_message_in_order_beside_unary_ones():
    def upper(requests, ctx):
        for r in requests:
            yield r.upper()

    server, port = rpc.serve("S", {"Ping": lambda req, ctx: b"pong"}, streams={"Up": upper})
    ch = rpc.channel(f"127.0.0.1:{port}")
    try:
        replies = list(rpc.stream(ch, "S", "Up")(iter([b"a", b"bc", b"def"]), timeout=10))
        assert replies == [b"A", b"BC", b"DEF"]
        assert rpc.method(ch, "S", "Ping")(b"", timeout=10) == b"pong"
    finally:
        ch.close()
        server.stop(None)


def test_a_busy_port_is_refused_not_shared():
    """gRPC's default SO_REUSEPORT would let a second server bind the same port and take
    half of the first one's calls."""
    first, port = rpc.serve("Test", {"Who": lambda req, ctx: b"first"})
    try:
        with pytest.raises(OSError, match=f"could not bind 127.0.0.1:{port}"):
            second, _ = rpc.serve("Test", {"Who": lambda req, ctx: b"second"}, port=port)
            second.stop(None)
        with rpc.channel(f"127.0.0.1:{port}") as ch:
            call = rpc.method(ch, "Test", "Who")
            assert {call(b"", timeout=10) for _ in range(20)} == {b"first"}
    finally:
        first.stop(None)


def test_a_background_task_is_kept_alive_while_it_waits():
    """The event loop holds tasks weakly: a task blocked on a future that only it holds
    is garbage, and a plain ensure_future lets gc collect it mid-run (a supervisor's
    restart or a server's catch-up would silently never finish). ``background`` keeps a
    reference until the task is done."""

    async def main():
        async def wait_on_own_future():
            await asyncio.get_running_loop().create_future()

        plain = weakref.ref(asyncio.ensure_future(wait_on_own_future()))
        kept = weakref.ref(rpc.background(wait_on_own_future()))
        await asyncio.sleep(0)  # both start and block
        gc.collect()
        assert plain() is None  # the hazard itself
        task = kept()
        assert task is not None and not task.done()
        task.cancel()
        await asyncio.wait([task])
        await asyncio.sleep(0)  # the done callbacks run on the next turn of the loop
        assert task not in rpc._BACKGROUND  # released once done

    asyncio.run(main())
