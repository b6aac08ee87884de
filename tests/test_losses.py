"""Every loss against values computed by hand on tiny tensors."""
import math

import pytest
import torch

from cdkd import losses as L


def test_header_and_ensemble_l1():
    s = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]])  # (K=2, B=1, C=2)
    t = torch.tensor([[[0.0, 0.0]], [[3.0, 6.0]]])
    # header: mean(|1|,|2|,|0|,|2|) = 5/4; ensemble: mean s = (2,3), mean t = (1.5,3) -> mean(0.5, 0) = 0.25
    assert L.header_l1(s, t).item() == pytest.approx(1.25)
    assert L.ensemble_l1(s, t).item() == pytest.approx(0.25)


def test_feature_l1_sums_dims_and_averages_batch_and_heads():
    fs = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])  # (K=1, B=2, D=2)
    ft = torch.tensor([[[0.0, 3.0], [1.0, 1.0]]])
    # rows: |1|+|2| = 3 and 1+1 = 2 -> mean 2.5
    assert L.feature_l1(fs, ft).item() == pytest.approx(2.5)


def test_kl_div_hand_value_and_temperature():
    t = torch.tensor([[0.0, math.log(3.0)]])  # p_t = (0.25, 0.75)
    s = torch.tensor([[0.0, 0.0]])            # p_s = (0.5, 0.5)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert L.kl_div(t, s).item() == pytest.approx(expected, rel=1e-6)
    # tau = 2: logits halved -> p_t = (1/(1+sqrt3), sqrt3/(1+sqrt3)); times tau^2
    a = 1 / (1 + math.sqrt(3))
    expected2 = 4 * (a * math.log(a / 0.5) + (1 - a) * math.log((1 - a) / 0.5))
    assert L.kl_div(t, s, 2.0).item() == pytest.approx(expected2, rel=1e-6)
    assert L.kl_div(t, t).item() == pytest.approx(0.0, abs=1e-7)


def test_cross_entropy_broadcasts_labels_over_heads():
    logits = torch.zeros(3, 2, 4)  # uniform: CE = log 4 for every head and sample
    y = torch.tensor([1, 3])
    assert L.cross_entropy(logits, y).item() == pytest.approx(math.log(4))


def test_bn_stat_term_and_first_layer_scale():
    a = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)  # one channel: mean 2, biased var 1
    r = L.bn_stat_term(a, torch.tensor([0.0]), torch.tensor([4.0]))
    assert r.item() == pytest.approx(abs(1 - 4) + abs(2 - 0))  # ||v - s2|| + ||m - mu|| = 3 + 2
    terms = [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)]
    assert L.bn_stat_loss(terms).item() == pytest.approx(5 * 1 + 2 + 3)
    assert L.bn_stat_loss(terms, first_scale=1.0).item() == pytest.approx(6)


def test_dafl_terms():
    t = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    p = 1 / (1 + math.exp(-2))
    assert L.dafl_onehot(t).item() == pytest.approx(-math.log(p), rel=1e-6)
    # batch-mean softmax is uniform (0.5, 0.5): sum p log10 p = log10(0.5)
    assert L.dafl_info_entropy(t).item() == pytest.approx(math.log10(0.5), rel=1e-6)
    assert L.dafl_activation(torch.tensor([[-1.0, 3.0]])).item() == pytest.approx(-2.0)


def test_attention_map_and_transfer():
    a = torch.zeros(1, 2, 2, 2)
    a[0, :, 0, 0] = 2.0  # mean_c A^2 = 4 at one position -> normalised one-hot
    m = L.attention_map(a)
    assert torch.allclose(m, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    other = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    # mean of squared differences: (1 + 1) / 4 = 0.5, summed over the two stages
    assert L.attention_transfer([m, m], [other, other]).item() == pytest.approx(1.0)
    assert L.attention_transfer([m], [m]).item() == 0.0


def test_losses_carry_gradients():
    s = torch.randn(2, 4, 5, requires_grad=True)
    t = torch.randn(2, 4, 5)
    (L.header_l1(s, t) + L.ensemble_l1(s, t) + L.kl_div(t, s)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("shape,fmt", [((4, 3, 5, 5), torch.contiguous_format), ((4, 3, 5, 5), torch.channels_last),
                                       ((6, 2), torch.contiguous_format)])
def test_batch_moments_equal_var_mean_values_and_gradient(shape, fmt):
    """The fused BN-prior moments give torch.var_mean's values and the same input gradient (float64 gradcheck)."""
    a = torch.randn(*shape, dtype=torch.float64).contiguous(memory_format=fmt) * 3 + 1
    var, mean = L.BatchMoments.apply(a)
    ref_var, ref_mean = torch.var_mean(a, dim=[0, *range(2, a.dim())], unbiased=False)
    assert torch.allclose(mean.double(), ref_mean, atol=1e-6) and torch.allclose(var.double(), ref_var, atol=1e-5)
    x = a.clone().requires_grad_(True)
    # the op computes in fp32: compare its gradient with var_mean's on the same fp32 input
    w_v, w_m = torch.randn(shape[1]), torch.randn(shape[1])
    xf = x.detach().float().requires_grad_(True)
    v, m = L.BatchMoments.apply(xf)
    (g,) = torch.autograd.grad((w_v * v).sum() + (w_m * m).sum(), xf)
    rv, rm = torch.var_mean(xf, dim=[0, *range(2, a.dim())], unbiased=False)
    (g_ref,) = torch.autograd.grad((w_v * rv).sum() + (w_m * rm).sum(), xf)
    assert torch.allclose(g, g_ref, atol=1e-6)
    # bf16 input: the gradient comes back in the input's dtype and layout
    xb = a.to(torch.bfloat16).contiguous(memory_format=fmt).requires_grad_(True)
    v, m = L.BatchMoments.apply(xb)
    (gb,) = torch.autograd.grad(v.sum() + m.sum(), xb)
    assert gb.dtype == torch.bfloat16 and v.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_batch_moments_reduced_precision_path(dtype, fmt):
    """bf16/fp16 inputs take BN's statistics kernel: fp32 moments of the rounded input within 1e-4 of float64,
    a zero-variance channel gives 0 (not inf or nan), and the gradient is the formula's on that input."""
    torch.manual_seed(0)
    a = (torch.randn(8, 3, 6, 5) * 3 + 1)
    a[:, 2] = 0.75  # constant channel: var exactly 0
    a = a.to(dtype).contiguous(memory_format=fmt).requires_grad_(True)
    var, mean = L.BatchMoments.apply(a)
    ref_var, ref_mean = torch.var_mean(a.detach().double(), dim=[0, 2, 3], unbiased=False)
    assert var.dtype == mean.dtype == torch.float32
    assert torch.allclose(mean.double(), ref_mean, rtol=1e-4, atol=1e-6)
    assert torch.allclose(var.double(), ref_var, rtol=1e-4, atol=1e-6)
    assert var[2].item() == 0.0 and mean[2].item() == 0.75
    g_v, g_m = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, 0.0, 4.0])
    (g,) = torch.autograd.grad((g_v * var).sum() + (g_m * mean).sum(), a)
    # d/da = (2/n) g_var (a - m) + g_mean / n, n = 8 * 6 * 5, worked out in float64 on the rounded input
    n, ad = 240, a.detach().double()
    g_ref = (2 / n) * g_v.double().view(1, -1, 1, 1) * (ad - ref_mean.view(1, -1, 1, 1)) + g_m.double().view(1, -1, 1, 1) / n
    assert g.dtype == dtype
    assert torch.allclose(g.double(), g_ref, rtol=1e-2, atol=1e-4)
