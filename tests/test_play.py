"""`genie play` in a real browser: Playwright for Python driving Debian's chromium against the server on a
free local port, with the debug-preset world model. Bad input: HTTP uploads, WebSocket messages, sessions,
a model that does not load (exit 2, one line)."""

from __future__ import annotations

import http.client
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import ROOT, coded_episode, run_genie, stderr_line
from tests.test_world_model import save_tiny_map, world  # noqa: F401  (the debug-preset world model, module-scoped)

MISSING = [m for m in ("starlette", "uvicorn", "websockets") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"genie play's packages are not installed ({', '.join(MISSING)}): "
                                                      f"pip install -e \".[dev]\"")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STEPS = 4


# -- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def play_data(tmp_path_factory):
    """Three 64×64 held-out episodes: the --data prompt grid."""
    from data_pipelines.storage import DatasetWriter

    out = tmp_path_factory.mktemp("playdata") / "heldout"
    with DatasetWriter(out, chunk_len=8, card={"source": "test", "num_actions": 15}) as w:
        for e in range(3):
            w.add_episode(coded_episode(e, 6, h=64, w=64), "test")
        w.close()
    return out


@contextmanager
def serving(player):
    """`player` served as `genie play` serves it (uvicorn in one thread, the model's ModelRunner in another), on a
    free port of 127.0.0.1."""
    from genie.play import LOOPBACK_NAMES, ModelRunner, bind, create_app, uvicorn_server

    sock = bind("127.0.0.1", 0)
    runner, stop = ModelRunner(), threading.Event()
    srv = uvicorn_server(create_app(player, allowed_hosts=LOOPBACK_NAMES, runner=runner))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    model_thread = threading.Thread(target=runner.run_until, args=(stop.is_set,), daemon=True)
    thread.start()
    model_thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started, "the play server did not start"
    port = sock.getsockname()[1]
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", port=port, player=player)
    finally:
        srv.should_exit = True
        stop.set()
        thread.join(10)
        model_thread.join(10)


@pytest.fixture(scope="module")
def server(world, play_data):  # noqa: F811
    from genie.play import load_player

    with serving(load_player(world / "world", device="cpu", steps=STEPS, data=play_data, warmup=False)) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("Playwright for Python is not installed: pip install -e \".[dev]\"")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (Playwright's own browser download "
                    f"is not used)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def context(browser):
    # bypass_csp: the page's Content-Security-Policy forbids eval, which Playwright's wait_for_function uses
    ctx = browser.new_context(bypass_csp=True, accept_downloads=True)
    yield ctx
    ctx.close()


def open_page(context, server):
    page = context.new_page()
    page.goto(server.url)
    page.wait_for_function("window.geniePlay && window.geniePlay.ready")
    return page


def canvas(page) -> np.ndarray:
    """The canvas pixels as uint8 (H, W, 3)."""
    data = page.evaluate("""() => { const c = document.getElementById('screen');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }""")
    size = int(round((len(data) / 4) ** 0.5))
    return np.asarray(data, np.uint8).reshape(size, size, 4)[..., :3]


def wait_length(page, n: int) -> None:
    page.wait_for_function(f"window.geniePlay.length === {n}")


def press(page, key: str) -> None:
    """A key press that generates a frame: wait until that frame is on screen."""
    n = page.evaluate("window.geniePlay.steps")
    page.keyboard.press(key)
    page.wait_for_function(f"window.geniePlay.steps > {n}")


def pick_prompt(page, i: int) -> None:
    page.click(f"#data-prompts img >> nth={i}")
    page.wait_for_function(f"window.geniePlay.header && window.geniePlay.header.prompt_source === 'dataset prompt {i}'")


def session_of(page, server):
    return server.player.sessions[page.evaluate("window.geniePlay.sid")]


def post(server, path: str, body: bytes, ctype: str | None, chunked: bool = False) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Content-Type": ctype} if ctype else {}
    if chunked:
        conn.request("POST", path, body=(body[i:i + 65536] for i in range(0, len(body), 65536)), headers=headers,
                     encode_chunked=True)
    else:
        conn.request("POST", path, body=body, headers=headers)
    r = conn.getresponse()
    out = r.status, json.loads(r.read() or b"{}")
    conn.close()
    return out


def png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


# -- in the browser ----------------------------------------------------------------------------------

def test_page_loads_prompt_keys_and_buttons_drive_frames(context, server):
    page = open_page(context, server)
    assert page.title() == "genie play"
    assert page.locator("button.action").count() == 8
    assert page.locator("#data-prompts img").count() == 3
    page.keyboard.press("ArrowRight")  # no prompt yet: refused in the page, nothing sent
    assert "pick a prompt first" in page.inner_text("#status")
    pick_prompt(page, 1)
    assert np.array_equal(canvas(page), server.player.prompts[1])
    press(page, "ArrowRight")  # no keymap: → is latent action 1
    press(page, "3")  # digits 1–8 are latent actions 0–7
    n = page.evaluate("window.geniePlay.steps")
    page.click("button.action[data-action='5']")
    page.wait_for_function(f"window.geniePlay.steps > {n}")
    wait_length(page, 4)
    s = session_of(page, server)
    assert s.actions == [1, 2, 5] and page.inner_text("#actions") == "1,2,5"
    assert np.array_equal(canvas(page), s.frames[-1])  # what the server generated is what is shown
    lat = page.evaluate("window.geniePlay.latencies")
    assert len(lat) == 3 and all(0 < x < 30_000 for x in lat)
    assert float(page.inner_text("#latency")) > 0 and float(page.inner_text("#fps")) > 0
    assert page.evaluate("window.geniePlay.errors") == ["pick a prompt first"]  # only the press before the prompt


def test_frames_differ_by_action_undo_and_reset(context, server):
    page = open_page(context, server)
    pick_prompt(page, 0)
    prompt = canvas(page)
    press(page, "1")
    a = canvas(page)
    page.click("#undo")
    wait_length(page, 1)
    assert np.array_equal(canvas(page), prompt)
    press(page, "2")  # same generator state as for "1": only the action differs
    b = canvas(page)
    assert not np.array_equal(a, b)
    page.keyboard.press("u")
    wait_length(page, 1)
    press(page, "1")  # undo rewinds the generator too: the same key gives the same frame
    assert np.array_equal(canvas(page), a)
    for k in ("d", "w", "s"):
        press(page, k)
    wait_length(page, 5)
    page.click("#reset")
    wait_length(page, 1)
    assert np.array_equal(canvas(page), prompt) and session_of(page, server).actions == []
    press(page, "1")  # after a reset the session replays from the start
    assert np.array_equal(canvas(page), a)


def test_download_clip_and_actions_replay_with_generate(context, server, world):  # noqa: F811
    import av
    from PIL import Image

    page = open_page(context, server)
    pick_prompt(page, 2)
    for k in ("1", "2", "3", "3", "1", "2"):  # past the debug model's 3-frame context: the window moves
        press(page, k)
    shown = canvas(page)

    def download(selector):
        with page.expect_download() as d:
            page.click(selector)
        return Path(d.value.path()), d.value.suggested_filename

    mp4, name = download("#dl-mp4")
    assert name == "genie-clip.mp4"
    with av.open(str(mp4)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 7 and frames[0].shape == (256, 256, 3)
    gif, _ = download("#dl-gif")
    with Image.open(gif) as im:
        assert im.n_frames == 7
    rec = json.loads(download("#dl-actions")[0].read_text())
    assert rec["actions"] == [0, 1, 2, 2, 0, 1] and rec["exact_replay"] is True
    hop = server.player.window_hop
    assert hop == 3 == rec["window_hop"]  # the default 4, capped by the debug model's 3-frame context
    assert rec["replay_command"].endswith(f"--actions 0,1,2,2,0,1 --out clip.mp4 --steps {STEPS} --temperature 1 "
                                          f"--seed 0 --window-hop {hop}")
    with Image.open(download("#dl-prompt")[0]) as im:
        prompt = np.array(im.convert("RGB"))
    assert np.array_equal(prompt, server.player.prompts[2])
    # what `genie generate` computes from the downloaded prompt and actions is the frame on screen
    from genie.core.frames import frames_to_video, video_to_frames
    from genie.world_model import WorldModel

    wm = WorldModel.from_pretrained(world / "world")
    video = wm.generate(frames_to_video(prompt[None])[None], rec["actions"], steps=STEPS, temperature=1.0, seed=0,
                        window_hop=hop)
    assert np.abs(video_to_frames(video[0, -1]).astype(int) - shown.astype(int)).max() <= 1


def test_a_held_key_streams_frames_until_released(context, server):
    page = open_page(context, server)
    pick_prompt(page, 0)
    page.keyboard.down("d")
    page.keyboard.down("d")  # the browser's auto-repeat: the key is held
    page.wait_for_function("window.geniePlay.steps >= 5")
    page.keyboard.up("d")
    page.wait_for_function("window.geniePlay.inflight === null")
    n = page.evaluate("window.geniePlay.length")
    page.wait_for_timeout(300)
    assert page.evaluate("window.geniePlay.length") == n  # released: no more frames
    assert set(session_of(page, server).actions) == {1} and float(page.inner_text("#fps")) > 0


def test_two_tabs_keep_their_own_sessions(context, server):
    one, two = open_page(context, server), open_page(context, server)
    assert one.evaluate("window.geniePlay.sid") != two.evaluate("window.geniePlay.sid")
    pick_prompt(one, 0)
    press(one, "1")
    press(one, "1")
    seen = canvas(one)
    pick_prompt(two, 2)
    press(two, "4")
    wait_length(two, 2)
    assert one.evaluate("window.geniePlay.length") == 3 and np.array_equal(canvas(one), seen)
    assert session_of(one, server).actions == [0, 0] and session_of(two, server).actions == [3]
    two.click("#undo")
    wait_length(two, 1)
    assert session_of(one, server).actions == [0, 0]


def test_upload_prompt_is_resized_like_generate_and_bad_files_are_refused(context, server, tmp_path):
    from data_pipelines.video import resize_frames

    page = open_page(context, server)
    img = np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    (tmp_path / "p.png").write_bytes(png(img))
    page.set_input_files("#upload", str(tmp_path / "p.png"))
    page.wait_for_function("window.geniePlay.header && window.geniePlay.header.prompt_source === 'uploaded image'")
    assert np.array_equal(canvas(page), resize_frames(img[None], 64, "pad")[0])  # as read_prompt fits a prompt
    press(page, "a")
    (tmp_path / "notes.txt").write_text("not an image")
    page.set_input_files("#upload", str(tmp_path / "notes.txt"))
    page.wait_for_function("document.getElementById('status').textContent.includes('upload refused')")
    assert "415" in page.evaluate("window.geniePlay.errors.join(' ')") or "not accepted" in page.inner_text("#status")
    assert page.evaluate("window.geniePlay.length") == 2  # the session is untouched


def test_malformed_websocket_messages_get_4xx_and_the_connection_lives(context, server):
    page = open_page(context, server)
    replies = page.evaluate("""async () => {
        const { session } = await (await fetch('/api/session', { method: 'POST' })).json();
        const ws = new WebSocket(`ws://${location.host}/ws?session=${session}`);
        ws.binaryType = 'arraybuffer';
        const inbox = [];
        let wake = null;
        ws.onmessage = (e) => { inbox.push(e.data); if (wake) wake(); };
        const next = async () => { while (!inbox.length) await new Promise((r) => (wake = r));
            const m = inbox.shift(); return typeof m === 'string' ? JSON.parse(m) : { type: 'frame', bytes: m.byteLength }; };
        await new Promise((r) => (ws.onopen = r));
        await next();  // ready
        const bad = ['not json', '[1, 2]', '{"type": "fly"}', '{"type": "step", "action": 0}',
                     '{"type": "prompt", "source": "data", "index": 99}', '{"type": "prompt", "source": "web"}',
                     '{"type": "settings", "steps": 0}', '{"type": "settings", "temperature": "hot"}',
                     'x'.repeat(5000), new Uint8Array([1, 2, 3]),
                     '{"type": "prompt", "source": "data", "index": 0}',
                     '{"type": "step", "action": 99, "seq": 7}', '{"type": "step", "action": "1"}',
                     '{"type": "step", "action": true}', '{"type": "undo"}',
                     '{"type": "step", "action": 3, "seq": 8}'];
        const out = [];
        for (const m of bad) { ws.send(m); out.push(await next()); }
        ws.close();
        const gone = new WebSocket(`ws://${location.host}/ws?session=nope`);
        const msg = await new Promise((r) => (gone.onmessage = (e) => r(JSON.parse(e.data))));
        const code = await new Promise((r) => (gone.onclose = (e) => r(e.code)));
        return { out, msg, code };
    }""")
    out = replies["out"]
    statuses = [m.get("status") for m in out]
    assert statuses == [400, 400, 400, 409, 400, 400, 400, 400, 413, 400, None, 400, 400, 400, 409, None]
    assert out[10]["type"] == "frame" and out[15]["type"] == "frame" and out[15]["bytes"] > 64 * 64 * 3
    assert "action id 99 is outside the latent action vocabulary 0..7" in out[11]["error"] and out[11]["seq"] == 7
    assert "not JSON" in out[0]["error"] and "unknown message type" in out[2]["error"]
    assert replies["msg"]["status"] == 404 and replies["code"] == 4404
    assert page.evaluate("fetch('/api/info').then((r) => r.status)") == 200


# -- HTTP, sessions, the command ----------------------------------------------------------------------

def test_bad_uploads_get_4xx_json(server):
    from genie.play import MAX_UPLOAD_BYTES

    status, body = post(server, "/api/session", b"", None)
    sid = body["session"]
    path = f"/api/session/{sid}/prompt"
    good = png(np.zeros((64, 64, 3), np.uint8))
    assert post(server, path, good, "text/plain")[0] == 415
    assert post(server, path, good, None)[0] == 415
    assert post(server, path, good, "image/jpeg")[0] == 415  # a PNG sent as JPEG
    status, body = post(server, path, good[:40], "image/png")
    assert status == 400 and "PNG" in body["error"]
    assert post(server, path, b"", "image/png")[0] == 400
    status, body = post(server, path, b"\0" * (MAX_UPLOAD_BYTES + 1), "image/png")
    assert status == 413 and "limit" in body["error"]
    assert post(server, path, b"\0" * (MAX_UPLOAD_BYTES + 1), "image/png", chunked=True)[0] == 413  # no length given
    assert post(server, path, png(np.zeros((4100, 4100, 3), np.uint8)), "image/png")[0] == 413  # too many pixels
    assert post(server, "/api/session/nope/prompt", good, "image/png")[0] == 404
    assert post(server, path, good, "image/png") == (200, {"ok": True, "width": 64, "height": 64})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for url in (f"/api/session/{sid}/clip.avi", "/api/prompts/99.png", "/nothing"):
        conn.request("GET", url)
        r = conn.getresponse()
        assert r.status == 404 and "error" in json.loads(r.read())
    conn.request("GET", "/api/info", headers={"Host": "attacker.example"})  # DNS rebinding
    r = conn.getresponse()
    assert r.status == 400 and r.read()


def test_foreign_origin_oversized_frames_and_idle_sessions(server):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from genie.play import WS_PROTOCOL_LIMIT

    sid = post(server, "/api/session", b"", None)[1]["session"]
    ws_url = f"ws://127.0.0.1:{server.port}/ws?session={sid}"
    with connect(ws_url, origin="http://attacker.example") as ws:
        assert json.loads(ws.recv(timeout=10))["status"] == 403
    with connect(ws_url, max_size=None) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        ws.send("x" * (WS_PROTOCOL_LIMIT + 1))  # past the protocol limit: this connection is closed...
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    with connect(ws_url) as ws:  # ...the server and the session are not
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        assert sid not in server.player.sweep(now=time.monotonic() + 10**6)  # an open tab is never idle
    deadline = time.monotonic() + 10
    while server.player.sessions[sid].connections and time.monotonic() < deadline:  # the server sees the close
        time.sleep(0.02)
    assert sid in server.player.sweep(now=time.monotonic() + 10**6)
    assert post(server, f"/api/session/{sid}/prompt", png(np.zeros((64, 64, 3), np.uint8)), "image/png")[0] == 404


def test_keymap_names_the_buttons_and_arrows(world, tmp_path):  # noqa: F811
    from genie.core.errors import GenieInputError
    from genie.play import controls, load_player

    km = {0: "NOOP", 1: "LEFT+UP", 2: "RIGHT", 3: None, 4: "LEFT", 5: "DOWN", 6: "UP", 7: "RIGHT+DOWN"}
    keys = {c["action"]: c["keys"] for c in controls(8, km)}
    assert keys[4] == ["5", "ArrowLeft", "a"] and keys[2] == ["3", "ArrowRight", "d"]
    assert keys[6] == ["7", "ArrowUp", "w"] and keys[5] == ["6", "ArrowDown", "s"] and keys[1] == ["2"]
    model = tmp_path / "model"
    shutil.copytree(world / "world", model)
    (model / "keymap.json").write_text(json.dumps({str(k): v for k, v in km.items()}))
    info = load_player(model, device="cpu", warmup=False).info()
    assert [c["label"] for c in info["controls"]][:3] == ["NOOP", "LEFT+UP", "RIGHT"] and info["keymap"]
    (model / "keymap.json").write_text(json.dumps({"9": "LEFT"}))
    with pytest.raises(GenieInputError, match="keymap.json: action id 9 is outside the latent action vocabulary"):
        load_player(model, device="cpu", warmup=False)


def test_action_map_keys_are_real_actions_and_name_the_buttons(context, world, play_data, tmp_path):  # noqa: F811
    """With the LAM's action map (genie ground) arrows/WASD, Space and Q E Z C are real actions, each driving the
    latent the map gives most often for it; the buttons say so. The map wins over MODEL/keymap.json, --keymap over
    the map, and a map fitted for another LAM is refused before serving."""
    from genie.core.errors import GenieInputError
    from genie.play import load_player

    model = tmp_path / "model"
    shutil.copytree(world / "world", model)
    (model / "keymap.json").write_text(json.dumps({"1": "RIGHT"}))
    save_tiny_map(model, {"LEFT": 5, "RIGHT": 2, "UP": 7, "DOWN": 4, "NOOP": 0, "LEFT+UP": 6, "RIGHT+DOWN": None})
    with serving(load_player(model, device="cpu", steps=2, data=play_data, warmup=False)) as srv:
        page = open_page(context, srv)
        labels = page.locator("button.action span").all_inner_texts()
        assert labels == ["LEFT", "RIGHT", "UP", "DOWN", "NOOP", "LEFT+UP"] + [f"latent {a}" for a in range(8)]
        assert "(action map)" in page.inner_text("#model-info") and "real directions" in page.inner_text("#keys-hint")
        pick_prompt(page, 0)
        for k in ("ArrowRight", "a", "w", "Space", "q", "s", "3"):
            press(page, k)
        assert session_of(page, srv).actions == [2, 5, 7, 0, 6, 4, 2]
    info = load_player(model, device="cpu", keymap=model / "keymap.json", warmup=False).info()
    assert info["keymap"] and not info["action_map"] and info["controls"][1]["label"] == "RIGHT"
    (model / "lam" / "action_map.json").unlink()  # no map: keymap.json as before
    info = load_player(model, device="cpu", warmup=False).info()
    assert info["keymap"] and not info["action_map"] and len(info["controls"]) == 8
    save_tiny_map(model, {"LEFT": 1})
    other = tmp_path / "other"
    shutil.copytree(model, other)
    import torch

    from genie.export import save_export
    from latent_actions.config import LatentActionConfig
    from latent_actions.model import LatentActionModel

    torch.manual_seed(5)
    save_export(LatentActionModel(LatentActionConfig.preset("debug")).eval(), tmp_path / "lam2", "lam")
    shutil.copy(tmp_path / "lam2" / "model.safetensors", other / "lam" / "model.safetensors")
    with pytest.raises(GenieInputError, match="fitted for another LAM"):
        load_player(other, device="cpu", warmup=False)


def test_model_that_fails_to_load_exits_2_before_serving(world, tmp_path):  # noqa: F811
    p = run_genie("play", "--model", tmp_path / "missing", "--port", "0")
    assert p.returncode == 2 and "no such world-model folder" in stderr_line(p) and "serving" not in p.stdout
    broken = tmp_path / "broken"
    shutil.copytree(world / "world", broken)
    (broken / "dynamics" / "model.safetensors").write_bytes(b"not safetensors")
    p = run_genie("play", "--model", broken, "--port", "0")
    assert p.returncode == 2 and "dynamics" in stderr_line(p) and "serving" not in p.stdout


def test_command_serves_and_warns_when_not_on_loopback(world):  # noqa: F811
    proc = subprocess.Popen([sys.executable, "-m", "genie", "play", "--model", str(world / "world"), "--host", "0.0.0.0",
                             "--port", "0", "--steps", "2", "--device", "cpu", "--no-warmup"], cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("genie play: serving http://0.0.0.0:"), (line, proc.poll())
        port = int(line.split("http://0.0.0.0:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/info")
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["steps"] == 2
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert "genie: warning: --host 0.0.0.0" in err and "Traceback" not in err
    assert proc.returncode == 0 and "genie play: stopped" in out  # SIGTERM stops it cleanly
