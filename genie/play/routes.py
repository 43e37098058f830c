"""The web app of `genie play`: the page, the JSON API and the per-tab WebSocket (Starlette).

HTTP (errors are JSON `{"error": ..., "status": ...}` with a 4xx status):

    GET  /                          the page            GET /api/info          model, keys, limits
    GET  /api/prompts/{i}.png       a --data prompt     POST /api/session      a new session id
    POST /api/session/{sid}/prompt  an uploaded PNG/JPEG as the raw request body (Content-Type image/png|jpeg)
    GET  /api/session/{sid}/clip.mp4 | clip.gif | actions.json | prompt.png   the session, to download
    WebSocket /ws?session=SID       the game (genie.play.protocol)

How handlers reach the model, one rule: whatever changes a session (a step, undo, reset, a prompt, settings)
is a Player method run through `call` — the ModelRunner, the model's one thread, in arrival order (Starlette's
thread pool when create_app gets no runner). Slow work that changes nothing (decoding an upload, encoding a
clip) runs in the thread pool; the rest (info, the session record) runs on the event loop.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
import traceback
from contextlib import asynccontextmanager
from pathlib import Path

from genie.core.errors import GenieInputError
from genie.play import protocol
from genie.play.errors import PlayRequestError
from genie.play.player import Player
from genie.play.prompts import MAX_UPLOAD_BYTES, decode_upload, png_bytes, upload_type

STATIC_DIR = Path(__file__).resolve().parents[1] / "play_static"  # index.html, play.js, play.css; no build step
WEB_PACKAGES = {"starlette": "starlette", "uvicorn": "uvicorn", "websockets": "websockets"}  # module → pip name
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
                                               "frame-ancestors 'none'"}


def import_web() -> None:
    """starlette, uvicorn and websockets are optional (the `play` extra): one clear line when missing."""
    missing = [pip for mod, pip in WEB_PACKAGES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise GenieInputError(f"genie play needs the package{'s' if len(missing) > 1 else ''} {', '.join(missing)}: "
                              f"pip install {' '.join(missing)}  (or pip install -e \".[play]\")")


def create_app(player: Player, allowed_hosts: list[str] | None = None, runner=None, sweep_every: float = 30.0):
    """The Starlette app serving `player`.

    allowed_hosts: the Host headers served (None: any); loopback names when bound to loopback, so a
    page of another site cannot reach the game through DNS rebinding. runner: where the model runs
    (a genie.play.server.ModelRunner served by some thread; None: Starlette's thread pool)."""
    import_web()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route, WebSocketRoute
    from starlette.staticfiles import StaticFiles
    from starlette.websockets import WebSocket, WebSocketDisconnect

    call = runner or run_in_threadpool  # the one way to the model (see the module's docstring)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=SECURITY_HEADERS)

    async def page(request: Request):
        return FileResponse(STATIC_DIR / "index.html", headers=SECURITY_HEADERS)

    async def info(request: Request):
        return JSONResponse(player.info(), headers=SECURITY_HEADERS)

    async def prompt_png(request: Request):
        i = request.path_params["index"]
        if not 0 <= i < len(player.prompts):
            return error(404, f"no dataset prompt {i} (there are {len(player.prompts)})")
        return Response(png_bytes(player.prompts[i]), media_type="image/png", headers=SECURITY_HEADERS)

    async def new_session(request: Request):
        s = player.new_session()
        return JSONResponse({"session": s.id}, status_code=201, headers=SECURITY_HEADERS)

    async def upload(request: Request):
        s = player.session(request.path_params["sid"])
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
            return error(413, f"upload of {declared} bytes is over the limit of {MAX_UPLOAD_BYTES} bytes")
        ctype = upload_type(request.headers.get("content-type"))  # refused before reading the body
        body = bytearray()
        async for chunk in request.stream():  # read no further than the limit, whatever Content-Length said
            body += chunk
            if len(body) > MAX_UPLOAD_BYTES:
                return error(413, f"upload is over the limit of {MAX_UPLOAD_BYTES} bytes")
        frame = await run_in_threadpool(decode_upload, bytes(body), ctype, player.wm.image_size)
        await call(player.set_prompt, s, frame, "uploaded image")
        return JSONResponse({"ok": True, "width": int(frame.shape[1]), "height": int(frame.shape[0])},
                            headers=SECURITY_HEADERS)

    async def download(request: Request):
        s = player.session(request.path_params["sid"])
        name = request.path_params["name"]
        if name in ("clip.mp4", "clip.gif"):
            data = await run_in_threadpool(player.clip_bytes, s, name[-3:])
            media = "video/mp4" if name.endswith("mp4") else "image/gif"
        elif name == "actions.json":
            data, media = json.dumps(player.actions_record(s), indent=2).encode(), "application/json"
        elif name == "prompt.png":
            if s.prompt is None:
                raise PlayRequestError(409, "the session has no prompt yet")
            data, media = png_bytes(s.prompt), "image/png"
        else:
            return error(404, f"no download {name!r}; there are clip.mp4, clip.gif, actions.json and prompt.png")
        return Response(data, media_type=media,
                        headers={**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="genie-{name}"'})

    async def on_play_error(request, exc: PlayRequestError):
        return error(exc.status, exc.message)

    async def on_http_error(request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    async def on_crash(request, exc: Exception):  # a bug, not bad input: say so, keep serving
        traceback.print_exception(exc, file=sys.stderr)
        return error(500, f"internal error ({type(exc).__name__}); the server goes on")

    async def refuse(ws: WebSocket, status: int, message: str) -> None:
        await ws.send_text(json.dumps({"type": "error", "status": status, "error": message}))
        await ws.close(code=4000 + status)

    async def ws_endpoint(ws: WebSocket):
        await ws.accept()
        origin, host = ws.headers.get("origin"), ws.headers.get("host", "")
        if origin is not None and origin.split("://", 1)[-1] != host:  # another site's page: refuse
            return await refuse(ws, 403, f"origin {origin} may not use this server")
        try:
            s = player.session(ws.query_params.get("session"))
        except PlayRequestError as e:
            return await refuse(ws, e.status, e.message)
        tab = protocol.Tab(player, s, call, ws.send_text, ws.send_bytes)
        s.connections += 1
        try:
            await tab.send({"type": "ready", "session": s.id})
            if s.records:
                await tab.send_frame()
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                s.last_seen = time.monotonic()
                try:
                    await protocol.handle(tab, msg.get("text"))
                except WebSocketDisconnect:
                    raise
                except Exception as e:  # a bug: report it, keep the connection and the server
                    traceback.print_exception(e, file=sys.stderr)
                    await tab.send({"type": "error", "status": 500, "error": f"internal error ({type(e).__name__})"})
        except WebSocketDisconnect:
            pass
        finally:
            s.connections -= 1
            s.last_seen = time.monotonic()

    async def sweeper():
        while True:
            await asyncio.sleep(sweep_every)
            player.sweep()

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(sweeper())
        try:
            yield
        finally:
            task.cancel()

    routes = [
        Route("/", page),
        Route("/api/info", info),
        Route("/api/prompts/{index:int}.png", prompt_png),
        Route("/api/session", new_session, methods=["POST"]),
        Route("/api/session/{sid}/prompt", upload, methods=["POST"]),
        Route("/api/session/{sid}/{name}", download),
        WebSocketRoute("/ws", ws_endpoint),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or ["*"])]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={PlayRequestError: on_play_error, HTTPException: on_http_error,
                                        Exception: on_crash})
    app.state.player = player
    return app
