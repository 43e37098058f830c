"""The sessions of `genie play` and the model they share: no web code (genie.play.routes serves them).

Each browser tab gets a `Session`: the frames shown so far, one `FrameRecord` per frame (the prompt first), and
its `GenieState`, which holds its random generator and the dynamics model's KV cache between key presses, so a
press costs the MaskGIT loop on one frame, one frame of cache update and the decode of a tokenizer window. Once
the context is full it drops `window_hop` frames at once (default 4), so the cache is rebuilt on one press in 4;
undo keeps the cache (benchmarks/play_latency.py measures the latency).
"""

from __future__ import annotations

import dataclasses
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genie.core.device import resolve_device
from genie.core.errors import GenieInputError
from genie.core.frames import frames_to_video, video_to_frames
from genie.grounding import ActionMap, load_action_map
from genie.play.controls import action_map_controls, controls, load_keymap
from genie.play.errors import PlayRequestError
from genie.play.prompts import MAX_UPLOAD_BYTES, dataset_prompts
from genie.sampling import MAX_STEPS, MAX_TEMPERATURE, SamplingSettings
from genie.video_io import write_clip
from genie.world_model import GenieState, WorldModel

# genie play's defaults: 8 MaskGIT steps (the speed target's), and a window hop of 4 capped by the context, so the
# cache is rebuilt on one key press in 4 instead of on every one (see README "Play" for the measured latency)
PLAY_SETTINGS = SamplingSettings(steps=8, window_hop=None)


@dataclass
class FrameRecord:
    """One frame of a session and how it was made: all that undo, reset and the downloads need."""

    frame: np.ndarray  # (H, W, 3) uint8
    action: int | None = None  # the latent action that led to it (None: the prompt)
    settings: SamplingSettings | None = None  # how it was sampled (None: the prompt)
    model_ms: float | None = None  # time in WorldModel.step
    generator_state: torch.Tensor | None = None  # the session's generator before it: undo rewinds to this


@dataclass
class Session:
    """One tab's game: its steps and temperature (the page may change them), the frames so far and the state."""

    id: str
    steps: int
    temperature: float
    last_seen: float = field(default_factory=time.monotonic)
    connections: int = 0
    prompt_source: str = ""
    records: list[FrameRecord] = field(default_factory=list)  # the prompt first, then one per action
    state: GenieState | None = None  # tokens, actions, generator and the dynamics cache (WorldModel.step)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def prompt(self) -> np.ndarray | None:
        return self.records[0].frame if self.records else None

    @property
    def frames(self) -> list[np.ndarray]:
        return [r.frame for r in self.records]

    @property
    def actions(self) -> list[int]:
        return [r.action for r in self.records[1:]]


class Player:
    """The world model and the sessions of every open tab.

    settings: how frames are sampled (default PLAY_SETTINGS), checked against the model's window; steps,
    temperature, context, window_hop: its fields, given separately. A session starts with its steps and
    temperature; the window is the same for all."""

    def __init__(self, wm: WorldModel, device: torch.device, settings: SamplingSettings = PLAY_SETTINGS, *,
                 steps: int | None = None, temperature: float | None = None, context: int | None = None,
                 window_hop: int | None = None, seed: int = 0, prompts: list[np.ndarray] | None = None,
                 keymap: dict[int, str | None] | None = None, action_map: ActionMap | None = None,
                 model_dir: str = "", idle_timeout: float = 600.0, max_sessions: int = 32, max_frames: int = 1000):
        self.wm, self.device, self.seed = wm, device, seed
        self.settings = settings.override(steps=steps, temperature=temperature, context=context,
                                          window_hop=window_hop).for_dynamics(wm.dynamics)
        self.prompts = prompts or []
        self.keymap, self.action_map, self.model_dir = keymap, action_map, model_dir
        self.controls = (action_map_controls(wm.num_actions, action_map) if action_map is not None
                         else controls(wm.num_actions, keymap))
        self.idle_timeout, self.max_sessions, self.max_frames = idle_timeout, max_sessions, max_frames
        self.sessions: dict[str, Session] = {}
        self._sessions_lock = threading.Lock()
        self._model_lock = threading.Lock()  # one generation at a time: the tabs share the model and the cores

    @property
    def window(self) -> int:
        """Past frames the dynamics model can see at most (its num_frames - 1)."""
        return self.settings.max_context

    @property
    def context(self) -> int:
        return self.settings.effective_context

    @property
    def window_hop(self) -> int:
        return self.settings.effective_hop

    def info(self) -> dict:
        return {"model": self.model_dir, "device": str(self.device), "num_actions": self.wm.num_actions,
                "image_size": self.wm.image_size, "controls": self.controls, "keymap": self.keymap is not None,
                "action_map": self.action_map is not None, "prompts": len(self.prompts),
                "steps": self.settings.steps, "temperature": self.settings.temperature, "context": self.context,
                "window_hop": self.window_hop, "window": self.window, "seed": self.seed, "max_steps": MAX_STEPS,
                "max_temperature": MAX_TEMPERATURE, "max_upload_bytes": MAX_UPLOAD_BYTES,
                "max_frames": self.max_frames, "idle_timeout_s": self.idle_timeout}

    # sessions
    def new_session(self) -> Session:
        self.sweep()
        with self._sessions_lock:
            if len(self.sessions) >= self.max_sessions:
                raise PlayRequestError(429, f"{len(self.sessions)} sessions are open, the limit is {self.max_sessions}; "
                                            f"close a tab or wait {self.idle_timeout:.0f} s for idle ones to be freed")
            s = Session(id=secrets.token_urlsafe(16), steps=self.settings.steps, temperature=self.settings.temperature)
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
            s.state = self.wm.reset(x, seed=self.seed, settings=self.settings)
            s.prompt_source, s.records = source, [FrameRecord(frame)]

    def prompt_from_data(self, s: Session, index) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.prompts):
            raise PlayRequestError(400, f"prompt index {index!r} is not one of the {len(self.prompts)} dataset prompts"
                                        + ("" if self.prompts else " (the server was started without --data)"))
        self.set_prompt(s, self.prompts[index], f"dataset prompt {index}")

    def prompt_from_last(self, s: Session) -> None:
        if not s.records:
            raise PlayRequestError(409, "there is no frame yet: pick a prompt first")
        self.set_prompt(s, s.records[-1].frame, f"frame {len(s.records) - 1} of the previous session")

    def step(self, s: Session, action: int) -> np.ndarray:
        """Generate the next frame for latent `action`: uint8 (H, W, 3)."""
        try:
            self.wm.check_actions([action])
        except GenieInputError as e:
            raise PlayRequestError(400, str(e)) from None
        with s.lock:
            if s.state is None:
                raise PlayRequestError(409, "pick a prompt first (a dataset frame, an upload, or the last frame)")
            if len(s.records) >= self.max_frames:
                raise PlayRequestError(409, f"the session holds {len(s.records)} frames, the limit; "
                                            f"download it, then reset or continue from its last frame")
            settings = self.settings.override(steps=s.steps, temperature=s.temperature)
            with self._model_lock:
                t0 = time.perf_counter()
                before = s.state.generator.get_state()
                frame = video_to_frames(self.wm.step(s.state, action, settings=settings))[0]
                ms = (time.perf_counter() - t0) * 1000
            s.records.append(FrameRecord(frame, action, settings, ms, before))
        return frame

    def undo(self, s: Session) -> None:
        """Drop the last frame; the generator goes back too, so the same key gives the same frame again."""
        with s.lock:
            if len(s.records) < 2:
                raise PlayRequestError(409, "nothing to undo: the session is at its prompt")
            s.state.generator.set_state(s.records.pop().generator_state)
            s.state.truncate(len(s.records))

    def reset(self, s: Session) -> None:
        """Back to the prompt, as if it had just been picked."""
        with s.lock:
            if s.state is None:
                raise PlayRequestError(409, "pick a prompt first")
            if len(s.records) > 1:
                s.state.generator.set_state(s.records[1].generator_state)
            del s.records[1:]
            s.state.truncate(1)

    def change_settings(self, s: Session, steps, temperature) -> None:
        """Set the session's steps and temperature (as checked by SamplingSettings; 400 when refused)."""
        try:
            checked = dataclasses.replace(self.settings, steps=steps, temperature=temperature)
        except GenieInputError as e:
            raise PlayRequestError(400, str(e)) from None
        s.steps, s.temperature = checked.steps, checked.temperature

    # downloads
    def actions_record(self, s: Session) -> dict:
        """The session's actions, replayable with `genie generate` (exactly when the settings allow)."""
        records = list(s.records)  # a snapshot: the model thread may append meanwhile
        made = records[1:]
        acts = ",".join(str(r.action) for r in made)
        steps, temp = (made[0].settings.steps, made[0].settings.temperature) if made else (s.steps, s.temperature)
        uniform = all((r.settings.steps, r.settings.temperature) == (steps, temp) for r in made)
        window = (f" --context {self.context}" if self.context != self.window else "") + \
            (f" --window-hop {self.window_hop}" if self.window_hop != 1 else "")
        cmd = (f"genie generate --model {self.model_dir or 'MODEL'} --prompt prompt.png --actions {acts} "
               f"--out clip.mp4 --steps {steps} --temperature {temp:g} --seed {self.seed}{window}") if made else None
        return {"actions": [r.action for r in made], "actions_arg": acts, "frames": len(records),
                "prompt": "prompt.png", "prompt_source": s.prompt_source, "seed": self.seed, "context": self.context,
                "window_hop": self.window_hop, "steps_per_frame": [r.settings.steps for r in made],
                "temperature_per_frame": [r.settings.temperature for r in made],
                "replay_command": cmd, "exact_replay": bool(made) and uniform,
                "note": "genie generate gives the same frames when every frame used the same steps and temperature"}

    def clip_bytes(self, s: Session, fmt: str) -> bytes:
        with s.lock:
            frames = np.stack(s.frames) if s.records else None
        if frames is None:
            raise PlayRequestError(409, "the session has no frames yet: pick a prompt first")
        with tempfile.TemporaryDirectory(prefix="genie-play-") as d:
            path = write_clip(Path(d) / f"clip.{fmt}", frames, fps=10, scale=4)
            return path.read_bytes()


def load_world_model(model: str | Path, device: torch.device) -> WorldModel:
    """The world model, or one GenieInputError for whatever a broken folder raises (before serving)."""
    try:
        wm = WorldModel.from_pretrained(model)
    except GenieInputError:
        raise
    except Exception as e:  # anything else a broken folder can raise: still one line, before serving
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        raise GenieInputError(f"{model}: cannot load the world model ({type(e).__name__}: {msg})") from None
    return wm.to(device)


def load_player(model: str | Path, *, settings: SamplingSettings | None = None, device: str = "auto",
                steps: int | None = None, temperature: float | None = None, context: int | None = None,
                window_hop: int | None = None, data: str | Path | None = None, split: str | None = None,
                keymap: str | Path | None = None, seed: int = 0, idle_timeout: float = 600.0,
                warmup: bool = True) -> Player:
    """Everything `genie play` needs before it serves; any problem is one GenieInputError.

    settings (default PLAY_SETTINGS) and steps, temperature, context, window_hop: as for `Player`. The keys come
    from `keymap` when given, else from the LAM's action map (genie ground), else from MODEL/keymap.json."""
    settings = SamplingSettings.from_args(settings or PLAY_SETTINGS, steps=steps, temperature=temperature,
                                          context=context, window_hop=window_hop)  # refused before the model loads
    if idle_timeout <= 0:
        raise GenieInputError(f"--idle-timeout {idle_timeout}: must be > 0 seconds")
    dev = resolve_device(device)
    wm = load_world_model(model, dev)
    keymap_path = Path(keymap) if keymap else Path(model) / "keymap.json"
    if keymap and not keymap_path.is_file():
        raise GenieInputError(f"--keymap {keymap}: no such file")
    amap = None if keymap else load_action_map(model, lam=wm.lam)
    km = load_keymap(keymap_path, wm) if amap is None and keymap_path.is_file() else None
    prompts = dataset_prompts(data, wm.image_size, split=split) if data else []
    player = Player(wm, dev, settings, seed=seed, prompts=prompts, keymap=km, action_map=amap, model_dir=str(model),
                    idle_timeout=idle_timeout)
    if warmup:  # the first generation pays one-off costs (allocator, kernels): not the player's first key
        s = Session(id="warmup", steps=player.settings.steps, temperature=player.settings.temperature)
        player.set_prompt(s, prompts[0] if prompts else np.zeros((*wm.frame_size, 3), np.uint8), "warm-up")
        player.step(s, 0)
    return player
