"""`genie play`: steer the world model frame by frame from a local web page (architecture §1, §5).

A small Starlette app served by uvicorn, and one static page (`genie/play_static/`: index.html, play.js,
play.css; no front-end build step). Each browser tab gets its own session; a key press sends one JSON message
over the tab's WebSocket, the server runs one `WorldModel.step` and answers with the new frame at once.

    player.py    sessions (one FrameRecord per frame) and the model they share; load_player
    controls.py  which keys and buttons drive which latent action (action map, keymap, defaults)
    prompts.py   prompt frames: held-out dataset frames and uploaded images
    protocol.py  the WebSocket messages: a dispatch table of handlers, the binary frame message
    routes.py    the Starlette app: the page, the JSON API, the WebSocket; how handlers reach the model
    server.py    the command: bind, uvicorn in a thread, the model in the main thread (ModelRunner)
    errors.py    PlayRequestError: a 4xx answer, never a crash
"""

from genie.play.controls import action_map_controls, controls, load_keymap
from genie.play.errors import PlayRequestError
from genie.play.player import PLAY_SETTINGS, FrameRecord, Player, Session, load_player
from genie.play.prompts import MAX_UPLOAD_BYTES, dataset_prompts, decode_upload, png_bytes
from genie.play.protocol import frame_message
from genie.play.routes import create_app
from genie.play.server import LOOPBACK_NAMES, WS_PROTOCOL_LIMIT, ModelRunner, bind, serve, uvicorn_server

__all__ = ["LOOPBACK_NAMES", "MAX_UPLOAD_BYTES", "PLAY_SETTINGS", "WS_PROTOCOL_LIMIT", "FrameRecord", "ModelRunner",
           "PlayRequestError", "Player", "Session", "action_map_controls", "bind", "controls", "create_app",
           "dataset_prompts", "decode_upload", "frame_message", "load_keymap", "load_player", "png_bytes", "serve",
           "uvicorn_server"]
