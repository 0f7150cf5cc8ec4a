"""GRUClassifier: reference parameter layout, padding invariance, and the fused CPU path equal to nn.GRU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from doodle_rnn.model import GRUClassifier, ModelConfig


def _batch(lengths: list[int], seed: int = 0, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths)
    x = torch.randn(len(lengths), max(lengths), 3, generator=g, dtype=dtype)
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    return x, lens


def test_parameter_names_and_shapes_match_the_reference():
    m = GRUClassifier(ModelConfig(num_classes=10))
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    expected = {}
    for layer, fan_in in ((0, 3), (1, 384)):
        for sfx in ("", "_reverse"):
            expected[f"gru.weight_ih_l{layer}{sfx}"] = (576, fan_in)
            expected[f"gru.weight_hh_l{layer}{sfx}"] = (576, 192)
            expected[f"gru.bias_ih_l{layer}{sfx}"] = (576,)
            expected[f"gru.bias_hh_l{layer}{sfx}"] = (576,)
    expected.update({"norm.weight": (384,), "norm.bias": (384,), "fc.weight": (10, 384), "fc.bias": (10,)})
    assert shapes == expected


@pytest.mark.parametrize("conv", [[], [8, 16]])
@pytest.mark.parametrize(("rnn", "impl"), [("gru", "fused"), ("gru", "packed"), ("lstm", "packed")])
def test_padding_never_changes_a_drawings_logits(impl, rnn, conv):
    torch.manual_seed(0)
    m = GRUClassifier(
        ModelConfig(num_classes=7, hidden_size=32, rnn=rnn, conv_channels=conv), impl=impl
    ).eval()
    alone_x, alone_len = _batch([9], seed=1)
    with torch.no_grad():
        alone = m(alone_x, alone_len)
        x, lens = _batch([40, 9, 25, 33], seed=2)
        x[1] = 0
        x[1, :9] = alone_x[0]
        padded = m(x, lens)
        # and with garbage (not zeros) in the padding
        x[1, 9:] = 123.0
        garbage = m(x, lens)
    torch.testing.assert_close(padded[1], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(garbage[1], alone[0], atol=1e-5, rtol=0)


def test_lstm_asked_for_the_fused_path_runs_nn_lstm():
    """The fused kernel is a GRU: an LSTM model with impl="fused" runs the packed nn.LSTM, same numbers."""
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=4, hidden_size=8, rnn="lstm", dropout=0.0)
    fused, packed = GRUClassifier(cfg, impl="fused"), GRUClassifier(cfg, impl="packed")
    packed.load_state_dict(fused.state_dict())
    x, lens = _batch([6, 11, 2], seed=1)
    assert not fused.use_fused(x)
    out = []
    for m in (fused, packed):
        y = m(x, lens)
        y.sum().backward()
        out.append((y.detach(), m.gru.weight_hh_l0.grad.clone()))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


@pytest.mark.parametrize(("layers", "bidirectional"), [(2, True), (1, False), (3, True), (2, False)])
def test_fused_path_equals_packed_nn_gru_outputs_and_gradients(layers, bidirectional):
    torch.manual_seed(3)
    cfg = ModelConfig(
        num_classes=5, hidden_size=16, num_layers=layers, bidirectional=bidirectional, dropout=0.0
    )
    m = GRUClassifier(cfg).double()
    x, lens = _batch([5, 9, 1, 9, 3, 7, 2], seed=4, dtype=torch.float64)
    w = torch.randn(7, 5, dtype=torch.float64)
    results = {}
    for impl in ("packed", "fused"):
        m.impl = impl
        m.zero_grad()
        xi = x.clone().requires_grad_(True)
        y = m(xi, lens)
        (y * w).sum().backward()
        grads = {k: p.grad.clone() for k, p in m.named_parameters()}
        results[impl] = (y.detach(), grads, xi.grad.clone())
    y_p, g_p, gx_p = results["packed"]
    y_f, g_f, gx_f = results["fused"]
    torch.testing.assert_close(y_f, y_p, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(gx_f, gx_p, atol=1e-12, rtol=1e-10)
    for k in g_p:
        torch.testing.assert_close(g_f[k], g_p[k], atol=1e-12, rtol=1e-10, msg=k)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_bf16_products_track_the_fp32_outputs_and_gradients(bidirectional):
    """The CPU training default where bf16 is fast: products in bf16, states, gates and gradients fp32."""
    torch.manual_seed(7)
    cfg = ModelConfig(num_classes=5, hidden_size=32, num_layers=2, bidirectional=bidirectional, dropout=0.0)
    m = GRUClassifier(cfg, impl="fused")
    x, lens = _batch([12, 30, 1, 30, 7, 19, 2, 25], seed=8)
    w = torch.randn(8, 5)
    results = {}
    for mdt in (None, torch.bfloat16):
        m.matmul_dtype = mdt
        m.zero_grad()
        y = m(x, lens)
        (y * w).sum().backward()
        results[mdt] = (y.detach(), {k: p.grad.clone() for k, p in m.named_parameters()})
    (y32, g32), (y16, g16) = results[None], results[torch.bfloat16]
    assert y16.dtype == torch.float32
    torch.testing.assert_close(y16, y32, atol=0.03, rtol=0.03)
    for k in g32:  # bf16 keeps ~3 significant digits; gradients agree in direction and size
        cos = F.cosine_similarity(g16[k].flatten(), g32[k].flatten(), dim=0)
        assert cos > 0.99, (k, cos)
        assert abs(g16[k].norm() / g32[k].norm() - 1) < 0.05, k


def test_fused_dropout_between_layers_matches_nn_gru():
    """dropout > 0: in eval the fused path equals nn.GRU exactly; in training its outputs have nn.GRU's distribution.

    The masks cannot be shared (the fused path draws its own), so training is compared in distribution:
    each of 4 drawings is repeated 1,000 times in one batch, each copy with its own masks, and the
    mean and spread of every final-state element are compared. A z-score per element (difference
    over its standard error) averages ~1 when the distributions are the same; a dropout of another
    rate, dropout in the wrong place or without the 1 / (1 - p) scaling moves it far off (the control
    below: p = 0.3 against p = 0.5 scores > 20 on the spread, same-p runs score ~1).
    """
    x, lens = _batch([9, 3, 14, 6], seed=4, dtype=torch.float64)

    def model(p: float, impl: str) -> GRUClassifier:
        torch.manual_seed(3)  # the same weights for every p and impl
        return GRUClassifier(ModelConfig(num_classes=5, hidden_size=8, dropout=p), impl=impl).double()

    fused, packed = model(0.3, "fused"), model(0.3, "packed")
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(x, lens), packed.eval()(x, lens), atol=1e-12, rtol=1e-10)

    copies = 1000
    xs, ls = x.repeat(copies, 1, 1), lens.repeat(copies)

    def states(m: GRUClassifier, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        with torch.no_grad():
            return m.train().final_states(xs, ls).view(copies, len(lens), -1)

    def z2(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
        """Mean squared z-score of the per-element difference of means, and of standard deviations."""
        var = a.var(0) + b.var(0)
        z_mean = (a.mean(0) - b.mean(0)) / (var / copies).sqrt()
        z_std = (a.std(0) - b.std(0)) / (var / (2 * copies)).sqrt()  # sd of a sample sd: sigma / sqrt(2n)
        return (z_mean**2).mean().item(), (z_std**2).mean().item()

    f = states(fused, 1)
    assert not torch.equal(f[0], f[1])  # dropout is on: copies of a drawing differ
    same_mean, same_std = z2(f, states(packed, 2))
    assert same_mean < 2 and same_std < 2, (same_mean, same_std)
    _, other_std = z2(f, states(model(0.5, "packed"), 2))
    assert other_std > 20, other_std


def test_bf16_validation_path_tracks_fp32_nn_gru():
    """Validation on CPU with bf16 products: eval + no_grad takes the fused path, which keeps one step's
    buffers instead of the whole sequence's; its numbers equal the training path's forward, and are
    within bf16 rounding of nn.GRU in fp32, over drawings up to the 250-step cap.

    Tolerance: GRU states live in (-1, 1), where bf16's step is 2^-8 = 0.0039; the final states differ
    by at most 0.0006-0.0009 (hidden 64, 6 seeds; 0.0013-0.0018 at hidden 192), under one bf16 step, so
    rounding does not pile up over 250 steps. Logits (LayerNorm divides by the states' spread, then
    a linear layer) differ by 0.0023-0.0037 at hidden 64; 0.015 leaves 4x.
    """
    torch.manual_seed(0)
    m = GRUClassifier(ModelConfig(num_classes=10, hidden_size=64)).eval()
    x, lens = _batch([250, 1, 6, 40, 120, 250, 77, 13], seed=0)
    with torch.no_grad():
        m.impl, m.matmul_dtype = "packed", None
        ref_logits, ref_states = m(x, lens), m.final_states(x, lens)
        m.impl, m.matmul_dtype = "auto", torch.bfloat16
        assert m.use_fused(x)  # the auto rule: CPU inference with bf16 products runs fused
        m.matmul_dtype = None
        assert not m.use_fused(x)  # and fp32 inference runs nn.GRU (faster on a quiet box, see use_fused)
        m.matmul_dtype = torch.bfloat16
        logits, states = m(x, lens), m.final_states(x, lens)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(states, ref_states, atol=2**-8, rtol=0)
    torch.testing.assert_close(logits, ref_logits, atol=0.015, rtol=0)
    assert (states - ref_states).abs().max() > 0  # the products did run in bf16
    torch.testing.assert_close(m(x, lens).detach(), logits, atol=0, rtol=0)  # with gradients: the same


def test_fused_path_passes_gradcheck():
    from doodle_rnn.model import gru_final_states

    torch.manual_seed(5)
    gru = torch.nn.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True).double()
    x, lens = _batch([4, 2, 3], seed=6, dtype=torch.float64)
    x.requires_grad_(True)
    params = tuple(gru.parameters())

    def f(x, *ps):
        return gru_final_states(gru, x, lens, training=False)

    assert torch.autograd.gradcheck(f, (x, *params))


def test_default_model_shapes_and_dropout_only_in_training():
    torch.manual_seed(0)
    m = GRUClassifier(ModelConfig(num_classes=10, hidden_size=24))
    x, lens = _batch([12, 30, 7])
    m.train()
    a, b = m(x, lens), m(x, lens)
    assert a.shape == (3, 10)
    assert not torch.allclose(a, b)  # dropout is active
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x, lens), m(x, lens))


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="rnn must be"):
        GRUClassifier(ModelConfig(num_classes=3, rnn="transformer"))
    with pytest.raises(ValueError, match="impl must be"):
        GRUClassifier(ModelConfig(num_classes=3), impl="magic")


def test_packed_row_counts_are_rounded_to_few_shapes():
    """Every batch's packed row count is a new matrix shape to oneDNN, which keeps memory per shape."""
    from doodle_rnn.model import _padded_rows

    assert [_padded_rows(n) for n in (1, 64, 65, 4096, 4097, 9600)] == [64, 64, 128, 4096, 4608, 9728]
    typical = {_padded_rows(n) for n in range(7_000, 12_000)}  # batches of 192 drawings of ~50 steps
    assert len(typical) == 11
    assert all(_padded_rows(n) - n < max(64, n // 8) for n in range(1, 50_000, 7))


def test_keep_freed_memory_takes_effect_on_glibc():
    import platform

    from doodle_rnn.memory import keep_freed_memory

    took = keep_freed_memory()
    assert took is (platform.libc_ver()[0] == "glibc")
    assert keep_freed_memory() is took  # idempotent


def test_fast_dropout_keeps_the_right_share_scaled_and_passes_gradient_through_the_mask():
    from doodle_rnn.model import _dropout

    torch.manual_seed(0)
    x = torch.full((200, 500), 2.0, requires_grad=True)
    y = _dropout(x, 0.2)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.01
    assert torch.allclose(y[kept], torch.tensor(2.0 / 0.8))
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.8)


def test_conv_front_end_fused_equals_packed_and_changes_the_input_width():
    torch.manual_seed(5)
    cfg = ModelConfig(num_classes=4, hidden_size=12, dropout=0.0, conv_channels=[6, 10], conv_kernel=5)
    fused, packed = GRUClassifier(cfg, impl="fused").double(), GRUClassifier(cfg, impl="packed").double()
    packed.load_state_dict(fused.state_dict())
    assert fused.gru.input_size == 10 and fused.conv is not None
    x, lens = _batch([17, 5, 30], seed=6, dtype=torch.float64)
    y = torch.tensor([0, 3, 1])
    out = []
    for m in (fused, packed):
        m.train()
        loss = F.cross_entropy(m(x, lens), y)
        loss.backward()
        out.append((loss.detach(), m.conv.layers[0].weight.grad.clone()))
    torch.testing.assert_close(out[0][0], out[1][0])
    torch.testing.assert_close(out[0][1], out[1][1])
    with pytest.raises(ValueError, match="odd"):
        GRUClassifier(ModelConfig(num_classes=2, conv_channels=[4], conv_kernel=4))
