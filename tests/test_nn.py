"""Invariants of the shared primitives: temporal causality, KV cache, quantizer round trip."""

import math

import pytest
import torch

from genie.nn import (
    FiniteScalarQuantizer,
    STTransformer,
    VectorQuantizer,
    build_quantizer,
    codebook_usage,
)


def tiny_transformer(causal: bool = True) -> STTransformer:
    torch.manual_seed(0)
    return STTransformer(dim=32, depth=2, num_heads=4, num_tokens=6, num_frames=5, causal=causal).eval()


def test_st_transformer_shapes():
    model = tiny_transformer()
    for t in (1, 5):
        assert model(torch.randn(2, t, 6, 32)).shape == (2, t, 6, 32)
    with pytest.raises(ValueError, match="num_frames"):
        model(torch.randn(2, 6, 6, 32))
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(2, 3, 7, 32))


@pytest.mark.parametrize("frame", [0, 2, 4])
def test_st_transformer_temporal_causality(frame):
    model = tiny_transformer()
    x = torch.randn(2, 5, 6, 32)
    perturbed = x.clone()
    perturbed[:, frame] += torch.randn(2, 6, 32)
    with torch.no_grad():
        out, out_perturbed = model(x), model(perturbed)
    torch.testing.assert_close(out_perturbed[:, :frame], out[:, :frame], atol=1e-6, rtol=0)
    assert (out_perturbed[:, frame:] - out[:, frame:]).abs().max() > 1e-3


def test_non_causal_transformer_sees_the_future():
    model = tiny_transformer(causal=False)
    x = torch.randn(1, 5, 6, 32)
    perturbed = x.clone()
    perturbed[:, -1] += torch.randn(6, 32)
    with torch.no_grad():
        assert (model(perturbed)[:, 0] - model(x)[:, 0]).abs().max() > 1e-3


def test_kv_cache_incremental_equals_full_forward():
    model = tiny_transformer()
    x = torch.randn(2, 5, 6, 32)
    with torch.no_grad():
        full = model(x)
        out_a, cache = model(x[:, :2], return_cache=True)
        assert cache.num_frames == 2
        out_b, cache = model(x[:, 2:3], cache=cache, return_cache=True)
        assert cache.num_frames == 3
        out_c = model(x[:, 3:], cache=cache)
    torch.testing.assert_close(torch.cat([out_a, out_b, out_c], dim=1), full, atol=1e-5, rtol=0)


def test_kv_cache_is_not_mutated_and_can_be_reused():
    # A MaskGIT loop queries the same past many times; the cache passed in must not grow.
    model = tiny_transformer()
    x = torch.randn(1, 4, 6, 32)
    with torch.no_grad():
        _, cache = model(x[:, :3], return_cache=True)
        first = model(x[:, 3:], cache=cache)
        second = model(x[:, 3:], cache=cache)
    assert cache.num_frames == 3
    assert torch.equal(first, second)


def test_kv_cache_rejects_overflow_and_batch_mismatch():
    model = tiny_transformer()
    with torch.no_grad():
        _, cache = model(torch.randn(2, 4, 6, 32), return_cache=True)
        with pytest.raises(ValueError, match="num_frames"):
            model(torch.randn(2, 2, 6, 32), cache=cache)
        with pytest.raises(ValueError, match="batch"):
            model(torch.randn(3, 1, 6, 32), cache=cache)


@pytest.mark.parametrize("kind", ["vq", "fsq"])
def test_quantizer_round_trip_is_exact(kind):
    torch.manual_seed(0)
    quantizer = build_quantizer(kind, 32, codebook_size=1000 if kind == "fsq" else 16, code_dim=8)
    x = torch.randn(2, 3, 5, 32)
    quantizer.train()
    quantizer(x)  # k-means init and an EMA step, as in training
    quantizer.eval()
    out = quantizer(x)
    assert out.quantized.shape == (2, 3, 5, 32)
    assert out.indices.shape == (2, 3, 5) and out.indices.dtype == torch.int64
    assert 0 <= out.indices.min() and out.indices.max() < quantizer.codebook_size
    assert torch.equal(quantizer.indices_to_codes(out.indices), out.quantized)


@pytest.mark.parametrize("kind", ["vq", "fsq"])
def test_quantizer_runs_in_fp32_under_bf16_autocast(kind):
    torch.manual_seed(0)
    quantizer = build_quantizer(kind, 32, codebook_size=1000 if kind == "fsq" else 16, code_dim=8).eval()
    x = torch.randn(2, 7, 32)
    reference = quantizer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = quantizer(x.bfloat16())
        codes = quantizer.indices_to_codes(out.indices)
    assert out.quantized.dtype == torch.float32 and codes.dtype == torch.float32
    assert torch.equal(codes, out.quantized)
    # bf16 input rounding may flip a borderline code, but most must agree with the fp32 run.
    assert (out.indices == reference.indices).float().mean() > 0.7


def test_vq_training_gives_loss_and_gradients():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(32, codebook_size=16, code_dim=8).train()
    x = torch.randn(4, 10, 32, requires_grad=True)
    out = quantizer(x)
    assert out.loss.item() > 0
    (out.quantized.sum() + out.loss).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_fsq_codebook_size_and_gradients():
    quantizer = FiniteScalarQuantizer(32, levels=(8, 5, 5, 5))
    assert quantizer.codebook_size == 1000
    assert quantizer.codebook.shape == (1000, 4)
    x = torch.randn(3, 32, requires_grad=True)
    out = quantizer(x)
    assert out.loss.item() == 0
    out.quantized.sum().backward()
    assert x.grad.abs().sum() > 0


def test_build_quantizer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown quantizer"):
        build_quantizer("lfq", 32, codebook_size=16, code_dim=8)
    with pytest.raises(ValueError, match="codebook_size"):
        build_quantizer("fsq", 32, codebook_size=1024, code_dim=8, fsq_levels=(8, 5, 5, 5))


def test_codebook_usage_on_known_inputs():
    same = codebook_usage(torch.full((4, 8), 3), codebook_size=16)
    assert same.usage.item() == pytest.approx(1 / 16)
    assert same.perplexity.item() == pytest.approx(1.0)

    uniform = codebook_usage(torch.arange(16).repeat(5), codebook_size=16)
    assert uniform.usage.item() == pytest.approx(1.0)
    assert uniform.perplexity.item() == pytest.approx(16.0)

    half = codebook_usage(torch.tensor([0, 1, 0, 1]), codebook_size=8)
    assert half.usage.item() == pytest.approx(2 / 8)
    assert half.perplexity.item() == pytest.approx(2.0)
    assert math.isfinite(codebook_usage(torch.tensor([5]), codebook_size=8).perplexity.item())


def test_code_usage_entropy_term_spreads_a_collapsed_batch():
    """VectorQuantizer.usage_penalty: ~log K when one code takes the batch, ~0 when the batch spreads evenly, and
    per clip (a batch of clips each on its own code is still collapsed), and its gradient alone moves a collapsed
    clip onto most of the codes (the guard against a LAM or tokenizer that uses one code)."""
    import math

    from genie.nn.quantizer import VectorQuantizer

    torch.manual_seed(0)
    q = VectorQuantizer(8, 8, 8, entropy_weight=1.0).train()
    q(torch.randn(512, 8))  # k-means init of the codebook on spread inputs
    codes = torch.nn.functional.normalize(q.vq.codebook.float(), dim=-1)
    collapsed = torch.nn.Parameter(codes[0].repeat(1, 64, 1) + 0.01 * torch.randn(1, 64, 8))  # one clip
    assert q.usage_penalty(collapsed.detach()) > 0.9 * math.log(8)
    assert q.usage_penalty(codes.repeat(1, 8, 1)) < 0.05
    # two clips, each on its own code: spread over the batch, collapsed within each clip
    assert q.usage_penalty(torch.stack([codes[0].repeat(8, 1), codes[1].repeat(8, 1)])) > 0.9 * math.log(8)
    opt = torch.optim.SGD([collapsed], lr=1.0)
    for _ in range(200):
        opt.zero_grad()
        q.usage_penalty(collapsed).backward()
        opt.step()
    used = (torch.nn.functional.normalize(collapsed.detach()[0], dim=-1) @ codes.t()).argmax(-1).unique().numel()
    assert used >= 6, used
    off = VectorQuantizer(8, 8, 8).train()
    assert off.entropy_weight == 0.0
    q.eval()
    torch.testing.assert_close(q(torch.randn(64, 8)).loss, torch.zeros(()))  # training only
