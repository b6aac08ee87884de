"""The generator step written as teacher-side + student-side input gradients (spec 7.2) equals plain autograd."""
import pytest
import torch

from cdkd import engine, losses as L
from cdkd.config import make_config
from cdkd.objectives import student_side
from cdkd.trainer import build
from tests.conftest import tiny_config


def reference_grads(d, x_fn, lc):
    """Plain autograd on the full generator loss L_G = -w_adv D(s, t) + sum_k b_k / K, nothing split."""
    x, y = x_fn()
    s = d.student(x)
    s = s.expand(len(d.teachers), *s.shape[1:]) if s.shape[0] == 1 else s
    outs = [t(x, bn_stats=True) for t in d.teachers]
    t = torch.stack([o.logits for o in outs])
    adv = L.header_l1(s, t) if lc.adv_loss == "l1" else L.kl_div(t, s, lc.temperature, lc.kl_reduction)
    prior = sum(lc.w_bn * L.bn_stat_loss(o.bn_terms, lc.bn_first)
                + (lc.w_ce_gen * L.cross_entropy(o.logits, y) if y is not None else 0.0) for o in outs)
    loss = -lc.w_adv * adv + prior / len(outs)
    d.generator.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in d.generator.parameters()]


def split_vs_reference(d, lc, n: int) -> tuple[float, float]:
    """One generator step split (spec 7.2) and by plain autograd on the same z: (max |difference|, max |grad|)."""
    d.train()
    rng = torch.get_rng_state()
    ref = reference_grads(d, lambda: d.sample(d.generator, n), lc)
    torch.set_rng_state(rng)  # the same z (and labels) for the split step
    d.opt_g.step = lambda *a, **k: None  # keep the gradients, skip the update
    d.generator_step()
    split = [p.grad for p in d.generator.parameters()]
    return max((a - b).abs().max().item() for a, b in zip(ref, split)), max(g.abs().max().item() for g in split)


@pytest.mark.parametrize("method,student", [("cdfkd_mfs", "mfs_lenet5_half"), ("cgdd", "mfs_lenet5_half"),
                                            ("mad", "lenet5_half"), ("mad_dfad", "lenet5_half"),
                                            ("ddad", "mh_lenet5_half")])
def test_split_equals_autograd(teacher_paths, method, student):
    cfg = make_config(tiny_config(teacher_paths, method=method, model={"student": student}))
    d = build(cfg, with_data=False).distiller
    d.train()
    rng = torch.get_rng_state()
    ref = reference_grads(d, lambda: d.sample(d.generator, 16), cfg.loss)
    torch.set_rng_state(rng)  # the same z (and labels) for the split step
    before = [p.detach().clone() for p in d.generator.parameters()]
    d.opt_g.step = lambda *a, **k: None  # keep the gradients, skip the update
    d.generator_step()
    split = [p.grad for p in d.generator.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, d.generator.parameters()))
    diff = max((a - b).abs().max().item() for a, b in zip(ref, split))
    assert diff <= 1e-5, diff
    assert max(g.abs().max().item() for g in split) > 1e-4  # the comparison is not between zeros


@pytest.mark.parametrize("batched", [False, True])
def test_iteration_sends_teacher_work_before_it_collects_answers(teacher_paths, monkeypatch, batched):
    """What lets a remote pool overlap the engine: every student batch and the generator step's input reach the
    pool before the first answer is collected, and the teachers' backward is sent before the student side."""
    cfg = make_config(tiny_config(teacher_paths, train={"student_steps": 3, "batched_targets": batched}))
    d = build(cfg, with_data=False).distiller
    pool, events = d.pool, []
    targets, targets_of = pool.targets, pool.targets_of
    generator_side, student_step = pool.generator_side, d.student_step

    def logged(name, pending):
        wait = pending.result
        pending.result = lambda: events.append(f"collect {name}") or wait()
        return pending

    def generator_side_logged(x, y, spec=None):
        events.append("send generator forward")
        step = generator_side(x, y, spec)
        backward = step.backward
        step.backward = lambda s: events.append("send backward") or logged("backward", backward(s))
        return step

    pool.targets = lambda x: events.append("send targets") or logged("targets", targets(x))
    pool.targets_of = lambda xs: events.append(f"send targets x{len(xs)}") or [logged("targets", p)
                                                                               for p in targets_of(xs)]
    pool.generator_side = generator_side_logged
    d.student_step = lambda *a: events.append("student step") or student_step(*a)
    monkeypatch.setattr(engine, "student_side", lambda *a: events.append("student side") or student_side(*a))
    d.train_iteration()
    sends = ["send targets x3"] if batched else ["send targets"] * 3
    assert events == (sends + ["send generator forward"] + ["collect targets", "student step"] * 3
                      + ["send backward", "student side", "collect backward"])
