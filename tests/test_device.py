"""The device contract (architecture §4, §7.11): `--device` resolution, generators on the data's device, clear errors."""

from __future__ import annotations

import ast

import pytest
import torch

from genie.core.device import generator_for, resolve_device
from genie.core.errors import GenieInputError
from tests.conftest import ROOT, run_genie, stderr_line
from tests.test_world_model import world  # noqa: F401  (fixture)

MODEL_CODE = ("genie", "tokenizer", "latent_actions", "dynamics")


def test_resolve_device_on_this_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected and resolve_device(None) == expected


@pytest.mark.parametrize("spec,words", [("tpu", "not a device"), ("mps", "not supported"), ("cuda:x", "not a device")])
def test_resolve_device_rejects_what_is_not_a_device(spec, words):
    with pytest.raises(GenieInputError, match=words):
        resolve_device(spec)


def test_cuda_without_cuda_and_an_out_of_range_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GenieInputError, match="CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(GenieInputError, match=r"index 2 is out of range .*2 CUDA devices: 0\.\.1"):
        resolve_device("cuda:2")


def test_generator_for_is_seeded_on_the_device():
    a, b = generator_for("cpu", 7), generator_for(torch.device("cpu"), 7)
    assert a.device == torch.device("cpu")
    assert torch.equal(torch.rand(5, generator=a), torch.rand(5, generator=b))
    assert not torch.equal(torch.rand(5, generator=generator_for("cpu", None)),
                           torch.rand(5, generator=generator_for("cpu", None)))


def _generator_calls(path) -> list[tuple[int, str]]:
    """`torch.Generator(...)` calls in a source file, with the device argument as written."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Generator":
            dev = next((ast.unparse(k.value) for k in node.keywords if k.arg == "device"),
                       ast.unparse(node.args[0]) if node.args else "<none>")
            calls.append((node.lineno, dev))
    return calls


def test_no_cpu_only_generator_in_model_code_paths():
    """Every generator in model, training, sampling and evaluation code comes from `generator_for(device, seed)`:
    a `torch.Generator()` without a device (or with a fixed 'cpu') is what crashed dynamics validation on CUDA."""
    offenders = []
    for pkg in MODEL_CODE:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.name == "device.py":
                continue
            offenders += [f"{path.relative_to(ROOT)}:{line} device={dev}" for line, dev in _generator_calls(path)]
    assert not offenders, offenders


def test_the_generators_of_sampling_and_validation_follow_the_data(world, monkeypatch):  # noqa: F811
    """WorldModel.generate/reset and the stage validation steps ask for generators on their tensors' device."""
    import dynamics.module as dyn_mod
    import genie.world_model as wm_mod
    import latent_actions.module as lam_mod
    from dynamics.module import DynamicsModule
    from genie.world_model import WorldModel
    from latent_actions.module import LatentActionModule

    asked = []

    def spy(device, seed):
        asked.append(torch.device(device))
        return generator_for(device, seed)

    for mod in (wm_mod, dyn_mod, lam_mod):
        monkeypatch.setattr(mod, "generator_for", spy)
    wm = WorldModel.from_pretrained(world / "world")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    wm.generate(x, [1, 2], steps=2, seed=0)
    state = wm.reset(x, seed=0)
    assert state.generator.device == state.tokens.device
    dyn = DynamicsModule(wm.dynamics.config)
    dyn.log = dyn.log_dict = lambda *a, **k: None
    tokens = torch.randint(0, wm.dynamics.config.vocab_size, (2, 4, *wm.dynamics.config.grid))
    dyn.validation_step({"tokens": tokens, "actions": torch.randint(0, 8, (2, 3))}, 0)
    lam = LatentActionModule(wm.lam.config)
    lam.log = lam.log_dict = lambda *a, **k: None
    lam.on_validation_epoch_start()
    lam.validation_step({"video": torch.rand(2, 4, 3, 64, 64) * 2 - 1}, 0)
    assert len(asked) == 4 and all(d == torch.device("cpu") for d in asked)


def test_same_seed_same_result_on_a_device(world):  # noqa: F811
    from genie.world_model import WorldModel

    wm = WorldModel.from_pretrained(world / "world").to(resolve_device("cpu"))
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    a = wm.generate(x, [3, 1, 4], steps=3, seed=5)
    b = wm.generate(x, [3, 1, 4], steps=3, seed=5)
    c = wm.generate(x, [3, 1, 4], steps=3, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without CUDA")
@pytest.mark.parametrize("cmd", ["generate", "evaluate", "tokenize", "probe", "quickstart"])
def test_cuda_asked_for_without_cuda_is_one_line_exit_2(world, tmp_path, cmd):  # noqa: F811
    from PIL import Image

    model = world / "world"
    Image.new("RGB", (64, 64)).save(tmp_path / "p.png")
    args = {
        "generate": ["--model", model, "--prompt", tmp_path / "p.png", "--actions", "1,2", "--out", tmp_path / "o.gif"],
        "evaluate": ["--model", model, "--data", tmp_path, "--out", tmp_path / "e.json"],
        "tokenize": ["--tokenizer", world / "tokenizer", "--data", tmp_path, "--out", tmp_path / "tok"],
        "probe": ["--model", model, "--data", tmp_path, "--out", tmp_path / "probe"],
        "quickstart": ["--tiny", "--out", tmp_path / "qs"],
    }[cmd]
    p = run_genie(cmd, *args, "--device", "cuda:0")
    assert p.returncode == 2, p.stderr[-2000:]
    assert "CUDA is not available" in stderr_line(p)
    assert not (tmp_path / "o.gif").exists() and not (tmp_path / "e.json").exists() and not (tmp_path / "qs").exists()


def test_measured_rates_for_the_time_split(world):  # noqa: F811
    from genie.quickstart import measure_rates

    tok_fps, dyn_fps = measure_rates(world / "tokenizer", world / "lam", ROOT / "configs" / "dynamics" / "debug.yaml",
                                     torch.device("cpu"), batch_size=2)
    assert tok_fps > 0 and dyn_fps > 0


def test_a_missing_dependency_is_named(monkeypatch):
    """A stage module that fails to import because of a missing package names that package."""
    import importlib

    from genie.train import run_train

    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == "tokenizer.module":  # as when vector_quantize_pytorch's dependency loguru is absent
            raise ModuleNotFoundError("No module named 'loguru'", name="loguru")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(GenieInputError, match="needs package 'loguru'"):
        run_train("tokenizer", ["--config", "configs/tokenizer/debug.yaml"])
