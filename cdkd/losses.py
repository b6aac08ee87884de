"""Loss functions of the data-free KD methods, each a pure tensor function.

Shapes: K teachers/headers, B batch, C classes, D feature dim. Multi-header tensors carry a leading K axis.
Dense (segmentation) logits are (B, C, H, W), or (K, B, C, H, W): every class-wise loss here is then per pixel
(`class_last` moves the class axis last; a tensor of 4 or more axes is dense, 2 or 3 are classification).
Formulas follow ../shared/docs/algorithms.md (section numbers in the docstrings).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def header_l1(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(1/K) sum_k L1(s_k, t_k), with L1 the mean absolute difference over B x C (spec 2.3). s, t: (K, B, C)."""
    return F.l1_loss(s, t)


def ensemble_l1(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """L1(mean_k s_k, mean_k t_k): the headers' average imitates the teachers' average (spec 2.3)."""
    return F.l1_loss(s.mean(0), t.mean(0))


def feature_l1(fs: torch.Tensor | list[torch.Tensor], ft: torch.Tensor | list[torch.Tensor | None]) -> torch.Tensor:
    """(1/K) sum_k (D_mean / D_k) (1/B) sum_b ||f^S_kb - f^T_kb||_1 over the teachers k that give a feature.

    Spec 2.3's L1 is summed over D and averaged over K and B; that is this with equal widths. With a mixed
    ensemble (teacher k of width D_k, the student's header k projected to it) each teacher's term is rescaled
    to the mean width, so a 512-d teacher does not outweigh a 64-d one. fs, ft: (K, B, D) or lists of (B, D_k).
    """
    pairs = [(s, t) for s, t in zip(fs, ft) if t is not None]
    mean_d = sum(t.shape[-1] for _, t in pairs) / len(pairs)
    return sum(((s - t).abs().sum(-1).mean() * (mean_d / t.shape[-1]) for s, t in pairs),
               torch.zeros((), device=pairs[0][1].device)) / len(pairs)


def class_last(t: torch.Tensor) -> torch.Tensor:
    """Dense logits (..., B, C, H, W) as (..., B, H, W, C), so class-wise losses see one row per pixel;
    classification logits (..., B, C) unchanged."""
    return t.movedim(-3, -1) if t.dim() >= 4 else t


def kl_div(t: torch.Tensor, s: torch.Tensor, temperature: float = 1.0, reduction: str = "batchmean") -> torch.Tensor:
    """tau^2 * KL(softmax(t/tau) || softmax(s/tau)), batch-mean, averaged over any leading axes.

    Leading axes (e.g. K) are averaged: the result is (1/K) sum_k KL(t_k || s_k); dense logits: the mean over
    pixels too (per-pixel KL). `reduction="mean"` divides by the C classes as well: F.kl_div's default, the
    scale ZSKT/ABM's hyper-parameters are set for (spec 1.2).
    """
    t, s = class_last(t), class_last(s)
    c = t.shape[-1]
    log_pt = F.log_softmax(t.reshape(-1, c) / temperature, -1)
    log_ps = F.log_softmax(s.reshape(-1, c) / temperature, -1)
    kl = F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * temperature ** 2
    return kl / c if reduction == "mean" else kl


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean CE of logits (..., B, C) against labels y (B,), averaged over leading axes (preset labels, CGDD)."""
    c = logits.shape[-1]
    if logits.dim() >= 4:
        raise ValueError("image-level preset labels have no per-pixel meaning (dense logits)")
    return F.cross_entropy(logits.reshape(-1, c), y.expand(*logits.shape[:-1]).reshape(-1))


class BatchMoments(torch.autograd.Function):
    """(biased var, mean) per channel over (B, H, W), in fp32, with a one-pass fused backward.

    The same values and gradient as `torch.var_mean(a.float(), ...)`: var = mean((a - m)^2) (two passes) and
    d/da = (2/n) g_var (a - m) + g_mean / n. Autograd's var_mean made the BN prior 2.8x the cost of the teacher's
    own forward + backward (ResNet-34, B=64, bf16, AMX CPU); this is ~5x faster on the largest maps. It keeps
    only `a` (in its own dtype) for the backward, not an fp32 copy.

    A bf16/fp16 `a` (autocast) takes its moments from BatchNorm's own statistics kernel instead: one fused pass
    in fp32 accumulators, no fp32 copy of `a`, 4.7x faster on a (64, 64, 32, 32) map (0.93 vs 4.36 ms, AMD EPYC
    Zen 4), the BN prior 0.45 -> 0.31 s of a paper-setting generator step. Its sums are plain (relative error
    ~1e-5 against float64, vs ~1e-7 two-pass), 400x below the bf16 rounding of `a` itself; fp32 inputs keep
    the two-pass sums above.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if a.dtype in (torch.bfloat16, torch.float16):
            # training-mode BN with eps = 0 and fp32 unit affine: fp32 mean and 1/sqrt(biased var); a zero variance
            # comes back as invstd 0 (CPU) or inf (CUDA), both var 0 here
            ones = torch.ones(a.shape[1], device=a.device)
            _, mean, invstd = torch.native_batch_norm(a, ones, torch.zeros_like(ones), None, None, True, 0.0, 0.0)
            var = torch.where(invstd > 0, invstd.pow(-2), 0.0)
        else:
            dims, shape = [0, *range(2, a.dim())], [1, -1] + [1] * (a.dim() - 2)
            af = a.float()
            mean = af.mean(dims)
            var = (af - mean.view(shape)).pow(2).mean(dims)
        ctx.save_for_backward(a, mean)
        return var, mean

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_var: torch.Tensor, g_mean: torch.Tensor) -> torch.Tensor:
        a, mean = ctx.saved_tensors
        n, shape = a.numel() // a.shape[1], [1, -1] + [1] * (a.dim() - 2)
        c1 = (2.0 / n) * g_var
        c0 = g_mean / n - c1 * mean
        return torch.addcmul(c0.view(shape), a.float(), c1.view(shape)).to(a.dtype)


def bn_stat_term(a: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                 global_batch: bool = False) -> torch.Tensor:
    """r_l = ||v_l - sigma^2_l||_2 + ||m_l - mu_l||_2, moments of the BN input a over (B, H, W), biased var.

    DeepInversion Eq. 4 as in the CDFKD-MFS FeatureHook: plain (not squared) Euclidean norms. Computed in fp32.
    `global_batch`: moments over the batch of all DDP ranks (spec 7.4), differentiable through the all-reduce.
    """
    if global_batch:
        from .global_bn import global_moments
        mean, var, _ = global_moments(a.float())
    else:
        var, mean = BatchMoments.apply(a)
    return torch.linalg.vector_norm(var - running_var) + torch.linalg.vector_norm(mean - running_mean)


def bn_stat_loss(terms: list[torch.Tensor], first_scale: float = 5.0) -> torch.Tensor:
    """L_BN = sum_l rho_l r_l with rho = first_scale for the first BN layer, 1 for the rest."""
    if not terms:
        return torch.zeros(())
    return first_scale * terms[0] + sum(terms[1:], torch.zeros_like(terms[0]))


def dafl_onehot(t: torch.Tensor) -> torch.Tensor:
    """L_oh = CE(t, argmax t): the teacher should be confident on synthetic inputs (spec 1.2); dense: per pixel."""
    t = class_last(t).reshape(-1, class_last(t).shape[-1])
    return F.cross_entropy(t, t.argmax(-1))


def dafl_info_entropy(t: torch.Tensor) -> torch.Tensor:
    """L_ie = sum_c p_c log10 p_c with p the batch-mean softmax: negative entropy (base 10), favours balance.
    Dense: p is the mean over the batch's pixels."""
    t = class_last(t).reshape(-1, class_last(t).shape[-1])
    p = F.softmax(t, -1).mean(0)
    return (p * torch.log(p.clamp_min(1e-12))).sum() / math.log(10)


def dafl_activation(f: torch.Tensor) -> torch.Tensor:
    """L_a = -mean |f^T|: strong penultimate activations."""
    return -f.abs().mean()


def attention_map(a: torch.Tensor) -> torch.Tensor:
    """a(A) = l2-normalise(flatten(mean_c A_c^2)): (B, C, H, W) -> (B, H*W) (Zagoruyko & Komodakis)."""
    return F.normalize(a.pow(2).mean(1).flatten(1), dim=1)


def attention_transfer(maps_s: list[torch.Tensor], maps_t: list[torch.Tensor]) -> torch.Tensor:
    """sum_j mean((a(A^S_j) - a(A^T_j))^2) over paired stages, the ZSKT form that beta = 250 is calibrated for.

    Maps are attention maps (..., B, HW); teacher maps may carry a leading K axis (broadcast against the student's).
    """
    return sum(((ms - mt).pow(2).mean() for ms, mt in zip(maps_s, maps_t)), torch.zeros(()))
