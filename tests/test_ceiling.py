"""The supervised inverse-dynamics ceiling: it learns actions visible in the frames, not shuffled ones; cached; seeded."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from data_pipelines.clips import ClipDataset
from data_pipelines.storage import DatasetWriter, Episode
from genie.ceiling import CeilingSettings, ceiling_for, train_ceiling
from genie.core.metrics import normalized_mutual_info
from genie.eval_results import CeilingResult, markdown_table
from genie.evaluate import evaluate_lam, supervised_ceiling

# actions 0 left, 1 none, 2 right, 3 up, 4 down, 5 a no-op twin of 1 (merged into 1)
MOVES = {0: (0, -4), 1: (0, 0), 2: (0, 4), 3: (-4, 0), 4: (4, 0), 5: (0, 0)}
MERGE = [0, 1, 2, 3, 4, 1]
NAMES = ["LEFT", "NOOP", "RIGHT", "UP", "DOWN", "Q"]
FAST = CeilingSettings(max_steps=100, batch_size=32, lr=4e-3, width=16)


def _episode(e: int, n: int = 24, shuffle_labels: bool = False) -> Episode:
    """A textured background with a white 6×6 sprite that moves as the action says (wrapping around)."""
    rng = np.random.default_rng(e)
    bg = (rng.integers(0, 120, size=(64, 64, 3))).astype(np.uint8)
    actions = rng.integers(0, 6, size=n).astype(np.int16)
    y, x = rng.integers(0, 58, size=2)
    frames = []
    for a in actions:
        f = bg.copy()
        f[np.arange(y, y + 6)[:, None] % 64, np.arange(x, x + 6) % 64] = 255
        frames.append(f)
        dy, dx = MOVES[int(a)]
        y, x = (y + dy) % 64, (x + dx) % 64
    if shuffle_labels:  # the same frames, labels that no longer match them
        actions = rng.permutation(actions)
    return Episode(frames=np.stack(frames), actions=actions, level_seed=e)


def _dataset(path, train: int, test: int, shuffle_labels: bool = False):
    with DatasetWriter(path, chunk_len=8, card={"merged_action": MERGE, "action_names": NAMES}) as w:
        for e in range(train):
            w.add_episode(_episode(e, shuffle_labels=shuffle_labels), "train")
        for e in range(1000, 1000 + test):
            w.add_episode(_episode(e, shuffle_labels=shuffle_labels), "test")
        w.close()
    return path


def _score(model, data):
    ds = ClipDataset(data, "test", clip_len=8)
    starts = range(0, len(ds), 7)  # clips that share no transition: NMI's small-sample bias stays low
    video = torch.stack([ds[i]["video"] for i in starts])
    labels = np.asarray(MERGE)[torch.stack([ds[i]["actions"] for i in starts]).numpy()].ravel()
    pred = model.predict_clip(video).numpy().ravel()
    return normalized_mutual_info(pred, labels), float((pred == labels).mean())


@pytest.fixture(scope="module")
def visible(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("idm") / "visible", train=24, test=10)


@pytest.fixture(scope="module")
def trained(visible, tmp_path_factory):
    """One ceiling trained on `visible` into a fresh cache: (model, info, seconds, cache dir)."""
    cache = tmp_path_factory.mktemp("cache")
    t0 = time.perf_counter()
    model, info = ceiling_for(visible, FAST, seed=0, cache_dir=cache)
    return model, info, time.perf_counter() - t0, cache


def test_ceiling_learns_visible_actions_and_not_shuffled_ones(visible, trained, tmp_path):
    model, info, _, _ = trained
    assert info["steps"] == FAST.max_steps and info["num_classes"] == 5 and not info["cached"]
    nmi, acc = _score(model, visible)
    assert nmi > 0.4 and acc > 0.6, (nmi, acc)
    shuffled = _dataset(tmp_path / "shuffled", train=24, test=10, shuffle_labels=True)
    model_s, _ = ceiling_for(shuffled, FAST, seed=0, cache_dir=tmp_path / "c2")
    nmi_s, _ = _score(model_s, shuffled)
    assert nmi_s < 0.1 and nmi_s < nmi / 5, nmi_s


def test_cache_hit_is_identical_and_faster(visible, trained):
    a, info_a, t_train, cache = trained
    t0 = time.perf_counter()
    b, info_b = ceiling_for(visible, FAST, seed=0, cache_dir=cache)
    t_cached = time.perf_counter() - t0
    assert not info_a["cached"] and info_b["cached"] and t_cached < t_train / 3
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".safetensors"]  # no temp files left
    # another seed or other settings are another cache entry, not a stale hit
    tiny = CeilingSettings(max_steps=3, batch_size=8, width=8)
    for seed in (0, 1):  # other settings, then another seed: each its own entry
        _, info_c = ceiling_for(visible, tiny, seed=seed, cache_dir=cache)
        assert not info_c["cached"] and info_c["steps"] == 3
    assert len(list(cache.glob("*.safetensors"))) == 3


def test_ceiling_training_is_seeded(visible):
    s = CeilingSettings(max_steps=5, batch_size=8, width=8)
    a, _ = train_ceiling(visible, s, seed=3)
    b, _ = train_ceiling(visible, s, seed=3)
    c, _ = train_ceiling(visible, s, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_no_train_split_is_not_computed(visible, tmp_path):
    heldout = tmp_path / "heldout"
    with DatasetWriter(heldout, chunk_len=8, card={"merged_action": MERGE}) as w:
        w.add_episode(_episode(2000), "test")
        w.close()
    model, info = supervised_ceiling(heldout, cache_dir=tmp_path / "c")
    assert model is None and "no labelled train split" in info["reason"]
    other = tmp_path / "other"
    with DatasetWriter(other, chunk_len=8, card={"merged_action": [0, 1, 2, 3, 4, 5]}) as w:
        w.add_episode(_episode(5), "train")
        w.close()
    model, info = supervised_ceiling(heldout, probe_data=other, cache_dir=tmp_path / "c")
    assert model is None and "merge actions differently" in info["reason"]


def test_evaluate_lam_reports_the_ceiling_beside_the_lam(visible, trained):
    from latent_actions.config import LatentActionConfig
    from latent_actions.model import LatentActionModel

    torch.manual_seed(0)
    lam = LatentActionModel(LatentActionConfig.preset("debug", num_frames=8)).eval()
    ceiling = supervised_ceiling(visible, cache_dir=trained[3], seed=0, settings=FAST)  # the cached model
    assert ceiling[1]["cached"]
    res = evaluate_lam(lam, visible, "test", num_clips=8, seed=0, ceiling=ceiling)
    c = res.supervised_ceiling
    assert isinstance(c, CeilingResult)
    assert c.nmi > 0.4 and c.accuracy > c.majority_accuracy and c.nmi_shuffled < 0.2
    assert c.lam_nmi_fraction == pytest.approx(res.nmi / c.nmi)
    # by component (read from the card's action names): the ceiling sees both the left/right and up/down moves
    assert set(res.nmi_components) == set(c.nmi_components) == {"horizontal", "vertical"}
    assert min(c.nmi_components.values()) > 0.3
    table = markdown_table(res)
    assert "supervised inverse-dynamics ceiling" in table and "share of the ceiling" in table
    assert "NMI by component, LAM / ceiling" in table
