"""`genie play` as a command: bind, serve with uvicorn, and run the model in the main thread (ModelRunner)."""

from __future__ import annotations

import asyncio
import ipaddress
import queue
import signal
import socket
import sys
import threading
from pathlib import Path

from genie.core.errors import GenieInputError
from genie.play.player import load_player
from genie.play.routes import create_app, import_web
from genie.sampling import SamplingSettings

LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1"]
WS_PROTOCOL_LIMIT = 1024 * 1024  # bytes; uvicorn closes the connection (1009) past this, the server lives on


class ModelRunner:
    """Runs the model's work in the one thread that calls `run_until`, for the async handlers to await.

    `genie play` gives it the main thread and runs uvicorn's event loop in another: with torch's
    OpenMP threads, a step of the committed models took 155 ms in the main thread against 197 ms in a
    worker thread (context 4, 8 steps, 2 cores; CPU use 1.99 vs 1.58 cores), and every step goes through here."""

    def __init__(self):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()

    async def __call__(self, fn, *args):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._jobs.put((fn, args, loop, fut))
        return await fut

    def run_until(self, done) -> None:
        """Run queued jobs until `done()` is true (checked at least every 0.1 s)."""
        while not done():
            try:
                fn, args, loop, fut = self._jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                result, error = fn(*args), None
            except Exception as e:  # PlayRequestError and bugs alike go back to the handler that asked
                result, error = None, e
            loop.call_soon_threadsafe(_resolve, fut, result, error)


def _resolve(fut: asyncio.Future, result, error: Exception | None) -> None:
    if fut.cancelled():  # the tab went away meanwhile
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or one clear GenieInputError (port in use, unknown host) before serving."""
    if not 0 <= port <= 65535:
        raise GenieInputError(f"--port {port}: must be 0..65535 (0 = any free port)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise GenieInputError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise GenieInputError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app):
    """The uvicorn server for `app` (run it with `.run(sockets=[bind(host, port)])`)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", ws="websockets-sansio", ws_max_size=WS_PROTOCOL_LIMIT,
                            lifespan="on", timeout_graceful_shutdown=2)
    return uvicorn.Server(config)


def serve(model: str | Path, *, settings: SamplingSettings | None = None, host: str = "127.0.0.1", port: int = 8000,
          device: str = "auto", data: str | Path | None = None, split: str | None = None,
          keymap: str | Path | None = None, seed: int = 0, idle_timeout: float = 600.0, warmup: bool = True) -> None:
    """`genie play`: load everything (failing before serving), bind, then serve until Ctrl+C.

    settings: how frames are sampled (default genie.play.player.PLAY_SETTINGS: 8 steps, a window hop of 4).
    warmup: generate one throw-away frame before serving, so the first key press does not pay one-off costs."""
    import_web()
    player = load_player(model, settings=settings, device=device, data=data, split=split, keymap=keymap, seed=seed,
                         idle_timeout=idle_timeout, warmup=warmup)
    sock = bind(host, port)
    if not is_loopback(host):
        print(f"genie: warning: --host {host} makes the game reachable from other machines; genie play has no "
              f"authentication (anyone who can reach port {sock.getsockname()[1]} can use the model)", file=sys.stderr)
    runner = ModelRunner()
    server = uvicorn_server(create_app(player, allowed_hosts=LOOPBACK_NAMES if is_loopback(host) else None,
                                       runner=runner))
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    ctx = f"context {player.context} of {player.window} frames, window hop {player.window_hop}"
    keys = "keys: the action map" if player.action_map else "keys: keymap.json" if player.keymap else "keys: latent ids"
    print(f"genie play: serving http://{shown}:{bound[1]}/  "
          f"({model} on {player.device}, {player.settings.steps} MaskGIT steps, {ctx}, "
          f"{len(player.prompts)} dataset prompts, {keys}; Ctrl+C to stop)", flush=True)
    # uvicorn's event loop in a thread, the model in this one (ModelRunner); Ctrl+C or SIGTERM stop both
    http = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="genie-play-http", daemon=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    http.start()
    try:
        runner.run_until(lambda: stop.is_set() or not http.is_alive())
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        http.join(timeout=5)
    print("genie play: stopped", flush=True)
