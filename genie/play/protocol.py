"""The WebSocket protocol of `genie play` (`/ws?session=SID`): what each message from the page does.

From the page, JSON text messages:

    {"type": "step", "action": A, "seq": N}   {"type": "undo"}   {"type": "reset"}   {"type": "sync"}
    {"type": "prompt", "source": "data", "index": I} | {"type": "prompt", "source": "last"}
    {"type": "settings", "steps": S, "temperature": T}

From the server: text `{"type": "ready"|"settings"|"error", ...}`, or one binary message per frame: a 4-byte
little-endian header length, the JSON header (`{"type": "frame", "index", "length", "actions", "seq",
"model_ms", ...}`), then the frame's raw RGB bytes (H·W·3). A bad message gets an `error` message with a 4xx
status and the connection stays open.

`HANDLERS` maps each message type to its handler. Handlers reach the Player only through `Tab.call` (see
genie.play.routes for the rule), and know nothing of the web framework: a `Tab` carries the two send functions.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from genie.play.errors import PlayRequestError
from genie.play.player import Player, Session

MAX_WS_MESSAGE = 4096  # characters; every valid message is far below


@dataclass
class Tab:
    """One open WebSocket: the session it drives, the player, how it reaches the model and how it answers."""

    player: Player
    session: Session
    call: Callable[..., Awaitable]  # call(fn, *args): runs a Player method where the model runs, awaits its result
    send_text: Callable[[str], Awaitable[None]]
    send_bytes: Callable[[bytes], Awaitable[None]]

    async def send(self, message: dict) -> None:
        await self.send_text(json.dumps(message))

    async def send_frame(self, seq: int | None = None) -> None:
        """The session's last frame, with what the page shows beside it."""
        s = self.session
        last = s.records[-1]
        header = {"type": "frame", "seq": seq, "index": len(s.records) - 1, "length": len(s.records),
                  "actions": s.actions, "width": int(last.frame.shape[1]), "height": int(last.frame.shape[0]),
                  "model_ms": None if last.model_ms is None else round(last.model_ms, 1), "steps": s.steps,
                  "temperature": s.temperature, "prompt_source": s.prompt_source}
        await self.send_bytes(frame_message(header, last.frame))


def frame_message(header: dict, frame: np.ndarray) -> bytes:
    """One binary WebSocket message: uint32 LE header length, JSON header, raw RGB bytes."""
    h = json.dumps(header).encode()
    return len(h).to_bytes(4, "little") + h + np.ascontiguousarray(frame, dtype=np.uint8).tobytes()


def parse(text: str | None) -> dict:
    """A message from the page → its JSON object; PlayRequestError 400/413 otherwise."""
    if text is None:
        raise PlayRequestError(400, "binary messages are not accepted; send JSON text")
    if len(text) > MAX_WS_MESSAGE:
        raise PlayRequestError(413, f"message of {len(text)} characters is over the limit of {MAX_WS_MESSAGE}")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise PlayRequestError(400, f"malformed message, not JSON ({e})") from None
    if not isinstance(data, dict):
        raise PlayRequestError(400, "malformed message: expected a JSON object with a \"type\"")
    return data


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


async def on_step(tab: Tab, msg: dict) -> None:
    seq, action = msg.get("seq"), msg.get("action")
    if seq is not None and not _is_int(seq):
        raise PlayRequestError(400, f"seq {seq!r} must be an integer")
    if not _is_int(action):
        raise PlayRequestError(400, f"unknown action {action!r}: a latent action is an integer id")
    await tab.call(tab.player.step, tab.session, action)
    await tab.send_frame(seq)


async def on_undo(tab: Tab, msg: dict) -> None:
    await tab.call(tab.player.undo, tab.session)
    await tab.send_frame()


async def on_reset(tab: Tab, msg: dict) -> None:
    await tab.call(tab.player.reset, tab.session)
    await tab.send_frame()


async def on_prompt(tab: Tab, msg: dict) -> None:
    source = msg.get("source")
    if source == "data":
        await tab.call(tab.player.prompt_from_data, tab.session, msg.get("index"))
    elif source == "last":
        await tab.call(tab.player.prompt_from_last, tab.session)
    else:
        raise PlayRequestError(400, f"prompt source {source!r}: expected \"data\" (with \"index\") or \"last\"; "
                                    f"upload images with POST /api/session/SID/prompt")
    await tab.send_frame()


async def on_settings(tab: Tab, msg: dict) -> None:
    s = tab.session
    await tab.call(tab.player.change_settings, s, msg.get("steps", s.steps), msg.get("temperature", s.temperature))
    await tab.send({"type": "settings", "steps": s.steps, "temperature": s.temperature})


async def on_sync(tab: Tab, msg: dict) -> None:
    if tab.session.records:
        await tab.send_frame()


HANDLERS: dict[str, Callable[[Tab, dict], Awaitable[None]]] = {
    "step": on_step, "undo": on_undo, "reset": on_reset, "prompt": on_prompt, "settings": on_settings, "sync": on_sync,
}


async def handle(tab: Tab, text: str | None) -> None:
    """Answer one message from the page; a bad one gets an `error` message (with its seq) and changes nothing."""
    data = None
    try:
        data = parse(text)
        kind = data.get("type")
        handler = HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            raise PlayRequestError(400, f"unknown message type {kind!r}; expected one of {', '.join(HANDLERS)}")
        await handler(tab, data)
    except PlayRequestError as e:
        seq = data.get("seq") if isinstance(data, dict) else None
        await tab.send({"type": "error", "status": e.status, "error": e.message,
                        "seq": seq if isinstance(seq, int) else None})
