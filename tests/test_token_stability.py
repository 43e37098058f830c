"""Token stability in `genie evaluate`: identical tokens between consecutive frames, overall and on unchanged patches."""

from __future__ import annotations

import numpy as np
import torch

from data_pipelines.storage import DatasetWriter, Episode
from genie.eval_results import markdown_table
from genie.evaluate import evaluate_tokenizer, token_stability_counts


def test_counts_on_a_known_case():
    video = torch.zeros(1, 3, 3, 8, 8)  # patch 4 → a 2×2 token grid
    video[:, 1, :, 0:4, 0:4] = 0.5  # frame 1: patch (0, 0) changes
    video[:, 2] = video[:, 1]
    video[:, 2, 1, 7, 7] += 2 / 255  # frame 2: one uint8 step in one pixel of patch (1, 1): changed
    ids = torch.tensor([[[1, 2], [3, 4]],
                        [[9, 2], [3, 5]],  # (0,0) changed with its pixels; (1,1) flickered on still pixels
                        [[9, 2], [3, 5]]])[None]  # all tokens kept, though patch (1,1) changed
    same, total, same_unch, unch = token_stability_counts(ids, video, patch_size=4).tolist()
    assert (same, total) == (6, 8)
    # unchanged patches: (0,1), (1,0), (1,1) in transition 1; (0,0), (0,1), (1,0) in transition 2
    assert unch == 6 and same_unch == 5


def test_evaluate_tokenizer_reports_it(tmp_path):
    from tokenizer.config import TokenizerConfig
    from tokenizer.model import VideoTokenizer

    rng = np.random.default_rng(0)
    still = np.repeat(rng.integers(0, 256, size=(1, 64, 64, 3)).astype(np.uint8), 12, axis=0)
    with DatasetWriter(tmp_path / "d", chunk_len=8) as w:
        w.add_episode(Episode(frames=still, level_seed=1), "test")
        w.close()
    torch.manual_seed(0)
    tok = VideoTokenizer(TokenizerConfig.preset("debug")).eval()
    res = evaluate_tokenizer(tok, tmp_path / "d", "test", num_clips=2, seed=0)
    st = res.token_stability
    assert st.unchanged_patch_share == 1.0
    # a still video through a causal tokenizer: the first frame may differ (no past), later ones need not
    assert 0 <= st.identical_share == st.identical_share_unchanged_patches <= 1
    assert "unchanged patches" in markdown_table(res)
