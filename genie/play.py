"""`genie play`: steer the world model frame by frame from a local web page (DESIGN §1 "Play", §5).

A small Starlette app served by uvicorn, and one static page (`genie/play_static/`: index.html,
play.js, play.css; no front-end build step). Each browser tab gets its own session: a prompt frame,
the frames generated so far, their tokens and latent actions, and its own random generator. A key
press sends one JSON message over the tab's WebSocket; the server runs one `WorldModel.step` and
answers with the new frame at once.

HTTP (errors are JSON `{"error": ..., "status": ...}` with a 4xx status):

    GET  /                          the page            GET /api/info          model, keys, limits
    GET  /api/prompts/{i}.png       a --data prompt     POST /api/session      a new session id
    POST /api/session/{sid}/prompt  an uploaded PNG/JPEG as the raw request body (Content-Type image/png|jpeg)
    GET  /api/session/{sid}/clip.mp4 | clip.gif | actions.json | prompt.png   the session, to download

WebSocket `/ws?session=SID`, JSON text messages from the page:

    {"type": "step", "action": A, "seq": N}   {"type": "undo"}   {"type": "reset"}   {"type": "sync"}
    {"type": "prompt", "source": "data", "index": I} | {"type": "prompt", "source": "last"}
    {"type": "settings", "steps": S, "temperature": T}

and from the server: text `{"type": "ready"|"settings"|"error", ...}`, or one binary message per
frame: a 4-byte little-endian header length, the JSON header (`{"type": "frame", "index", "length",
"actions", "seq", "model_ms", ...}`), then the frame's raw RGB bytes (H·W·3). A bad message gets an
`error` message with a 4xx status and the connection stays open.

Speed: each session keeps its `GenieState`, which holds the dynamics model's KV cache between key
presses, so a press costs the MaskGIT loop on one frame, one frame of cache update and the decode of a
tokenizer window. Once the context is full (`--context`, default the model's num_frames − 1) it drops
`--window-hop` frames at once (default 4), so the cache is rebuilt on one press in 4; undo keeps the cache
(benchmarks/play_latency.py measures the latency).
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import ipaddress
import json
import math
import queue
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from data_pipelines.clips import ClipDataset, frames_to_video, video_to_frames
from data_pipelines.storage import SPLITS, read_card
from data_pipelines.video import resize_frames
from genie.core.device import resolve_device
from genie.core.errors import GenieInputError
from genie.video_io import write_clip
from genie.world_model import GenieState, WorldModel

STATIC_DIR = Path(__file__).with_name("play_static")

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_UPLOAD_PIXELS = 4096 * 4096  # decoded size; a small file can still claim a huge image
UPLOAD_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG"}  # Content-Type → the format Pillow must find
MAX_WS_MESSAGE = 4096  # characters; every valid message is far below
WS_PROTOCOL_LIMIT = 1024 * 1024  # bytes; uvicorn closes the connection (1009) past this, the server lives on
MAX_STEPS = 64
# The dynamics context drops this many frames at once when full (genie.sampling.Rollout): the cache is then
# rebuilt on one key press in 4 instead of on every one (328 -> see README "Play" for the measured latency).
DEFAULT_WINDOW_HOP = 4
MAX_TEMPERATURE = 10.0
DIRECTIONS = {"LEFT": ("ArrowLeft", "a"), "RIGHT": ("ArrowRight", "d"), "UP": ("ArrowUp", "w"),
              "DOWN": ("ArrowDown", "s")}
DEFAULT_DIRECTIONS = {"LEFT": 0, "RIGHT": 1, "UP": 2, "DOWN": 3}  # without a keymap: arrows → latent 0–3
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1"]
WEB_PACKAGES = {"starlette": "starlette", "uvicorn": "uvicorn", "websockets": "websockets"}  # module → pip name


class PlayRequestError(Exception):
    """A bad request from the page: answered with `status` (4xx) and `message`, never a crash."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# -- inputs: keymap, prompts, uploads --------------------------------------------------------------

def load_keymap(path: str | Path, num_actions: int) -> dict[int, str | None]:
    """`genie probe`'s keymap.json ({"latent id": "true action label" | null}) → {id: label}."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise GenieInputError(f"{p}: unreadable keymap ({e})") from None
    if not isinstance(raw, dict):
        raise GenieInputError(f"{p}: a keymap must be a JSON object {{latent id: action label}}")
    keymap = {}
    for k, v in raw.items():
        try:
            a = int(k)
        except ValueError:
            raise GenieInputError(f"{p}: key {k!r} is not a latent action id") from None
        if not 0 <= a < num_actions:
            raise GenieInputError(f"{p}: latent action {a} is outside the model's vocabulary 0..{num_actions - 1}")
        if v is not None and not isinstance(v, str):
            raise GenieInputError(f"{p}: the label of latent action {a} must be a string or null, got {v!r}")
        keymap[a] = v
    return keymap


def controls(num_actions: int, keymap: dict[int, str | None] | None) -> list[dict]:
    """One button per latent action: its label and keys. Digits 1–9 → actions 0–8; arrows/WASD go to
    the latent action whose keymap label is that direction (exactly, else as part of e.g. LEFT+UP), or,
    without a keymap, to actions 0–3 (left, right, up, down)."""
    keys: dict[int, list[str]] = {a: [str(a + 1)] if a < 9 else [] for a in range(num_actions)}
    for d, names in DIRECTIONS.items():
        if keymap is None:
            target = DEFAULT_DIRECTIONS[d] if DEFAULT_DIRECTIONS[d] < num_actions else None
        else:
            labels = {a: (v or "").upper() for a, v in keymap.items()}
            exact = [a for a, v in sorted(labels.items()) if v == d]
            part = [a for a, v in sorted(labels.items()) if d in v.split("+")]
            target = (exact or part or [None])[0]
        if target is not None:
            keys[target] += list(names)
    return [{"action": a, "label": (keymap or {}).get(a) or f"action {a}", "keys": keys[a]}
            for a in range(num_actions)]


def dataset_prompts(data: str | Path, image_size: int, count: int = 16, split: str | None = None) -> list[np.ndarray]:
    """Up to `count` prompt frames uint8 (H, W, 3) from a dataset folder: the first frame of episodes
    spread over the split (default: test, else val, else train), resized like `genie generate` does."""
    card = read_card(data)
    if np.dtype(card.get("dtype", "uint8")) != np.uint8 or card.get("channels", 3) != 3:
        raise GenieInputError(f"{data}: --data must be an RGB video dataset (this one holds "
                              f"{card.get('dtype')} × {card.get('channels')} channels, e.g. tokens)")
    if split is not None and split not in SPLITS:
        raise GenieInputError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    have = [s for s in ("test", "val", "train") if card.get("splits", {}).get(s)]
    if split is None and not have:
        raise GenieInputError(f"{data}: the dataset has no episodes")
    ds = ClipDataset(data, split or have[0], clip_len=1)
    episodes = np.unique(np.linspace(0, ds.num_episodes - 1, min(count, ds.num_episodes)).round().astype(int))
    frames = np.stack([ds.clip_frames(int(e), 0)[0] for e in episodes])  # a copy, not the memory map
    return list(resize_frames(frames, image_size))


def upload_type(content_type: str | None) -> str:
    """The upload's media type, or PlayRequestError 415 for anything but PNG/JPEG."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype not in UPLOAD_TYPES:
        raise PlayRequestError(415, f"upload type {ctype or '(none)'} is not accepted; send a PNG or JPEG image "
                                    f"(Content-Type image/png or image/jpeg)")
    return ctype


def decode_upload(body: bytes, content_type: str | None, image_size: int) -> np.ndarray:
    """An uploaded PNG/JPEG → uint8 (H, W, 3) letterboxed (fit pad) and resized to the model's size, as
    `genie generate` reads a prompt (genie.video_io.read_prompt). Raises PlayRequestError 413/415/400."""
    ctype = upload_type(content_type)
    if len(body) > MAX_UPLOAD_BYTES:
        raise PlayRequestError(413, f"upload of {len(body)} bytes is over the limit of {MAX_UPLOAD_BYTES} bytes")
    if not body:
        raise PlayRequestError(400, "empty upload: send the image file as the request body")
    try:
        with Image.open(io.BytesIO(body)) as im:
            if im.format != UPLOAD_TYPES[ctype]:
                raise PlayRequestError(415, f"the upload is {im.format or 'not an image'}, not the "
                                            f"{UPLOAD_TYPES[ctype]} its Content-Type {ctype} says")
            w, h = im.size
            if w * h > MAX_UPLOAD_PIXELS:
                raise PlayRequestError(413, f"image of {w}×{h} pixels is over the limit of {MAX_UPLOAD_PIXELS} pixels")
            rgb = np.array(im.convert("RGB"))
    except UnidentifiedImageError:
        raise PlayRequestError(400, f"the upload is not a readable {UPLOAD_TYPES[ctype]} image") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # truncated or corrupt data
        raise PlayRequestError(400, f"unreadable {UPLOAD_TYPES[ctype]} image ({str(e).splitlines()[0][:120]})") from None
    return resize_frames(rgb[None], image_size, "pad")[0]


def png_bytes(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


# -- sessions and the model ------------------------------------------------------------------------

@dataclass
class Session:
    """One tab's game: the prompt, the frames shown so far, and what is needed to go on or undo."""

    id: str
    steps: int
    temperature: float
    last_seen: float = field(default_factory=time.monotonic)
    connections: int = 0
    prompt: np.ndarray | None = None  # (H, W, 3) uint8
    prompt_source: str = ""
    frames: list[np.ndarray] = field(default_factory=list)  # prompt first, then one per action
    actions: list[int] = field(default_factory=list)
    settings_log: list[tuple[int, float]] = field(default_factory=list)  # (steps, temperature) per generated frame
    model_ms: list[float] = field(default_factory=list)
    state: GenieState | None = None  # tokens, actions, generator and the dynamics cache (WorldModel.step)
    generator_states: list[torch.Tensor] = field(default_factory=list)  # before each generated frame
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class Player:
    """The world model and the sessions of every open tab; no web code (create_app serves it)."""

    def __init__(self, wm: WorldModel, device: torch.device, *, steps: int = 8, temperature: float = 1.0,
                 context: int | None = None, window_hop: int | None = None, seed: int = 0,
                 prompts: list[np.ndarray] | None = None,
                 keymap: dict[int, str | None] | None = None, model_dir: str = "", idle_timeout: float = 600.0,
                 max_sessions: int = 32, max_frames: int = 1000):
        self.wm, self.device = wm, device
        self.window = wm.dynamics.config.context_frames
        self.context = self.window if context is None else context
        check_settings(steps, temperature)
        if not 1 <= self.context <= self.window:
            raise GenieInputError(f"--context {context}: must be 1..{self.window} (the dynamics model's "
                                  f"{self.window + 1}-frame window less the frame being generated)")
        self.window_hop = min(DEFAULT_WINDOW_HOP, self.context) if window_hop is None else window_hop
        if isinstance(self.window_hop, bool) or not isinstance(self.window_hop, int) \
                or not 1 <= self.window_hop <= self.context:
            raise GenieInputError(f"--window-hop {window_hop}: must be 1..{self.context} (the context)")
        self.steps, self.temperature, self.seed = steps, temperature, seed
        self.prompts = prompts or []
        self.keymap, self.model_dir = keymap, model_dir
        self.controls = controls(wm.num_actions, keymap)
        self.idle_timeout, self.max_sessions, self.max_frames = idle_timeout, max_sessions, max_frames
        self.sessions: dict[str, Session] = {}
        self._sessions_lock = threading.Lock()
        self._model_lock = threading.Lock()  # one generation at a time: the tabs share the model and the cores

    def info(self) -> dict:
        return {"model": self.model_dir, "device": str(self.device), "num_actions": self.wm.num_actions,
                "image_size": self.wm.image_size, "controls": self.controls, "keymap": self.keymap is not None,
                "prompts": len(self.prompts), "steps": self.steps, "temperature": self.temperature,
                "context": self.context, "window_hop": self.window_hop, "window": self.window, "seed": self.seed, "max_steps": MAX_STEPS,
                "max_temperature": MAX_TEMPERATURE, "max_upload_bytes": MAX_UPLOAD_BYTES,
                "max_frames": self.max_frames, "idle_timeout_s": self.idle_timeout}

    # sessions
    def new_session(self) -> Session:
        self.sweep()
        with self._sessions_lock:
            if len(self.sessions) >= self.max_sessions:
                raise PlayRequestError(429, f"{len(self.sessions)} sessions are open, the limit is {self.max_sessions}; "
                                            f"close a tab or wait {self.idle_timeout:.0f} s for idle ones to be freed")
            s = Session(id=secrets.token_urlsafe(16), steps=self.steps, temperature=self.temperature)
            self.sessions[s.id] = s
        return s

    def session(self, sid: str | None) -> Session:
        s = self.sessions.get(sid or "")
        if s is None:
            raise PlayRequestError(404, "unknown or expired session; reload the page for a new one")
        s.last_seen = time.monotonic()
        return s

    def sweep(self, now: float | None = None) -> list[str]:
        """Free the sessions with no open tab that have been idle longer than idle_timeout."""
        now = time.monotonic() if now is None else now
        with self._sessions_lock:
            idle = [sid for sid, s in self.sessions.items()
                    if s.connections == 0 and now - s.last_seen > self.idle_timeout]
            for sid in idle:
                del self.sessions[sid]
        return idle

    # the game
    def set_prompt(self, s: Session, frame: np.ndarray, source: str) -> None:
        with s.lock, self._model_lock:
            x = frames_to_video(frame[None]).to(self.device)  # (1, c, H, W)
            s.state = self.wm.reset(x, seed=self.seed, context=self.context, window_hop=self.window_hop)
            s.prompt, s.prompt_source, s.frames = frame, source, [frame]
            s.actions, s.settings_log, s.model_ms, s.generator_states = [], [], [], []

    def prompt_from_data(self, s: Session, index) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.prompts):
            raise PlayRequestError(400, f"prompt index {index!r} is not one of the {len(self.prompts)} dataset prompts"
                                        + ("" if self.prompts else " (the server was started without --data)"))
        self.set_prompt(s, self.prompts[index], f"dataset prompt {index}")

    def prompt_from_last(self, s: Session) -> None:
        if not s.frames:
            raise PlayRequestError(409, "there is no frame yet: pick a prompt first")
        self.set_prompt(s, s.frames[-1], f"frame {len(s.frames) - 1} of the previous session")

    def step(self, s: Session, action) -> np.ndarray:
        """Generate the next frame for `action`: uint8 (H, W, 3)."""
        if isinstance(action, bool) or not isinstance(action, int) or not 0 <= action < self.wm.num_actions:
            raise PlayRequestError(400, f"unknown action {action!r}: latent actions are 0..{self.wm.num_actions - 1}")
        with s.lock:
            if s.state is None:
                raise PlayRequestError(409, "pick a prompt first (a dataset frame, an upload, or the last frame)")
            if len(s.frames) >= self.max_frames:
                raise PlayRequestError(409, f"the session holds {len(s.frames)} frames, the limit; "
                                            f"download it, then reset or continue from its last frame")
            with self._model_lock:
                t0 = time.perf_counter()
                before = s.state.generator.get_state()
                frame = video_to_frames(self.wm.step(s.state, action, steps=s.steps, temperature=s.temperature))[0]
                ms = (time.perf_counter() - t0) * 1000
            s.frames.append(frame)
            s.actions.append(action)
            s.settings_log.append((s.steps, s.temperature))
            s.model_ms.append(ms)
            s.generator_states.append(before)
        return frame

    def undo(self, s: Session) -> None:
        """Drop the last frame; the generator goes back too, so the same key gives the same frame again."""
        with s.lock:
            if not s.actions:
                raise PlayRequestError(409, "nothing to undo: the session is at its prompt")
            s.frames.pop(), s.actions.pop(), s.settings_log.pop(), s.model_ms.pop()
            s.state.generator.set_state(s.generator_states.pop())
            s.state.truncate(len(s.frames))

    def reset(self, s: Session) -> None:
        """Back to the prompt, as if it had just been picked."""
        with s.lock:
            if s.state is None:
                raise PlayRequestError(409, "pick a prompt first")
            if s.generator_states:
                s.state.generator.set_state(s.generator_states[0])
            s.frames, s.actions, s.settings_log, s.model_ms, s.generator_states = s.frames[:1], [], [], [], []
            s.state.truncate(1)

    def settings(self, s: Session, steps, temperature) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise PlayRequestError(400, f"steps {steps!r} must be an integer 1..{MAX_STEPS}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise PlayRequestError(400, f"temperature {temperature!r} must be a number 0..{MAX_TEMPERATURE}")
        try:
            check_settings(steps, float(temperature))
        except GenieInputError as e:
            raise PlayRequestError(400, str(e)) from None
        s.steps, s.temperature = steps, float(temperature)

    # downloads
    def actions_record(self, s: Session) -> dict:
        """The session's actions, replayable with `genie generate` (exactly when the settings allow)."""
        acts = ",".join(map(str, s.actions))
        steps, temp = s.settings_log[0] if s.settings_log else (s.steps, s.temperature)
        uniform = all(x == (steps, temp) for x in s.settings_log)
        window = (f" --context {self.context}" if self.context != self.window else "") + \
            (f" --window-hop {self.window_hop}" if self.window_hop != 1 else "")
        cmd = (f"genie generate --model {self.model_dir or 'MODEL'} --prompt prompt.png --actions {acts} "
               f"--out clip.mp4 --steps {steps} --temperature {temp:g} --seed {self.seed}{window}") if s.actions else None
        return {"actions": s.actions, "actions_arg": acts, "frames": len(s.frames), "prompt": "prompt.png",
                "prompt_source": s.prompt_source, "seed": self.seed, "context": self.context,
                "window_hop": self.window_hop,
                "steps_per_frame": [a for a, _ in s.settings_log], "temperature_per_frame": [b for _, b in s.settings_log],
                "replay_command": cmd, "exact_replay": bool(s.actions) and uniform,
                "note": "genie generate gives the same frames when every frame used the same steps and temperature"}

    def clip_bytes(self, s: Session, fmt: str) -> bytes:
        with s.lock:
            frames = np.stack(s.frames) if s.frames else None
        if frames is None:
            raise PlayRequestError(409, "the session has no frames yet: pick a prompt first")
        with tempfile.TemporaryDirectory(prefix="genie-play-") as d:
            path = write_clip(Path(d) / f"clip.{fmt}", frames, fps=10, scale=4)
            return path.read_bytes()


def check_settings(steps: int, temperature: float) -> None:
    if not 1 <= steps <= MAX_STEPS:
        raise GenieInputError(f"steps {steps}: must be 1..{MAX_STEPS}")
    if not (math.isfinite(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
        raise GenieInputError(f"temperature {temperature}: must be 0..{MAX_TEMPERATURE} (0 = greedy)")


def frame_message(header: dict, frame: np.ndarray) -> bytes:
    """One binary WebSocket message: uint32 LE header length, JSON header, raw RGB bytes."""
    h = json.dumps(header).encode()
    return len(h).to_bytes(4, "little") + h + np.ascontiguousarray(frame, dtype=np.uint8).tobytes()


# -- the web app -----------------------------------------------------------------------------------

def _import_web():
    """starlette, uvicorn and websockets are optional (the `play` extra): one clear line when missing."""
    missing = [pip for mod, pip in WEB_PACKAGES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise GenieInputError(f"genie play needs the package{'s' if len(missing) > 1 else ''} {', '.join(missing)}: "
                              f"pip install {' '.join(missing)}  (or pip install -e \".[play]\")")


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


def create_app(player: Player, allowed_hosts: list[str] | None = None, runner: ModelRunner | None = None,
               sweep_every: float = 30.0):
    """The Starlette app serving `player`: the page, the JSON API and the per-tab WebSocket.

    allowed_hosts: the Host headers served (None: any); loopback names when bound to loopback, so a
    page of another site cannot reach the game through DNS rebinding. runner: where the model runs
    (a ModelRunner served by some thread; None: Starlette's thread pool)."""
    _import_web()
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

    run_model = runner or run_in_threadpool
    security = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
                                           "frame-ancestors 'none'"}

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=security)

    async def page(request: Request):
        return FileResponse(STATIC_DIR / "index.html", headers=security)

    async def info(request: Request):
        return JSONResponse(player.info(), headers=security)

    async def prompt_png(request: Request):
        i = request.path_params["index"]
        if not 0 <= i < len(player.prompts):
            return error(404, f"no dataset prompt {i} (there are {len(player.prompts)})")
        return Response(png_bytes(player.prompts[i]), media_type="image/png", headers=security)

    async def new_session(request: Request):
        s = player.new_session()
        return JSONResponse({"session": s.id}, status_code=201, headers=security)

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
        await run_model(player.set_prompt, s, frame, "uploaded image")
        return JSONResponse({"ok": True, "width": int(frame.shape[1]), "height": int(frame.shape[0])}, headers=security)

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
                        headers={**security, "Content-Disposition": f'attachment; filename="genie-{name}"'})

    async def on_play_error(request, exc: PlayRequestError):
        return error(exc.status, exc.message)

    async def on_http_error(request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    async def on_crash(request, exc: Exception):  # a bug, not bad input: say so, keep serving
        traceback.print_exception(exc, file=sys.stderr)
        return error(500, f"internal error ({type(exc).__name__}); the server goes on")

    async def ws_endpoint(ws: WebSocket):
        await ws.accept()
        origin, host = ws.headers.get("origin"), ws.headers.get("host", "")
        if origin is not None and origin.split("://", 1)[-1] != host:  # another site's page: refuse
            await ws.send_text(json.dumps({"type": "error", "status": 403,
                                           "error": f"origin {origin} may not use this server"}))
            await ws.close(code=4403)
            return
        try:
            s = player.session(ws.query_params.get("session"))
        except PlayRequestError as e:
            await ws.send_text(json.dumps({"type": "error", "status": e.status, "error": e.message}))
            await ws.close(code=4000 + e.status)
            return
        s.connections += 1

        async def send_frame(seq=None):
            header = {"type": "frame", "seq": seq, "index": len(s.frames) - 1, "length": len(s.frames),
                      "actions": s.actions, "width": int(s.frames[-1].shape[1]), "height": int(s.frames[-1].shape[0]),
                      "model_ms": round(s.model_ms[-1], 1) if s.actions else None, "steps": s.steps,
                      "temperature": s.temperature, "prompt_source": s.prompt_source}
            await ws.send_bytes(frame_message(header, s.frames[-1]))

        async def handle(msg: dict):
            kind = msg.get("type")
            if kind == "step":
                seq = msg.get("seq")
                if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
                    raise PlayRequestError(400, f"seq {seq!r} must be an integer")
                await run_model(player.step, s, msg.get("action"))
                await send_frame(seq)
            elif kind == "undo":
                await run_in_threadpool(player.undo, s)
                await send_frame()
            elif kind == "reset":
                await run_in_threadpool(player.reset, s)
                await send_frame()
            elif kind == "prompt":
                source = msg.get("source")
                if source == "data":
                    await run_model(player.prompt_from_data, s, msg.get("index"))
                elif source == "last":
                    await run_model(player.prompt_from_last, s)
                else:
                    raise PlayRequestError(400, f"prompt source {source!r}: expected \"data\" (with \"index\") or "
                                                f"\"last\"; upload images with POST /api/session/SID/prompt")
                await send_frame()
            elif kind == "settings":
                player.settings(s, msg.get("steps", s.steps), msg.get("temperature", s.temperature))
                await ws.send_text(json.dumps({"type": "settings", "steps": s.steps, "temperature": s.temperature}))
            elif kind == "sync":
                if s.frames:
                    await send_frame()
            else:
                raise PlayRequestError(400, f"unknown message type {kind!r}; expected step, undo, reset, prompt, "
                                            f"settings or sync")

        try:
            await ws.send_text(json.dumps({"type": "ready", "session": s.id}))
            if s.frames:
                await send_frame()
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                s.last_seen = time.monotonic()
                text, data = msg.get("text"), None
                try:
                    if text is None:
                        raise PlayRequestError(400, "binary messages are not accepted; send JSON text")
                    if len(text) > MAX_WS_MESSAGE:
                        raise PlayRequestError(413, f"message of {len(text)} characters is over the limit of "
                                                    f"{MAX_WS_MESSAGE}")
                    try:
                        data = json.loads(text)
                    except ValueError as e:
                        raise PlayRequestError(400, f"malformed message, not JSON ({e})") from None
                    if not isinstance(data, dict):
                        raise PlayRequestError(400, "malformed message: expected a JSON object with a \"type\"")
                    await handle(data)
                except PlayRequestError as e:
                    seq = data.get("seq") if isinstance(data, dict) else None
                    await ws.send_text(json.dumps({"type": "error", "status": e.status, "error": e.message,
                                                   "seq": seq if isinstance(seq, int) else None}))
                except WebSocketDisconnect:
                    raise
                except Exception as e:  # a bug: report it, keep the connection and the server
                    traceback.print_exception(e, file=sys.stderr)
                    await ws.send_text(json.dumps({"type": "error", "status": 500,
                                                   "error": f"internal error ({type(e).__name__})"}))
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


def load_player(model: str | Path, *, device: str = "auto", steps: int = 8, temperature: float = 1.0,
                context: int | None = None, window_hop: int | None = None, data: str | Path | None = None,
                split: str | None = None,
                keymap: str | Path | None = None, seed: int = 0, idle_timeout: float = 600.0,
                warmup: bool = True) -> Player:
    """Everything `genie play` needs before it serves; any problem is one GenieInputError."""
    check_settings(steps, temperature)
    if idle_timeout <= 0:
        raise GenieInputError(f"--idle-timeout {idle_timeout}: must be > 0 seconds")
    dev = resolve_device(device)
    try:
        wm = WorldModel.from_pretrained(model)
    except GenieInputError:
        raise
    except Exception as e:  # anything else a broken folder can raise: still one line, before serving
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        raise GenieInputError(f"{model}: cannot load the world model ({type(e).__name__}: {msg})") from None
    wm = wm.to(dev)
    keymap_path = Path(keymap) if keymap else Path(model) / "keymap.json"
    if keymap and not keymap_path.is_file():
        raise GenieInputError(f"--keymap {keymap}: no such file")
    km = load_keymap(keymap_path, wm.num_actions) if keymap_path.is_file() else None
    prompts = dataset_prompts(data, wm.image_size, split=split) if data else []
    player = Player(wm, dev, steps=steps, temperature=temperature, context=context, window_hop=window_hop,
                    seed=seed, prompts=prompts,
                    keymap=km, model_dir=str(model), idle_timeout=idle_timeout)
    if warmup:  # the first generation pays one-off costs (allocator, kernels): not the player's first key
        s = Session(id="warmup", steps=steps, temperature=temperature)
        player.set_prompt(s, prompts[0] if prompts else np.zeros((*wm.frame_size, 3), np.uint8), "warm-up")
        player.step(s, 0)
    return player


def uvicorn_server(app):
    """The uvicorn server for `app` (run it with `.run(sockets=[bind(host, port)])`)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", ws="websockets-sansio", ws_max_size=WS_PROTOCOL_LIMIT,
                            lifespan="on", timeout_graceful_shutdown=2)
    return uvicorn.Server(config)


def serve(model: str | Path, *, host: str = "127.0.0.1", port: int = 8000, device: str = "auto", steps: int = 8,
          temperature: float = 1.0, context: int | None = None, window_hop: int | None = None,
          data: str | Path | None = None, split: str | None = None, keymap: str | Path | None = None, seed: int = 0,
          idle_timeout: float = 600.0) -> None:
    """`genie play`: load everything (failing before serving), bind, then serve until Ctrl+C."""
    _import_web()
    player = load_player(model, device=device, steps=steps, temperature=temperature, context=context,
                         window_hop=window_hop, data=data,
                         split=split, keymap=keymap, seed=seed, idle_timeout=idle_timeout)
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
    print(f"genie play: serving http://{shown}:{bound[1]}/  "
          f"({model} on {player.device}, {steps} MaskGIT steps, {ctx}, "
          f"{len(player.prompts)} dataset prompts; Ctrl+C to stop)", flush=True)
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
