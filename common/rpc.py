"""gRPC plumbing shared by the multi-process systems (miniclipper, minips).

We use grpcio's *generic* handlers with raw ``bytes`` messages encoded by
:mod:`common.wire`, instead of protobuf-generated stubs: the message layout is then
plain Python a student can read (header + packed arrays, as ps-lite and Clipper do), and
there is no generated code to keep in step with a protobuf runtime.

Defaults that matter for correctness, not just speed:

* every server binds loopback unless an address is given (nothing is exposed by
  accident);
* message-size limits are raised from gRPC's 4 MiB default, since a 1M-key push of
  float32 values is already 12 MiB with its keys;
* a method name is ``/<service>/<Method>``, the same path a protobuf service would use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent import futures

import grpc

from .net import address

MAX_MESSAGE_BYTES = 1 << 30
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
LOOPBACK = "127.0.0.1"
# gRPC servers set SO_REUSEPORT by default: a second server on a busy port would bind
# too, and the kernel would split the calls between the two. Refuse instead.
SERVER_OPTIONS = CHANNEL_OPTIONS + [("grpc.so_reuseport", 0)]

Handler = Callable[[bytes, grpc.ServicerContext], bytes]
AsyncHandler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def _identity(b: bytes) -> bytes:
    return b


def _generic(service: str, handlers: dict, streams: dict | None = None,
             ) -> grpc.GenericRpcHandler:
    """Unary methods from ``handlers``; bidirectional-stream methods (``fn(request
    iterator, ctx) -> response iterator``) from ``streams``."""
    table = {name: grpc.unary_unary_rpc_method_handler(fn, request_deserializer=_identity,
                                                       response_serializer=_identity)
             for name, fn in handlers.items()}
    table.update({name: grpc.stream_stream_rpc_method_handler(
        fn, request_deserializer=_identity, response_serializer=_identity)
        for name, fn in (streams or {}).items()})
    return grpc.method_handlers_generic_handler(service, table)


def _bind(server: grpc.Server | grpc.aio.Server, host: str, port: int) -> int:
    """Bind ``host:port``; an OSError naming it if that fails (grpcio raises a
    RuntimeError or returns 0, depending on its version)."""
    where = address(host, port)
    try:
        bound = server.add_insecure_port(where)
    except RuntimeError as e:
        raise OSError(f"could not bind {where}: {e}") from None
    if bound == 0:
        raise OSError(f"could not bind {where}")
    return bound


def serve(service: str, handlers: dict[str, Handler], *, host: str = LOOPBACK,
          port: int = 0, max_workers: int = 16, streams: dict | None = None,
          ) -> tuple[grpc.Server, int]:
    """Start a threaded gRPC server for ``handlers`` (method name -> fn(bytes, ctx) -> bytes)
    and ``streams`` (method name -> fn(iterator of bytes, ctx) -> iterator of bytes; each
    open stream holds one of the ``max_workers`` threads for its whole life).

    Returns the started server and the port it bound (``port=0`` picks a free one).
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((_generic(service, handlers, streams),))
    bound = _bind(server, host, port)
    server.start()
    return server, bound


async def serve_aio(service: str, handlers: dict[str, AsyncHandler], *, host: str = LOOPBACK,
                    port: int = 0) -> tuple[grpc.aio.Server, int]:
    """The asyncio flavour of :func:`serve` (handlers are coroutines)."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((_generic(service, handlers),))
    bound = _bind(server, host, port)
    await server.start()
    return server, bound


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


def aio_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


def method(ch: grpc.Channel | grpc.aio.Channel, service: str, name: str):
    """A callable for ``/<service>/<name>`` on ``ch``: ``call(request_bytes, timeout=...)``."""
    return ch.unary_unary(f"/{service}/{name}", request_serializer=_identity,
                          response_deserializer=_identity)


def stream(ch: grpc.Channel | grpc.aio.Channel, service: str, name: str):
    """A callable that opens the bidirectional stream ``/<service>/<name>`` on ``ch``."""
    return ch.stream_stream(f"/{service}/{name}", request_serializer=_identity,
                            response_deserializer=_identity)


_BACKGROUND: set[asyncio.Future] = set()


def background(aw: Awaitable) -> asyncio.Future:
    """Run ``aw`` as a task that nobody awaits (a restart, a catch-up, a message sent
    on), holding a reference until it is done. The event loop keeps only weak references
    to tasks, so an unreferenced one can be garbage-collected mid-execution (the
    asyncio docs on ``create_task``: "save a reference to the result of this function")."""
    task = asyncio.ensure_future(aw)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
    return task
