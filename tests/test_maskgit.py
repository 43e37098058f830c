"""MaskGIT: the schedule, per-sample training masks, and the decoding loop's invariants (architecture §7.4, §7.7)."""

import math

import pytest
import torch

from dynamics.maskgit import cosine_schedule, masked_counts, maskgit_decode, training_mask

V, MASK = 7, 7


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors: one intra-op thread avoids OpenMP contention on a shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_logits_fn(seed: int = 0, v: int = V):
    """A fixed random 'model': logits depend on the position and on the tokens already known, so a
    loop that forgot to feed its own updates back would change the result."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(64, v, generator=g) * 2

    def fn(tokens):
        b, n = tokens.shape
        known = (tokens != MASK).float().sum(dim=1, keepdim=True)  # (b, 1)
        return table[:n].expand(b, n, v) + 0.1 * known[..., None]

    return fn


# ---- schedule ---------------------------------------------------------------------------------


def test_cosine_schedule_endpoints():
    assert cosine_schedule(0.0) == 1.0
    assert abs(cosine_schedule(1.0)) < 1e-12
    assert math.isclose(cosine_schedule(0.5), math.cos(math.pi / 4))
    r = torch.linspace(0, 1, 11)
    assert torch.all(cosine_schedule(r)[1:] <= cosine_schedule(r)[:-1])


@pytest.mark.parametrize("n, steps", [(256, 25), (16, 8), (16, 16), (5, 8), (1, 3), (100, 1)])
def test_masked_counts_monotone_ends_at_zero(n, steps):
    counts = masked_counts(n, steps).tolist()
    assert len(counts) == steps and counts[-1] == 0
    previous = n
    for k, m in enumerate(counts):
        if previous > 0:
            assert m <= previous - 1, "at least one token unmasked per step while any remain"
        assert m >= 0
        if n >= steps:
            assert m >= steps - 1 - k, "enough left for every later step"
        previous = m
    if n >= steps:
        # Away from the clamps the counts are the cosine schedule itself.
        assert counts[0] == min(math.floor(n * math.cos(math.pi / 2 / steps)), n - 1)


def test_masked_counts_per_row_equals_scalar():
    rows = masked_counts(torch.tensor([256, 16, 3]), 10)
    assert rows.shape == (3, 10)
    for i, n in enumerate([256, 16, 3]):
        assert torch.equal(rows[i], masked_counts(n, 10))


# ---- training masks ---------------------------------------------------------------------------


def test_training_mask_per_sample_rates():
    g = torch.Generator().manual_seed(0)
    mask = training_mask((64, 4, 16, 16), generator=g)
    assert mask.shape == (64, 4, 16, 16) and mask.dtype == torch.bool
    rates = mask.flatten(1).float().mean(dim=1)
    assert rates.min() >= 0.5 - 0.07 and rates.max() <= 1.0
    assert rates.std() > 0.08, "rates must differ across the batch (U(0.5, 1) has std 0.144)"
    assert abs(rates.mean().item() - 0.75) < 0.05
    again = training_mask((64, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    other = training_mask((64, 4, 16, 16), generator=torch.Generator().manual_seed(1))
    assert not torch.equal(mask, other)


def test_training_mask_clean_prefix():
    shape = (400, 6, 4, 4)
    base = training_mask(shape, generator=torch.Generator().manual_seed(3), keep_first_frames=1)
    same = training_mask(shape, generator=torch.Generator().manual_seed(3), keep_first_frames=1, clean_prefix_prob=0.0)
    assert torch.equal(base, same)  # probability 0 draws nothing extra: old seeds keep their masks
    mask = training_mask(shape, generator=torch.Generator().manual_seed(3), keep_first_frames=1, clean_prefix_prob=0.5)
    assert torch.equal(mask[:, :1], base[:, :1]) and not mask[:, 0].any()
    assert not (mask & ~base).any()  # only ever unmasks
    per_frame = mask.flatten(2).any(-1)  # (b, t): frame has a masked token
    changed = (mask != base).flatten(1).any(-1)
    assert 0.35 < changed.float().mean() < 0.65  # about half the samples get a clean prefix
    for i in torch.nonzero(changed).flatten().tolist():
        k = int(per_frame[i].float().argmax())  # first frame with a masked token
        assert 2 <= k <= 5 or not per_frame[i].any()  # a prefix of 2..5 clean frames
        assert not mask[i, :k].any() and torch.equal(mask[i, k:], base[i, k:])  # the rest keeps its masks
    ks = [int(per_frame[i].float().argmax()) for i in torch.nonzero(changed).flatten().tolist()]
    assert set(ks) >= {2, 5}  # every prefix length occurs, up to all but the last frame
    with pytest.raises(ValueError, match="clean_prefix_prob"):
        training_mask((2, 3), clean_prefix_prob=0.5)


def test_training_mask_kept_frames_and_full_rate():
    g = torch.Generator().manual_seed(0)
    mask = training_mask((8, 4, 4, 4), generator=g, keep_first_frames=1)
    assert not mask[:, 0].any() and mask[:, 1:].any()
    full = training_mask((8, 10), rate_low=1.0, rate_high=1.0, generator=g)
    assert full.all()
    with pytest.raises(ValueError, match="rate_low"):
        training_mask((2, 3), rate_low=0.9, rate_high=0.5)
    with pytest.raises(ValueError, match="keep_first_frames"):
        training_mask((2, 3, 4, 4), keep_first_frames=4)


# ---- decoding ---------------------------------------------------------------------------------


def decode_with_history(logits_fn, n, **kw):
    """maskgit_decode and the tokens after each of its steps, read through the logits callable: step k is
    given the state after step k-1, and the result is the state after the last step."""
    seen = []

    def recording(tokens):
        seen.append(tokens.clone())
        return logits_fn(tokens)

    tokens = maskgit_decode(recording, n, **kw)
    return tokens, [*seen[1:], tokens]


@pytest.mark.parametrize("unmask", ["confidence", "random"])
def test_decode_follows_the_schedule_and_fills_everything(unmask):
    n, steps = 16, 6
    g = torch.Generator().manual_seed(0)
    tokens, history = decode_with_history(random_logits_fn(), n, mask_id=MASK, batch_size=3, steps=steps,
                                          generator=g, unmask=unmask)
    assert tokens.shape == (3, n) and tokens.dtype == torch.long
    assert not (tokens == MASK).any() and (tokens >= 0).all() and (tokens < V).all()
    assert len(history) == steps
    expected = masked_counts(n, steps)
    previous = torch.full((3, n), MASK)
    for k, state in enumerate(history):
        assert ((state == MASK).sum(dim=1) == expected[k]).all(), f"step {k}"
        # Tokens fixed at an earlier step never change.
        fixed = previous != MASK
        assert torch.equal(state[fixed], previous[fixed])
        previous = state
    assert torch.equal(history[-1], tokens)


@pytest.mark.parametrize("unmask", ["confidence", "random"])
def test_decode_is_deterministic_under_a_seed(unmask):
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return maskgit_decode(random_logits_fn(), 32, mask_id=MASK, batch_size=4, steps=8,
                              generator=g, unmask=unmask)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_temperature_zero_gives_argmax():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 20, V, generator=g)
    for unmask in ("confidence", "random"):
        tokens = maskgit_decode(lambda x: logits, 20, mask_id=MASK, batch_size=2, steps=5,
                                temperature=0.0, generator=g, unmask=unmask)
        assert torch.equal(tokens, logits.argmax(dim=-1))


def test_confidence_unmasks_the_most_confident_first():
    # Without choice noise the first step keeps exactly the most confident positions.
    n, steps = 10, 5
    logits = torch.zeros(1, n, V)
    sharpness = torch.arange(n, dtype=torch.float)  # position i: more confident as i grows
    logits[0, :, 0] = sharpness
    _, history = decode_with_history(lambda x: logits, n, mask_id=MASK, steps=steps, temperature=0.0,
                                     choice_temperature=0.0)
    kept = n - masked_counts(n, steps)[0].item()
    assert (history[0][0] != MASK).nonzero().flatten().tolist() == list(range(n - kept, n))


def test_temperature_samples_follow_the_distribution():
    # Gumbel-max with temperature: one step over many positions gives softmax(logits / T) frequencies.
    probs = torch.tensor([0.6, 0.3, 0.1])
    logits = probs.log().expand(1, 4000, 3)
    g = torch.Generator().manual_seed(0)
    tokens = maskgit_decode(lambda x: logits, 4000, mask_id=3, steps=1, generator=g)
    freq = torch.bincount(tokens.flatten(), minlength=3).float() / 4000
    torch.testing.assert_close(freq, probs, atol=0.03, rtol=0)
