"""The student and generator objectives of all methods, assembled from `losses` by the config weights.

The generator objective is split as in spec 7.2: L(x) = sum_k [l_k(s_k(x), t_k(x)) + b_k(x)], so that
dL/dx = sum_k (teacher-side input gradient g_k) + (student-side input gradient g_S). `teacher_loss` needs only
teacher k's forward on x, the paired student logits s_k and labels y, so it can run wherever teacher k lives.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import losses as L
from .config import LossConfig
from .teachers import TeacherOutput


@dataclass
class Targets:
    """No-grad teacher answers for a student step, stacked over the K teachers."""
    logits: torch.Tensor                       # (K, B, C)
    pooled: list[torch.Tensor | None] | None = None  # per teacher (B, D_k); None for a teacher without one
    maps: list[torch.Tensor] | None = None     # per stage j: (K, B, H_j*W_j) attention maps

    def to(self, device: torch.device | str) -> "Targets":
        pooled = [f.to(device) if f is not None else None for f in self.pooled] if self.pooled is not None else None
        return Targets(self.logits.to(device), pooled,
                       [m.to(device) for m in self.maps] if self.maps else None)

    @staticmethod
    def cat(parts: list["Targets"]) -> "Targets":
        """The targets of concatenated batches (along the batch axis), e.g. MAD's G batch and EMA batch."""
        pooled = None
        if parts[0].pooled is not None:
            pooled = [None if fs[0] is None else torch.cat(fs) for fs in zip(*(p.pooled for p in parts))]
        maps = [torch.cat(ms, 1) for ms in zip(*(p.maps for p in parts))] if parts[0].maps else None
        return Targets(torch.cat([p.logits for p in parts], 1), pooled, maps)

    def split(self, sizes: list[int]) -> list["Targets"]:
        """The targets of consecutive sub-batches of `sizes` samples (the inverse of `cat`)."""
        logits = self.logits.split(sizes, 1)
        pooled = [[None] * len(sizes) if f is None else f.split(sizes) for f in self.pooled] \
            if self.pooled is not None else None
        maps = [m.split(sizes, 1) for m in self.maps] if self.maps else None
        return [Targets(logits[i], [f[i] for f in pooled] if pooled is not None else None,
                        [m[i] for m in maps] if maps is not None else None) for i in range(len(sizes))]


def discrepancy(s: torch.Tensor, t: torch.Tensor, kind: str, lc: LossConfig) -> torch.Tensor:
    """(1/K) sum_k D(s_k, t_k) for paired (K, B, C) logits; D is L1 (DFAD/CDFKD-MFS) or KL(t||s) (ABM/MAD)."""
    return L.header_l1(s, t) if kind == "l1" else L.kl_div(t, s, lc.temperature, lc.kl_reduction)


def pair_heads(s: torch.Tensor, k: int) -> torch.Tensor:
    """Header k imitates teacher k; a single-head student is paired with every teacher. (H, B, C) -> (K, B, C)."""
    return s.expand(k, *s.shape[1:]) if s.shape[0] == 1 else s


def student_objective(s: torch.Tensor, feats: torch.Tensor | list[torch.Tensor], stages: list[torch.Tensor], tgt: Targets,
                      y: torch.Tensor | None, lc: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """L_S = w_header D(s_k, t_k) + w_ens L1(mean s, mean t) + w_feat feature L1 + w_ce CE(s, y) + w_at AT."""
    k = tgt.logits.shape[0]
    terms = {"header": (lc.w_header, lambda: discrepancy(pair_heads(s, k), tgt.logits, lc.student_loss, lc)),
             "ens": (lc.w_ens, lambda: L.ensemble_l1(s, tgt.logits)),
             "feat": (lc.w_feat if tgt.pooled is not None and any(f is not None for f in tgt.pooled) else 0.0,
                      lambda: L.feature_l1(feats if isinstance(feats, list) else pair_heads(feats, k), tgt.pooled)),
             "ce": (lc.w_ce if y is not None else 0.0, lambda: L.cross_entropy(s, y)),
             "at": (lc.w_at if tgt.maps else 0.0,
                    lambda: L.attention_transfer([L.attention_map(a.float()) for a in stages], tgt.maps))}
    total, logs = torch.zeros((), device=s.device), {}
    for name, (weight, term) in terms.items():
        if weight > 0:
            value = term()
            total = total + weight * value
            logs[f"s_{name}"] = value.item()
    logs["loss_s"] = total.item()
    return total, logs


def teacher_prior(out: TeacherOutput, y: torch.Tensor | None, lc: LossConfig) -> torch.Tensor:
    """b_k(x): the teacher-local generator terms (BN statistics, CE on preset labels, DAFL)."""
    t = out.logits.float()
    loss = torch.zeros((), device=t.device)
    if lc.w_bn > 0 and out.bn_terms:
        loss = loss + lc.w_bn * L.bn_stat_loss(out.bn_terms, lc.bn_first)
    if lc.w_ce_gen > 0 and y is not None:
        loss = loss + lc.w_ce_gen * L.cross_entropy(t, y)
    if lc.w_oh > 0:
        loss = loss + lc.w_oh * L.dafl_onehot(t)
    if lc.w_ie > 0:
        loss = loss + lc.w_ie * L.dafl_info_entropy(t)
    if lc.w_act > 0 and out.pooled is not None:
        loss = loss + lc.w_act * L.dafl_activation(out.pooled.float())
    return loss


def teacher_loss(out: TeacherOutput, s_k: torch.Tensor, y: torch.Tensor | None, lc: LossConfig,
                 num_teachers: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Teacher k's share of the generator loss, [-w_adv D(s_k, t_k) + b_k(x)] / K, with s_k held fixed.

    `out` is the teacher's forward on x with its graph (and BN terms when w_bn > 0); d/dx of this loss is the
    teacher-side input gradient g_k, so it can be taken wherever teacher k lives.
    """
    t = out.logits.float()
    adv = discrepancy(s_k.detach()[None], t[None], lc.adv_loss, lc)
    prior = teacher_prior(out, y, lc)
    return (-lc.w_adv * adv + prior) / num_teachers, {"adv": adv.item(), "prior": prior.item()}


def student_side(s: torch.Tensor, t: torch.Tensor, lc: LossConfig) -> torch.Tensor:
    """The student path of the generator loss: -w_adv (1/K) sum_k D(s_k, t_k) with t held fixed."""
    return -lc.w_adv * discrepancy(pair_heads(s, t.shape[0]), t.detach(), lc.adv_loss, lc)
