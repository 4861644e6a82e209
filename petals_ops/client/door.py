"""The one door to Petals: every import of petals or hivemind in petals-ops goes through this module.

hivemind 1.1.12 (the newest release with a Linux p2pd in its wheel) dropped the top-level re-exports
that petals 2.2.0.post1 imports (``from hivemind import PeerID, get_logger, anext, ...``). Importing
this module puts those names back on ``hivemind`` and then imports petals. Every process petals-ops
starts (DHT, servers, clients) imports petals through here; see :mod:`petals_ops.serve`.

This module is heavy (torch, transformers): import it inside functions, never at module level of a
module the CLI loads for ``--help``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import time
import types
from typing import Sequence

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("BITSANDBYTES_NOWELCOME", "1")


def _restore_hivemind_names() -> None:
    import hivemind
    import hivemind.compression
    import hivemind.p2p
    import hivemind.utils

    names = {name: getattr(hivemind.p2p, name)
             for name in ("P2P", "P2PContext", "P2PHandlerError", "PeerID", "PeerInfo")}
    modules = [hivemind.compression] + [
        importlib.import_module(f"hivemind.utils.{info.name}")
        for info in pkgutil.iter_modules(hivemind.utils.__path__)
    ]
    for module in modules:
        public = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
        for name in public:
            value = getattr(module, name)
            if not isinstance(value, types.ModuleType):
                names.setdefault(name, value)
    for name, value in names.items():
        if not hasattr(hivemind, name):
            setattr(hivemind, name, value)


_restore_hivemind_names()

import hivemind  # noqa: E402
import petals  # noqa: E402
from hivemind import DHT, PeerID  # noqa: E402
from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker  # noqa: E402
from petals import AutoDistributedModelForCausalLM  # noqa: E402
from petals.data_structures import ModelInfo, ServerInfo, ServerState  # noqa: E402
from petals.utils.dht import get_remote_module_infos  # noqa: E402

from petals_ops.util.output import raise_log_level, reapply_library_logging  # noqa: E402

# petals' import put hivemind's log handler on the root logger at INFO: a command keeps library lines
# off the terminal (without --debug) all the same. A server process chose nothing and keeps its logs.
reapply_library_logging()

PETALS_VERSION = petals.__version__
HIVEMIND_VERSION = hivemind.__version__


_ENDING: set = set()  # server sessions being ended in the background (end_server_sessions)


def end_server_sessions(server_sessions, timeout: float) -> None:
    """End a finished inference session's server streams all at once, without waiting for the servers.

    petals ends them one after the other and waits for each server's reply: a round trip per server on
    every question, and the calling thread blocked meanwhile. Here the end requests leave together on
    the client's event loop and this returns at once; the sessions are marked closed, so petals' own close
    (and a later ``__del__`` on any thread) does nothing. :func:`close_client` waits for the stragglers.
    """
    ends = []
    for s in server_sessions:
        queue, stream = getattr(s, "_inputs_queue", None), getattr(s, "_outputs_stream", None)
        s._outputs_stream = s._inputs_queue = None
        s.closed = True
        if queue is not None and stream is not None and s.stepped:
            ends.append((queue, stream))
    if ends:
        future = RemoteExpertWorker.run_coroutine(_end_streams(ends, timeout), return_future=True)
        _ENDING.add(future)
        future.add_done_callback(_ENDING.discard)


async def _end_streams(ends, timeout: float) -> None:
    import asyncio

    from hivemind.proto import runtime_pb2

    async def end(queue, stream) -> None:
        await queue.put(runtime_pb2.ExpertRequest())  # an empty request ends the session on the server
        try:
            await asyncio.wait_for(hivemind.anext(stream), timeout)
        except StopAsyncIteration:
            pass

    await asyncio.gather(*(end(q, s) for q, s in ends), return_exceptions=True)  # the stream is done with


def close_client(model) -> None:
    """Shut a distributed model's DHT and P2P down cleanly (otherwise their __del__ fails noisily at exit)."""
    import concurrent.futures

    concurrent.futures.wait(list(_ENDING), timeout=10)
    manager = model.transformer.h.sequence_manager
    manager.shutdown()
    p2p = getattr(manager.state, "p2p", None)
    if p2p is not None:
        RemoteExpertWorker.run_coroutine(p2p.shutdown())
        manager.state.p2p = None
    manager.dht.shutdown()


def ban_peers(model, peers: list[str]) -> None:
    """Make a distributed model's client avoid ``peers`` (base58) and re-route now.

    petals bans a peer only when an established server session fails; a server that died is still routed
    to (its DHT record outlives it) and every fresh session fails to connect to it."""
    manager = model.transformer.h.sequence_manager
    for peer in peers:
        manager.on_request_failure(PeerID.from_base58(peer))
    # on_request_failure leaves the peer in the precomputed spans: rebuild the routing (it skips banned peers)
    manager.update(wait=False)
    manager.ready.wait(timeout=15)


def on_each_answer(model, on_peer) -> None:
    """Call ``on_peer(peer_id_base58)`` for every server that answers a request of a distributed model
    (petals routes inside its client and tells only its sequence manager, through a method we wrap)."""
    manager = model.transformer.h.sequence_manager
    original = manager.on_request_success

    def on_success(peer_id):
        on_peer(peer_id.to_base58() if hasattr(peer_id, "to_base58") else str(peer_id))
        return original(peer_id)

    manager.on_request_success = on_success


def pin_servers(model, peers: "Sequence[str] | None", timeout: float = 30.0) -> None:
    """Route a distributed model's requests through ``peers`` (base58) only, or any server (None), from
    the next session on: petals' ``ClientConfig.allowed_servers``, changed on the live client (loading a
    client per route costs a DHT and a p2pd each). The routing table is rebuilt from the DHT now."""
    manager = model.transformer.h.sequence_manager
    manager.allowed_servers = None if peers is None else {PeerID.from_base58(p) for p in peers}
    with manager._thread_start_lock:  # a fresh client starts its updater at its first request
        if not manager.is_alive():
            manager._thread.start()
    manager.update(wait=False)
    if not manager.ready.wait(timeout=timeout):
        raise TimeoutError(f"the client's routing table was not rebuilt within {timeout:g} s")


_HOP_WATCHERS: dict = {}  # id(a client's config) -> callback, for the one class-level wrapper below


def _install_hop_wrapper() -> None:
    from petals.client.inference_session import _ServerInferenceSession

    if getattr(_ServerInferenceSession.step, "_petals_ops_timed", False):
        return
    original = _ServerInferenceSession.step

    def step(self, inputs, *args, **kwargs):
        watcher = _HOP_WATCHERS.get(id(self.config))
        if watcher is None:
            return original(self, inputs, *args, **kwargs)
        span, tokens = self.span, int(inputs.shape[1])
        peer, started = span.peer_id.to_base58(), time.perf_counter()
        try:
            out = original(self, inputs, *args, **kwargs)
        except BaseException:
            watcher(peer, span.start, span.end, tokens, time.perf_counter() - started, False)
            raise
        watcher(peer, span.start, span.end, tokens, time.perf_counter() - started, True)
        return out

    step._petals_ops_timed = True
    _ServerInferenceSession.step = step


@contextlib.contextmanager
def watch_hops(model, on_hop, on_failure=None):
    """While inside: ``on_hop(peer_id, start, end, tokens, seconds, ok)`` after each server's part of each
    inference step of ``model`` (petals' ``_ServerInferenceSession.step``: the client's wall time from
    sending that server its inputs to holding its outputs, serialization included), and ``on_failure(
    peer_id or None)`` for each request petals counts as failed (it retries those)."""
    manager = model.transformer.h.sequence_manager
    _install_hop_wrapper()
    key = id(manager.config)
    original_failure = manager.on_request_failure

    def failed(peer_id):
        if on_failure is not None:
            on_failure(peer_id.to_base58() if peer_id is not None else None)
        return original_failure(peer_id)

    _HOP_WATCHERS[key] = on_hop
    manager.on_request_failure = failed
    try:
        yield
    finally:
        _HOP_WATCHERS.pop(key, None)
        manager.on_request_failure = original_failure


def rpc_info_seconds(model, peer_id: str, block_index: int, timeout: float = 5.0) -> float:
    """Wall time of one ``rpc_info`` call (a small unary request that the server's connection handler
    answers without the compute queue) from a distributed model's client to ``peer_id``: the network
    round trip plus the handler's turnaround."""
    from hivemind.proto import runtime_pb2
    from petals.server.handler import TransformerConnectionHandler

    manager = model.transformer.h.sequence_manager
    stub = TransformerConnectionHandler.get_stub(manager.state.p2p, PeerID.from_base58(peer_id))
    request = runtime_pb2.ExpertUID(uid=manager.block_uids[block_index])
    started = time.perf_counter()
    RemoteExpertWorker.run_coroutine(stub.rpc_info(request, timeout=timeout))
    return time.perf_counter() - started


async def _rpc_info_each(peer_ids, timeout, _dht, node) -> dict:
    """Runs inside the DHT process (module-level so hivemind can pickle it): petals' ``rpc_info`` on each
    server at once; per peer id (answered, seconds, error text or None)."""
    import asyncio
    import time

    from hivemind.proto import runtime_pb2

    async def one(peer: str):
        started = time.perf_counter()
        try:
            await asyncio.wait_for(node.p2p.call_protobuf_handler(
                PeerID.from_base58(peer), "TransformerConnectionHandler.rpc_info", runtime_pb2.ExpertUID(),
                runtime_pb2.ExpertInfo), timeout)
            return peer, (True, time.perf_counter() - started, None)
        except asyncio.TimeoutError:
            return peer, (False, None, f"no answer to rpc_info in {timeout:g} s")
        except Exception as e:  # noqa: BLE001  a refused dial, an RPC error: the peer's text, capped
            message = (str(e) or type(e).__name__)[:300]  # the answers travel back over a pipe: small
            if message == "protocol not supported":  # it answered: a server still registering handlers
                return peer, (True, time.perf_counter() - started, None)
            return peer, (False, None, message)

    return dict(await asyncio.gather(*(one(p) for p in peer_ids)))


async def _dht_ping_each(addresses, timeout, _dht, node) -> dict:
    """Runs inside the DHT process: dial each multiaddr and send its node a DHT ping; per address
    (answered, seconds, error text or None). Dialing the given address first matters for a bootstrap peer
    that was never reached (its address is then unknown to p2pd); the ping tells a live node from a hung
    one whose connection is still open."""
    import asyncio
    import time

    from hivemind.proto import dht_pb2
    from hivemind.utils.multiaddr import Multiaddr

    async def one(address: str):
        started = time.perf_counter()
        try:
            maddr = Multiaddr(address)
            peer = PeerID.from_base58(maddr.value_for_protocol("p2p"))

            async def dial_and_ping():
                await node.p2p._client.connect(peer, [maddr.decapsulate(Multiaddr(f"/p2p/{peer}"))])
                request = dht_pb2.PingRequest(peer=node.protocol.node_info)
                await node.protocol.get_stub(peer).rpc_ping(request, timeout=timeout)

            await asyncio.wait_for(dial_and_ping(), timeout)
            return address, (True, time.perf_counter() - started, None)
        except asyncio.TimeoutError:
            return address, (False, None, f"no answer to a DHT ping in {timeout:g} s")
        except Exception as e:  # noqa: BLE001  refused, unroutable, a bad address
            return address, (False, None, (str(e) or type(e).__name__)[:300])

    return dict(await asyncio.gather(*(one(a) for a in addresses)))


Answers = dict[str, tuple[bool, float | None, str | None]]  # key -> (answered, latency s, error text)


def probe_servers(dht, peer_ids: list[str], timeout: float) -> Answers:
    """Call petals' ``rpc_info`` (what a client asks a server first) on every peer at once through
    ``dht``'s node, each bounded by ``timeout`` seconds: peer id -> (answered, latency s, error text).
    Error texts come from remote peers: sanitize before showing them."""
    return _in_chunks(dht, _rpc_info_each, list(peer_ids), timeout)


def ping_dht_peers(dht, addresses: list[str], timeout: float) -> Answers:
    """Dial and DHT-ping each multiaddr (``/ip4/../tcp/../p2p/ID``) at once, each bounded by ``timeout``:
    address -> (answered, latency s, error text)."""
    return _in_chunks(dht, _dht_ping_each, list(addresses), timeout)


# Peer ids per call into the DHT process: hivemind's pipe to it fails (EAGAIN, and the DHT process dies)
# on a large pickled call; 400 peer ids in one call did, as thousands of records did for simulate.py.
PROBE_CHUNK = 32


def _in_chunks(dht, each, keys: list[str], timeout: float) -> Answers:
    """``each`` over ``keys`` in the DHT process, :data:`PROBE_CHUNK` keys per call, all calls in flight
    at once (so the whole costs one timeout, not one per chunk)."""
    import functools

    futures = [dht.run_coroutine(functools.partial(each, keys[i:i + PROBE_CHUNK], float(timeout)),
                                 return_future=True)
               for i in range(0, len(keys), PROBE_CHUNK)]
    out: Answers = {}
    for future in futures:
        out.update(future.result(timeout=timeout + 30))
    return out


def new_identity() -> tuple[bytes, str]:
    """A fresh libp2p private key (the bytes ``--identity_path`` expects) and its base58 PeerID (for the
    fleet)."""
    import tempfile

    from hivemind.p2p import P2P

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "identity.key")
        P2P.generate_identity(path)
        with open(path, "rb") as f:
            data = f.read()
    return data, peer_id_of_identity(data)


def peer_id_of_identity(data: bytes) -> str:
    """The base58 PeerID a server started with ``--identity_path`` holding ``data`` will have."""
    return PeerID.from_identity(data).to_base58()


def block_memory(model_path_or_config: "str | dict", *, torch_dtype: str = "auto", quant_type: str = "none",
                 attn_cache_tokens: int | None = None) -> dict:
    """Petals' own accounting (``Server._choose_num_blocks``) of GPU memory per block, for ``plan``.

    ``model_path_or_config``: a local checkpoint directory or a dict of BloomConfig fields (hidden_size,
    n_layer, n_head, vocab_size). Returns block bytes, attention-cache bytes per block, the autograd
    reserve and the cache tokens used.
    """
    import torch
    from petals.models.bloom.config import DistributedBloomConfig
    from petals.server.block_utils import get_block_size, resolve_block_dtype
    from petals.utils.convert_block import QuantType
    from petals.utils.misc import get_size_in_bytes

    raise_log_level("petals")  # its config loader logs a licence line at INFO
    if isinstance(model_path_or_config, dict):
        config = DistributedBloomConfig(**model_path_or_config)
    else:
        from petals import AutoDistributedConfig

        config = AutoDistributedConfig.from_pretrained(model_path_or_config)
    dtypes = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    dtype = resolve_block_dtype(config, dtypes[torch_dtype or "auto"])
    quant = QuantType[(quant_type or "none").upper()]
    block = get_block_size(config, "memory", dtype=dtype, quant_type=quant)
    is_mqa = config.num_key_value_groups > 1
    tokens = attn_cache_tokens or (16384 if is_mqa else 4096)
    cache = 2 * config.hidden_size * tokens // config.num_key_value_groups * get_size_in_bytes(dtype)
    autograd = 2 * 1024**3 / 14336 * config.hidden_size
    return {"block_bytes": int(block), "cache_bytes_per_block": int(cache), "autograd_bytes": int(autograd),
            "attn_cache_tokens": tokens, "num_blocks": config.num_hidden_layers,
            "torch_dtype": str(dtype).replace("torch.", "")}


__all__ = [
    "AutoDistributedModelForCausalLM",
    "DHT",
    "HIVEMIND_VERSION",
    "ModelInfo",
    "PETALS_VERSION",
    "PeerID",
    "RemoteExpertWorker",
    "ServerInfo",
    "ServerState",
    "block_memory",
    "close_client",
    "get_remote_module_infos",
    "hivemind",
    "new_identity",
    "peer_id_of_identity",
    "petals",
    "pin_servers",
    "ping_dht_peers",
    "probe_servers",
    "rpc_info_seconds",
    "watch_hops",
]
