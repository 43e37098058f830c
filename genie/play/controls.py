"""Which keys and buttons of `genie play` drive which latent action.

With the LAM's action map (`genie ground` writes `action_map.json` beside the LAM) the keys mean real actions:
arrows/WASD the four directions (UP is CoinRun's jump), Space NOOP, Q E Z C the diagonals; each drives the
latent whose labelled transitions are most often that real action (`ActionMap.class_to_code`), and the buttons
are labelled with the real actions. Without a map, `genie probe`'s keymap.json names the latent actions and the arrows go to
the latents labelled with a direction; without either, the arrows drive latents 0–3. Digits 1–9 always drive
latent actions 0–8.
"""

from __future__ import annotations

import json
from pathlib import Path

from genie.core.errors import GenieInputError
from genie.grounding import ActionMap
from genie.world_model import WorldModel

DIRECTIONS = {"LEFT": ("ArrowLeft", "a"), "RIGHT": ("ArrowRight", "d"), "UP": ("ArrowUp", "w"),
              "DOWN": ("ArrowDown", "s")}
DEFAULT_DIRECTIONS = {"LEFT": 0, "RIGHT": 1, "UP": 2, "DOWN": 3}  # without a keymap: arrows → latent 0–3
REAL_ACTION_KEYS = {**DIRECTIONS, "NOOP": (" ",), "LEFT+UP": ("q",), "RIGHT+UP": ("e",), "LEFT+DOWN": ("z",),
                    "RIGHT+DOWN": ("c",)}  # with an action map: real action name → its keys


def digit_keys(action: int) -> list[str]:
    return [str(action + 1)] if action < 9 else []


def load_keymap(path: str | Path, wm: WorldModel) -> dict[int, str | None]:
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
        try:
            wm.check_actions([a])
        except GenieInputError as e:
            raise GenieInputError(f"{p}: {e}") from None
        if v is not None and not isinstance(v, str):
            raise GenieInputError(f"{p}: the label of latent action {a} must be a string or null, got {v!r}")
        keymap[a] = v
    return keymap


def controls(num_actions: int, keymap: dict[int, str | None] | None) -> list[dict]:
    """One button per latent action: its label and keys. Digits 1–9 → actions 0–8; arrows/WASD go to
    the latent action whose keymap label is that direction (exactly, else as part of e.g. LEFT+UP), or,
    without a keymap, to actions 0–3 (left, right, up, down)."""
    keys: dict[int, list[str]] = {a: digit_keys(a) for a in range(num_actions)}
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
    return [{"action": a, "label": (keymap or {}).get(a) or f"action {a}", "keys": keys[a], "real": None}
            for a in range(num_actions)]


def action_map_controls(num_actions: int, amap: ActionMap) -> list[dict]:
    """One button per real action the map ties to a latent, labelled with it (keys: REAL_ACTION_KEYS), then one
    per latent action (digits 1–9), so every latent stays within reach."""
    to_code = amap.class_to_code()
    order = {name: i for i, name in enumerate(REAL_ACTION_KEYS)}
    names = sorted((n for n, code in to_code.items() if code is not None), key=lambda n: order.get(n.upper(), len(order)))
    real = [{"action": to_code[n], "label": n, "keys": list(REAL_ACTION_KEYS.get(n.upper(), ())), "real": n}
            for n in names]
    latent = [{"action": a, "label": f"latent {a}", "keys": digit_keys(a), "real": None} for a in range(num_actions)]
    return real + latent
