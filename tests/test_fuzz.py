"""Fuzzed inputs, seeded and bounded: every bad input is one clear line, exit 2, nothing half-written.

Each input type gets a fixed number of seeded mutations of a valid file, fed to the `genie` command
in-process (`genie.cli.main`, so hundreds of cases fit in well under a minute). A case may succeed
(a mutation the format tolerates, e.g. changed pixel bytes) or be refused; it must never crash
(a traceback), hang (a per-case alarm), print more than one error line, or leave a complete-looking
output behind. `test_outcome_table` prints the counts per input type and outcome (`pytest -s`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import signal
import struct
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipelines.storage import CARD_NAME, DatasetWriter
from tests.conftest import coded_episode, smooth_frames, write_video

CASE_SECONDS = 20  # per case; a decoder that loops forever becomes a "hang" outcome, not a stuck suite
RESULTS: dict[str, Counter] = defaultdict(Counter)


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def cli(*argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `genie ARGV` run in this process; a crash is re-raised."""
    from genie.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in argv])
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return code, out.getvalue(), err.getvalue()


def record(kind: str, argv: list, names: str, out_path: Path | None, expect_ok: bool | None = None) -> str:
    """Run one case, check the contract, count its outcome under `kind`; returns the outcome."""
    t0 = time.perf_counter()
    try:
        code, _, err = cli(*argv)
    except _Hang:
        RESULTS[kind]["HANG"] += 1
        pytest.fail(f"{kind}: {names} hung for over {CASE_SECONDS} s")
    except Exception as e:  # noqa: BLE001 - a crash is the outcome under test
        RESULTS[kind]["CRASH"] += 1
        pytest.fail(f"{kind}: {names} crashed with {type(e).__name__}: {e}")
    lines = [ln for ln in err.splitlines() if ln.startswith("genie: error:")]
    assert "Traceback" not in err, f"{kind}: {names}: traceback\n{err[-2000:]}"
    if code == 0:
        outcome = "ok"
        assert expect_ok is not False, f"{kind}: {names} was accepted but must be refused"
    else:
        assert code == 2, f"{kind}: {names}: exit {code}\n{err[-2000:]}"
        assert len(lines) == 1, f"{kind}: {names}: expected one error line, got\n{err[-2000:]}"
        assert names in lines[0], f"{kind}: the error does not name {names!r}: {lines[0]}"
        assert expect_ok is not True, f"{kind}: {names} was refused: {lines[0]}"
        if out_path is not None:
            assert not out_path.exists(), f"{kind}: {names}: {out_path} was written although the command failed"
            leftovers = [p.name for p in out_path.parent.iterdir() if p.name.startswith(out_path.name)]
            assert not leftovers, f"{kind}: {names}: left {leftovers}"
        outcome = "exit 2"
    RESULTS[kind][outcome] += 1
    RESULTS[kind]["seconds"] += time.perf_counter() - t0
    return outcome


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One seeded mutation of `data`: flipped bytes, a zeroed block, a truncation, an insertion, or noise."""
    b = bytearray(data)
    kind = rng.integers(0, 5)
    if kind == 0 and b:
        for i in rng.integers(0, len(b), size=int(rng.integers(1, 32))):
            b[i] = int(rng.integers(0, 256))
        return bytes(b), "flip"
    if kind == 1 and b:
        s = int(rng.integers(0, len(b)))
        n = int(rng.integers(1, max(2, len(b) // 4)))
        b[s:s + n] = bytes(len(b[s:s + n]))
        return bytes(b), "zero"
    if kind == 2:
        return bytes(b[:int(rng.integers(0, max(1, len(b))))]), "truncate"
    if kind == 3:
        s = int(rng.integers(0, len(b) + 1))
        return bytes(b[:s]) + rng.bytes(int(rng.integers(1, 64))) + bytes(b[s:]), "insert"
    return rng.bytes(int(rng.integers(0, 2048))), "noise"


# -- video files for `genie data import` -----------------------------------------------------------------

def test_fuzz_video_import(tmp_path):
    rng = np.random.default_rng(17)
    videos = tmp_path / "videos"
    videos.mkdir()
    bases = []
    for i, (codec, ext) in enumerate((("libx264", "mp4"), ("mpeg4", "avi"), ("libx264", "mkv"))):
        p = tmp_path / f"base{i}.{ext}"
        write_video(p, smooth_frames(10, 48, 64, seed=i), codec=codec)
        bases.append(p)
    for i, p in enumerate(bases):  # intact copies must always be imported
        (videos / f"good{i}{p.suffix}").write_bytes(p.read_bytes())
    n_cases = 24
    for i in range(n_cases):
        base = bases[i % len(bases)]
        data, how = mutate(base.read_bytes(), rng)
        (videos / f"fuzz{i:02d}_{how}{base.suffix}").write_bytes(data)
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "text.webm").write_text("this is not a video\n")
    out = tmp_path / "ds"
    t0 = time.perf_counter()
    code, stdout, err = cli("data", "import", "--videos", videos, "--out", out, "--resolution", "32")
    assert code == 0 and "Traceback" not in err, err[-3000:]
    card = json.loads((out / CARD_NAME).read_text())
    skipped = {s["file"] for s in card["skipped"]}
    fuzzed = [p.name for p in videos.iterdir() if not p.name.startswith("good")]
    assert not any(p.startswith("good") for p in skipped), skipped
    assert {"empty.mp4", "text.webm"} <= skipped
    for name in skipped:  # each skipped file is named on stderr
        assert any("genie: skipping" in ln and name in ln for ln in err.replace("\r", "\n").splitlines()), (name, err[-3000:])
    imported = len(fuzzed) + len(bases) - len(skipped)
    assert sum(v["episodes"] for v in card["splits"].values()) == imported
    RESULTS["video file (import)"]["imported"] += len(fuzzed) - len(skipped)
    RESULTS["video file (import)"]["skipped, named"] += len(skipped)
    RESULTS["video file (import)"]["seconds"] += time.perf_counter() - t0


# -- dataset cards and Arrow shards ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzzds") / "ds"
    with DatasetWriter(out, chunk_len=8, card={"source": "test", "num_actions": 15}) as w:
        for e in range(3):
            w.add_episode(coded_episode(e, 12), "train")
        w.close()
    return out


def _copy_dataset(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


JSON_JUNK = [None, True, -1, 0, 1e308, "x", [], {}, [1, 2], {"a": 1}, "64", -7.5]


def _mutate_json(obj: dict, rng: np.random.Generator) -> tuple[bytes, str]:
    """A structural mutation (a key dropped or given a junk value) or a byte mutation of the text."""
    if rng.random() < 0.5:
        obj = json.loads(json.dumps(obj))
        keys = list(obj)
        k = keys[int(rng.integers(0, len(keys)))]
        if rng.random() < 0.3:
            del obj[k]
            return json.dumps(obj).encode(), f"drop {k}"
        obj[k] = JSON_JUNK[int(rng.integers(0, len(JSON_JUNK)))]
        return json.dumps(obj).encode(), f"junk {k}"
    return mutate(json.dumps(obj, indent=2).encode(), rng)


def test_fuzz_dataset_card(dataset, tmp_path):
    rng = np.random.default_rng(18)
    card = json.loads((dataset / CARD_NAME).read_text())
    for i in range(30):
        d = _copy_dataset(dataset, tmp_path / f"d{i}")
        data, _ = _mutate_json(card, rng)
        (d / CARD_NAME).write_bytes(data)
        record("dataset card (data info)", ["data", "info", d], str(d), None)
        # reading clips from it (the loader every stage trains on) is refused with one error too, or works
        record("dataset card (tokenize)", ["tokenize", "--tokenizer", TOKENIZER_EXPORT[0], "--data", d,
                                           "--out", tmp_path / f"t{i}"], str(d), tmp_path / f"t{i}")


def test_fuzz_arrow_shard(dataset, tmp_path):
    rng = np.random.default_rng(19)
    shard = next((dataset / "train").glob("data-*.arrow"))
    for i in range(30):
        d = _copy_dataset(dataset, tmp_path / f"d{i}")
        data, _ = mutate(shard.read_bytes(), rng)
        (d / "train" / shard.name).write_bytes(data)
        record("Arrow shard (tokenize)", ["tokenize", "--tokenizer", TOKENIZER_EXPORT[0], "--data", d,
                                          "--out", tmp_path / f"t{i}"], str(d), tmp_path / f"t{i}")


# -- exports: config.json and model.safetensors ------------------------------------------------------------

TOKENIZER_EXPORT: list[Path] = []  # set by the autouse fixture below, used by the dataset cases too


@pytest.fixture(scope="module", autouse=True)
def exports(tmp_path_factory):
    from dynamics.config import DynamicsConfig
    from dynamics.model import DynamicsModel
    from genie.export import save_export
    from genie.world_model import WorldModel
    from latent_actions.config import LatentActionConfig
    from latent_actions.model import LatentActionModel
    from tokenizer.config import TokenizerConfig
    from tokenizer.model import VideoTokenizer

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("fuzzexp")
    x = torch.rand(2, 4, 3, 16, 16) * 2 - 1
    tok = VideoTokenizer(TokenizerConfig.from_dict({**TokenizerConfig.preset("debug").to_dict(), "image_size": 16,
                                                    "patch_size": 4}))
    lam = LatentActionModel(LatentActionConfig.from_dict({**LatentActionConfig.preset("debug").to_dict(),
                                                          "image_size": 16, "patch_size": 4}))
    tok(x), lam(x)
    dyn = DynamicsModel(DynamicsConfig.from_dict({**DynamicsConfig.preset("debug").to_dict(), "grid": [4, 4]}))
    for stage, m in (("tokenizer", tok), ("lam", lam), ("dynamics", dyn)):
        save_export(m.eval(), root / stage, stage)
    WorldModel.assemble(root / "tokenizer", root / "lam", root / "dynamics", root / "world")
    TOKENIZER_EXPORT[:] = [root / "tokenizer"]
    return root


def _bad_safetensors(good: Path, rng: np.random.Generator, i: int) -> tuple[bytes, str]:
    from safetensors.torch import load_file, save_file

    tensors = load_file(good)
    kind = i % 6
    if kind == 0:  # a pickle renamed .safetensors: must be refused, never unpickled
        return pickle.dumps({"state": tensors, "payload": os.system}), "pickle"
    if kind == 1:  # torch.save output (a zip of pickles) under the safetensors name
        buf = io.BytesIO()
        torch.save(tensors, buf)
        return buf.getvalue(), "torch.save"
    tmp = good.parent / f".fuzz{i}.safetensors"
    keys = sorted(tensors)
    k = keys[int(rng.integers(0, len(keys)))]
    if kind == 2:
        tensors.pop(k)
        how = f"missing {k}"
    elif kind == 3:
        tensors[k] = torch.zeros(*(s + 1 for s in tensors[k].shape)) if tensors[k].ndim else torch.zeros(2)
        how = f"wrong shape {k}"
    elif kind == 4:
        tensors[f"extra.{i}"] = torch.zeros(3)
        how = "unexpected key"
    else:
        data, how = mutate(good.read_bytes(), rng)
        if rng.random() < 0.5:  # a header length that points past the end
            data = struct.pack("<Q", int(rng.integers(1, 2**40))) + data[8:]
            how = "header length"
        return data, how
    save_file({n: t.contiguous() for n, t in tensors.items()}, tmp)
    data = tmp.read_bytes()
    tmp.unlink()
    return data, how


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzzsmall") / "ds"
    with DatasetWriter(out, chunk_len=8) as w:
        w.add_episode(coded_episode(0, 8, h=16, w=16), "train")
        w.close()
    return out


def test_fuzz_export_config_and_weights(exports, small_dataset, tmp_path):
    import shutil

    rng = np.random.default_rng(20)
    good = exports / "tokenizer"
    cfg = json.loads((good / "config.json").read_text())
    for i in range(24):  # config.json: junk values, dropped keys, byte mutations, a junk genie_config
        d = tmp_path / f"c{i}"
        shutil.copytree(good, d)
        if i % 3 == 0:
            sub = json.loads(json.dumps(cfg))
            data, _ = _mutate_json(sub["genie_config"], rng)
            try:
                sub["genie_config"] = json.loads(data)
                data = json.dumps(sub).encode()
            except ValueError:
                pass
        else:
            data, _ = _mutate_json(cfg, rng)
        (d / "config.json").write_bytes(data)
        record("export config.json (tokenize)", ["tokenize", "--tokenizer", d, "--data", small_dataset,
                                                 "--out", tmp_path / f"tc{i}"], str(d), tmp_path / f"tc{i}")
    for i in range(24):  # model.safetensors
        d = tmp_path / f"w{i}"
        shutil.copytree(good, d)
        data, how = _bad_safetensors(good / "model.safetensors", rng, i)
        (d / "model.safetensors").write_bytes(data)
        expect = False if how in ("pickle", "torch.save") or how.startswith(("missing", "wrong shape", "unexpected")) else None
        record("export model.safetensors (tokenize)", ["tokenize", "--tokenizer", d, "--data", small_dataset,
                                                       "--out", tmp_path / f"tw{i}"], str(d), tmp_path / f"tw{i}",
               expect_ok=expect)


# -- prompts and actions for `genie generate` --------------------------------------------------------------

def _prompt_cases(tmp_path: Path, rng: np.random.Generator) -> list[tuple[Path, bool | None]]:
    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(good)
    cases: list[tuple[Path, bool | None]] = []

    def add(name: str, data: bytes | None = None, image=None, ok: bool | None = None):
        p = tmp_path / name
        if image is not None:
            image.save(p)
        else:
            p.write_bytes(data)
        cases.append((p, ok))

    add("text.png", b"hello, I am not an image\n", ok=False)
    add("empty.png", b"", ok=False)
    add("json.mp4", b'{"frames": []}', ok=False)
    add("noise.gif", rng.bytes(700), ok=False)
    add("tiny_1x1.png", image=Image.new("RGB", (1, 1), (200, 10, 10)))
    add("strip_1x500.png", image=Image.new("RGB", (1, 500)))
    add("huge_3000x2000.png", image=Image.new("RGB", (3000, 2000), (0, 90, 200)))
    add("gray.png", image=Image.new("L", (20, 30), 128))
    add("rgba.png", image=Image.new("RGBA", (16, 16), (1, 2, 3, 4)))
    add("palette.gif", image=Image.new("P", (16, 16)))
    add("sixteen_bit.png", image=Image.fromarray(np.full((16, 16), 40000, np.uint16)))
    add("cmyk.jpg", image=Image.new("CMYK", (16, 16)))
    for i in range(12):
        data, how = mutate(good.read_bytes(), rng)
        add(f"fuzz{i:02d}_{how}.png", data)
    return cases


ACTION_JUNK = ["", ",", "0,,1", "1;2", "a,b", "0x3", "1.5", "-1", "8", "99999999999999999999", " ", "0, 1",
               "nan", "1e3", "\u0661,\u0662", "0," * 2000, "\x00", "[0,1]", "--1", "+2"]


def test_fuzz_generate_prompts_and_actions(exports, tmp_path):
    rng = np.random.default_rng(21)
    world = exports / "world"
    (tmp_path / "out").mkdir()
    for prompt, ok in _prompt_cases(tmp_path, rng):
        out = tmp_path / "out" / f"{prompt.stem}.gif"
        record("prompt file (generate)", ["generate", "--model", world, "--prompt", prompt, "--actions", "1",
                                          "--out", out, "--steps", "1"], str(prompt), out, expect_ok=ok)
    good = tmp_path / "good.png"
    for i, actions in enumerate(ACTION_JUNK):
        out = tmp_path / "out" / f"a{i}.gif"
        record("action list (generate)", ["generate", "--model", world, "--prompt", good, f"--actions={actions}",
                                          "--out", out, "--steps", "1"], "--actions", out)


def test_outcome_table():
    """The counts per input type and outcome (printed with `pytest -s`); fails on any crash or hang."""
    if not RESULTS:
        pytest.skip("no fuzz case ran in this session (run the whole file)")
    rows = ["| input type | cases | outcomes | seconds |", "|---|---|---|---|"]
    for kind, c in sorted(RESULTS.items()):
        outcomes = {k: v for k, v in c.items() if k != "seconds"}
        rows.append(f"| {kind} | {sum(outcomes.values())} | "
                    f"{', '.join(f'{k}: {v}' for k, v in sorted(outcomes.items()))} | {c['seconds']:.1f} |")
    print("\n" + "\n".join(rows))
    assert not any(c["CRASH"] or c["HANG"] for c in RESULTS.values())
