"""The assembled world model: sampler equivalences, determinism, the step API and `genie generate`."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch

from dynamics.config import DynamicsConfig
from dynamics.model import DynamicsModel
from genie.core.errors import GenieInputError
from genie.export import save_export
from genie.sampling import rollout_tokens
from genie.world_model import WorldModel
from latent_actions.config import LatentActionConfig
from latent_actions.model import LatentActionModel
from tests.conftest import run_genie, stderr_line
from tokenizer.config import TokenizerConfig
from tokenizer.model import VideoTokenizer


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.manual_seed(0)
    x = torch.rand(2, 4, 3, 64, 64) * 2 - 1
    tok, lam = VideoTokenizer(TokenizerConfig.preset("debug")), LatentActionModel(LatentActionConfig.preset("debug"))
    tok(x), lam(x)
    dyn = DynamicsModel(DynamicsConfig.preset("debug"))
    root = tmp_path_factory.mktemp("wm")
    for stage, m in (("tokenizer", tok), ("lam", lam), ("dynamics", dyn)):
        save_export(m.eval(), root / stage, stage)
    WorldModel.assemble(root / "tokenizer", root / "lam", root / "dynamics", root / "world")
    return root


def test_cached_and_uncached_samplers_agree_past_the_window():
    torch.manual_seed(1)
    dyn = DynamicsModel(DynamicsConfig.preset("debug")).eval()  # num_frames 4: 7 new frames slide the window
    prompt = torch.randint(0, 32, (2, 1, 8, 8))
    actions = torch.randint(0, 8, (2, 7))
    outs = [rollout_tokens(dyn, prompt, actions, steps=6, generator=torch.Generator().manual_seed(5), use_cache=c)
            for c in (True, False)]
    assert outs[0].shape == (2, 8, 8, 8)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0][:, 0], prompt[:, 0])
    again = rollout_tokens(dyn, prompt, actions, steps=6, generator=torch.Generator().manual_seed(5))
    other = rollout_tokens(dyn, prompt, actions, steps=6, generator=torch.Generator().manual_seed(6))
    assert torch.equal(again, outs[0]) and not torch.equal(other, outs[0])


def test_generate_is_deterministic_and_step_api_matches(world):
    wm = WorldModel.from_pretrained(world / "world")
    prompt = torch.rand(1, 3, 64, 64) * 2 - 1
    a = wm.generate(prompt, [1, 2, 3], steps=4, seed=3)
    b = wm.generate(prompt, [1, 2, 3], steps=4, seed=3)
    c = wm.generate(prompt, [1, 2, 3], steps=4, seed=4)
    assert a.shape == (1, 4, 3, 64, 64) and torch.equal(a, b) and not torch.equal(a, c)
    state = wm.reset(prompt[:, None], seed=0)
    frames = [wm.step(state, act, steps=4) for act in (1, 2, 3, 4, 5)]  # past the 4-frame window
    assert all(f.shape == (1, 3, 64, 64) for f in frames)
    assert state.tokens.shape == (1, 6, 8, 8) and state.actions.tolist() == [[1, 2, 3, 4, 5]]
    assert all(not p.requires_grad for p in wm.parameters()) and not wm.training
    with pytest.raises(GenieInputError, match="outside the latent action vocabulary"):
        wm.generate(prompt, [8])


def test_assemble_refuses_mismatched_stages(world, tmp_path):
    dyn = DynamicsModel(DynamicsConfig.preset("debug", vocab_size=64))
    save_export(dyn, tmp_path / "dyn64", "dynamics")
    with pytest.raises(GenieInputError, match="vocab_size 64 != tokenizer codebook_size 32"):
        WorldModel.assemble(world / "tokenizer", world / "lam", tmp_path / "dyn64", tmp_path / "w")
    assert not (tmp_path / "w").exists()
    p = run_genie("assemble", "--tokenizer", world / "tokenizer", "--lam", world / "lam", "--dynamics", tmp_path / "dyn64",
                  "--out", tmp_path / "w")
    assert p.returncode == 2 and "do not fit together" in stderr_line(p)


def test_genie_generate_writes_a_readable_video(world, tmp_path):
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)).save(tmp_path / "p.png")
    p = run_genie("generate", "--model", world / "world", "--prompt", tmp_path / "p.png", "--actions", "0,3,3,1,7",
                  "--out", tmp_path / "out.mp4", "--steps", "4")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resized to 64×64" in p.stderr
    with av.open(str(tmp_path / "out.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 6 and frames[0].shape == (64, 64, 3)
    p = run_genie("generate", "--model", world / "world", "--prompt", tmp_path / "p.png", "--actions", "2,2",
                  "--out", tmp_path / "out.gif", "--steps", "2")
    assert p.returncode == 0 and Image.open(tmp_path / "out.gif").n_frames == 3


@pytest.mark.parametrize("case", ["bad_action", "bad_prompt", "bad_ext", "not_numbers", "no_model", "bad_hop"])
def test_genie_generate_bad_input_exit_2(world, tmp_path, case):
    (tmp_path / "p.png").write_bytes(b"not an image")
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "ok.png")
    args = {"bad_action": ("ok.png", "0,8", "o.mp4", world / "world"), "bad_prompt": ("p.png", "0", "o.mp4", world / "world"),
            "bad_ext": ("ok.png", "0", "o.avi", world / "world"), "not_numbers": ("ok.png", "0,x", "o.mp4", world / "world"),
            "no_model": ("ok.png", "0", "o.mp4", tmp_path / "none"), "bad_hop": ("ok.png", "0", "o.mp4", world / "world")}[case]
    extra = ("--context", "2", "--window-hop", "3") if case == "bad_hop" else ()
    p = run_genie("generate", "--model", args[3], "--prompt", tmp_path / args[0], "--actions", args[1],
                  "--out", tmp_path / args[2], "--steps", "2", *extra)
    assert p.returncode == 2
    line = stderr_line(p)
    assert {"bad_action": "vocabulary 0..7", "bad_prompt": "unreadable image", "bad_ext": "unknown output type",
            "not_numbers": "comma-separated", "no_model": "no such world-model folder",
            "bad_hop": "window hop 3: must be 1..2 (the context)"}[case] in line
    assert not (tmp_path / args[2]).exists()


def test_generate_non_square_64x48(tmp_path):
    """H=48, W=64 through all three stages: assemble, `genie generate` from a 160×210 (Atari-shaped) PNG."""
    from PIL import Image

    torch.manual_seed(0)
    x = torch.rand(2, 4, 3, 48, 64) * 2 - 1
    tok = VideoTokenizer(TokenizerConfig.preset("debug", image_size=(48, 64)))
    lam = LatentActionModel(LatentActionConfig.preset("debug", image_size=[48, 64]))
    tok(x), lam(x)
    dyn = DynamicsModel(DynamicsConfig.preset("debug", grid=(6, 8)))
    for stage, m in (("tokenizer", tok), ("lam", lam), ("dynamics", dyn)):
        save_export(m.eval(), tmp_path / stage, stage)
    with pytest.raises(GenieInputError, match=r"dynamics grid \(8, 8\) != tokenizer grid \(6, 8\)"):
        save_export(DynamicsModel(DynamicsConfig.preset("debug")), tmp_path / "dyn88", "dynamics")
        WorldModel.assemble(tmp_path / "tokenizer", tmp_path / "lam", tmp_path / "dyn88", tmp_path / "bad")
    WorldModel.assemble(tmp_path / "tokenizer", tmp_path / "lam", tmp_path / "dynamics", tmp_path / "world")
    wm = WorldModel.from_pretrained(tmp_path / "world")
    assert wm.frame_size == (48, 64) and wm.image_size == (48, 64)
    assert json.loads((tmp_path / "world" / "world_model.json").read_text())["image_size"] == [48, 64]
    prompt = np.zeros((210, 160, 3), np.uint8)
    prompt[:, :, 1] = 200  # a green frame, taller than wide: padded left and right to 64×48
    Image.fromarray(prompt).save(tmp_path / "prompt.png")
    p = run_genie("generate", "--model", tmp_path / "world", "--prompt", tmp_path / "prompt.png",
                  "--actions", "0,3,1", "--out", tmp_path / "clip.mp4", "--seed", "0", "--steps", "2")
    assert p.returncode == 0, p.stderr
    assert "160×210 (width×height); padded to the model's aspect and resized to 64×48" in p.stderr
    with av.open(str(tmp_path / "clip.mp4")) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert frames.shape == (4, 48, 64, 3)
    # the LAM of a non-square model is refused beside a square tokenizer
    save_export(LatentActionModel(LatentActionConfig.preset("debug")).eval(), tmp_path / "lam64", "lam")
    with pytest.raises(GenieInputError, match="LAM frames 64×64px×3 != tokenizer frames 64×48px×3"):
        WorldModel.assemble(tmp_path / "tokenizer", tmp_path / "lam64", tmp_path / "dynamics", tmp_path / "bad2")


def test_window_hop_rebuilds_the_cache_less_often_and_matches_the_uncached_sampler():
    torch.manual_seed(1)
    dyn = DynamicsModel(DynamicsConfig.preset("debug")).eval()  # num_frames 4
    prompt = torch.randint(0, 32, (2, 1, 8, 8))
    actions = torch.randint(0, 8, (2, 9))
    calls = []
    forward = dyn.forward

    def counting(tokens, *args, **kwargs):
        calls.append((tokens.shape[1], kwargs.get("cache") is not None))
        return forward(tokens, *args, **kwargs)

    dyn.forward = counting
    rebuilds = {}
    for hop in (1, 2, 3):
        outs = []
        for cached in (True, False):
            calls.clear()
            outs.append(rollout_tokens(dyn, prompt, actions, steps=3, generator=torch.Generator().manual_seed(5),
                                       use_cache=cached, window_hop=hop))
            if cached:  # a forward without a cache over several context frames is a rebuild
                rebuilds[hop] = sum(1 for t, with_cache in calls if not with_cache)
        assert torch.equal(outs[0], outs[1]), hop
    # 9 new frames, window 4: hop 1 rebuilds for every frame once the context is full; hop k once every k frames
    assert rebuilds[1] == 7 and rebuilds[2] == 4 and rebuilds[3] == 3, rebuilds
    with pytest.raises(GenieInputError, match=r"window hop 4: must be 1\.\.3 \(the context\)"):
        rollout_tokens(dyn, prompt, actions, steps=2, window_hop=4)


@pytest.mark.parametrize("context,hop", [(None, 1), (None, 2), (2, 1), (3, 3)])
def test_step_by_step_equals_generate_and_keeps_the_cache_between_steps(world, context, hop):
    """reset + one step per action gives generate's frames bit for bit, for every window setting, while the
    state's cache is rebuilt only when the window moves (the rest is one frame of compute per step)."""
    wm = WorldModel.from_pretrained(world / "world")  # dynamics num_frames 4: 7 actions slide the window
    prompt = torch.rand(1, 3, 64, 64) * 2 - 1
    acts = [1, 5, 0, 7, 2, 2, 6]
    video = wm.generate(prompt, acts, steps=3, seed=2, context=context, window_hop=hop)
    calls = []
    forward = wm.dynamics.forward

    def counting(tokens, *args, **kwargs):
        calls.append((tokens.shape[1], kwargs.get("cache") is not None))
        return forward(tokens, *args, **kwargs)

    wm.dynamics.forward = counting
    state = wm.reset(prompt, seed=2, context=context, window_hop=hop)
    frames = [wm.step(state, a, steps=3) for a in acts]
    wm.dynamics.forward = forward
    tokens, _ = wm.encode_prompt(prompt)
    batch = rollout_tokens(wm.dynamics, tokens, torch.tensor([acts]), steps=3, context=context, window_hop=hop,
                           generator=torch.Generator().manual_seed(2))
    assert torch.equal(state.tokens, batch)  # the same tokens, bit for bit
    # and the same pixels (the tokenizer decodes a window at a time in one, frame by frame in the other)
    torch.testing.assert_close(torch.stack(frames, dim=1), video[:, 1:], atol=1e-5, rtol=0)
    c = 3 if context is None else context
    # the window starts at frame 0 and moves when the context would pass c, by `hop` frames
    start, moves = 0, 0
    for t_new in range(1, len(acts) + 1):
        if t_new - start > c:
            start, moves = t_new - (c + 1 - hop), moves + 1
    assert sum(1 for _, with_cache in calls if not with_cache) == 1 + moves  # the first frame's build + moves


def test_undo_restores_the_state_and_replays_the_same_frame(world):
    wm = WorldModel.from_pretrained(world / "world")
    prompt = torch.rand(1, 3, 64, 64) * 2 - 1
    state = wm.reset(prompt, seed=7, window_hop=2)
    for a in (1, 2, 3):
        wm.step(state, a, steps=3)
    before = state.generator.get_state()
    first = wm.step(state, 4, steps=3)
    cache = state.rollout.cache  # over the context of the frame just made, not including it
    state.truncate(4)  # undo the last frame; the caller rewinds its generator
    state.generator.set_state(before)
    assert state.tokens.shape[1] == 4 and state.actions.tolist() == [[1, 2, 3]]
    assert state.rollout.cache is cache  # the cache held only kept frames: still used
    assert torch.equal(wm.step(state, 4, steps=3), first)
    # tokens assigned from outside: the next step starts a fresh rollout from them
    state.tokens, state.actions = state.tokens[:, :2], state.actions[:, :1]
    wm.step(state, 0, steps=3)
    assert state.tokens.shape[1] == 3 and state.actions.tolist() == [[1, 0]]
    with pytest.raises(GenieInputError, match="window hop 5: must be 1..3"):
        wm.reset(prompt, window_hop=5)
    with pytest.raises(GenieInputError, match="context 4: must be 1..3"):
        wm.generate(prompt, [1], context=4)


@pytest.mark.parametrize("hop,copy_gate", [(1, False), (2, False), (2, True)])
def test_prev_token_model_samples_the_same_with_and_without_the_cache(hop, copy_gate):
    """With prev_token_input the cache path hands the model the previous frame itself (the cached one):
    cached and uncached sampling agree past the window, and so does a Rollout stepped one frame at a time."""
    torch.manual_seed(1)
    dyn = DynamicsModel(DynamicsConfig.preset("debug", prev_token_input=True, copy_gate=copy_gate)).eval()
    prompt = torch.randint(0, 32, (2, 1, 8, 8))
    actions = torch.randint(0, 8, (2, 7))
    outs = [rollout_tokens(dyn, prompt, actions, steps=3, generator=torch.Generator().manual_seed(5), use_cache=c,
                           window_hop=hop) for c in (True, False)]
    assert torch.equal(outs[0], outs[1])
    from genie.sampling import Rollout

    roll, g = Rollout(dyn, prompt, window_hop=hop), torch.Generator().manual_seed(5)
    for i in range(actions.shape[1]):
        roll.step(actions[:, i], steps=3, generator=g)
    assert torch.equal(roll.tokens, outs[0])


# -- real actions through the LAM's action map (genie ground) -------------------------------------------

def save_tiny_map(model_dir, latent_of: dict[str, int | None]):
    """Write an action map for the LAM of `model_dir` in which each real action was labelled only beside the
    latent `latent_of[name]` (None: never labelled), so `class_to_code()` is `latent_of`."""
    from genie.export import load_export
    from genie.grounding import Transitions, fit_action_map, lam_fingerprint, save_action_map

    lam = load_export(model_dir / "lam", "lam")
    seen = [(k, code) for k, code in enumerate(latent_of.values()) if code is not None] * 3
    labels, codes = np.array([k for k, _ in seen]), np.array([c for _, c in seen])
    latents = np.random.default_rng(0).normal(size=(len(seen), 4)).astype(np.float32)
    amap = fit_action_map(Transitions(latents, codes, labels), list(latent_of), lam.num_actions, len(seen),
                          lam_fingerprint(lam), {"test": "tiny"})
    save_action_map(amap, model_dir)
    return amap


def genie_in_process(capsys, *args) -> tuple[int, str, str]:
    """`genie ARGS` in this process (no interpreter start-up): exit code, stdout, stderr."""
    from genie.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("genie: error")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def mapped(world, tmp_path_factory):
    """A copy of the debug world model with an action map: LEFT → latent 5, RIGHT → 2, UP → 7, NOOP → 0,
    LEFT+UP never labelled."""
    import shutil

    model = tmp_path_factory.mktemp("mapped") / "world"
    shutil.copytree(world / "world", model)
    save_tiny_map(model, {"LEFT": 5, "RIGHT": 2, "UP": 7, "NOOP": 0, "LEFT+UP": None})
    return model


def test_generate_real_actions_go_through_the_action_map(mapped, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "p.png")
    common = ("--model", mapped, "--prompt", tmp_path / "p.png", "--steps", "2", "--device", "cpu", "--seed", "1")
    code, out, err = genie_in_process(capsys, "generate", *common, "--real-actions", "RIGHT, right,UP,LEFT,NOOP",
                                      "--out", tmp_path / "real.gif")
    assert code == 0, err
    assert "latent actions 2,2,7,5,0" in out
    code, _, err = genie_in_process(capsys, "generate", *common, "--actions", "2,2,7,5,0", "--out", tmp_path / "ids.gif")
    assert code == 0, err
    assert (tmp_path / "real.gif").read_bytes() == (tmp_path / "ids.gif").read_bytes()  # the same frames


def test_generate_real_actions_bad_input_is_one_line(world, mapped, tmp_path, capsys):
    import shutil

    from PIL import Image

    from genie.grounding import load_action_map

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "p.png")

    def error(model, names, *extra) -> str:
        code, _, err = genie_in_process(capsys, "generate", "--model", model, "--prompt", tmp_path / "p.png",
                                        "--real-actions", names, "--out", tmp_path / "o.gif", "--steps", "2", *extra)
        assert not (tmp_path / "o.gif").exists()
        return one_error_line(code, err)

    assert "--real-actions: unknown real action 'JUMP'; the map knows LEFT, RIGHT, UP, NOOP, LEFT+UP" in error(mapped, "RIGHT,JUMP")
    assert "real action LEFT+UP was never seen" in error(mapped, "left+up")
    assert "expected comma-separated real action names" in error(mapped, "RIGHT,,UP")
    assert "no action_map.json; fit one with genie ground" in error(world / "world", "RIGHT")
    other = tmp_path / "other"  # the same folder and map with another LAM's weights: the map is refused
    shutil.copytree(mapped, other)
    torch.manual_seed(5)
    save_export(LatentActionModel(LatentActionConfig.preset("debug")).eval(), tmp_path / "lam2", "lam")
    shutil.copy(tmp_path / "lam2" / "model.safetensors", other / "lam" / "model.safetensors")
    assert "fitted for another LAM" in error(other, "RIGHT")
    assert load_action_map(mapped) is not None
    with pytest.raises(SystemExit) as e:  # argparse: one or the other
        from genie.cli import main

        main(["generate", "--model", str(mapped), "--prompt", str(tmp_path / "p.png"), "--actions", "1",
              "--real-actions", "RIGHT", "--out", str(tmp_path / "o.gif")])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
