"""Formula-level checks against ../shared/docs/algorithms.md, each value worked out here, not with cdkd's helpers.

Issue 21, item 4: the BN prior (spec 0.2), KL / L1 reductions (0.2, 2.3), attention transfer (1.2), the
learning rate the optimisers really get at every preset's milestones (2.4, 3.2, 4.2), and `fast_bf16`.
"""
import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cdkd import engine, losses as L
from cdkd.config import METHODS, LossConfig, make_config
from cdkd.objectives import teacher_prior
from cdkd.teacher_pool import fast_bf16
from cdkd.teachers.base import LastLinearOutputs, Loaded, Teacher


class TwoBN(nn.Module):
    """conv -> BN -> relu -> conv -> BN -> mean pool -> linear, with hand-set running statistics."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1, self.b1 = nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2)
        self.c2, self.b2 = nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 4)
        with torch.no_grad():
            self.c1.weight.copy_(torch.randn(self.c1.weight.shape, generator=g))
            self.c2.weight.copy_(torch.randn(self.c2.weight.shape, generator=g) * 0.5)
            self.b1.running_mean.copy_(torch.tensor([0.5, -0.3]))
            self.b1.running_var.copy_(torch.tensor([2.0, 0.7]))
            self.b1.weight.copy_(torch.tensor([1.5, 0.8]))
            self.b1.bias.copy_(torch.tensor([0.1, -0.2]))
            self.b2.running_mean.copy_(torch.tensor([0.2, 0.0, -0.4]))
            self.b2.running_var.copy_(torch.tensor([1.0, 3.0, 0.5]))
            self.b2.weight.copy_(torch.tensor([2.0, 0.5, 1.0]))
            self.b2.bias.copy_(torch.tensor([0.3, 0.0, -0.1]))

    def forward(self, x):
        h = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return self.fc(h.mean((2, 3)))


def reference_prior(net: TwoBN, x: torch.Tensor) -> dict[str, float]:
    """Spec 0.2 by hand in float64, with the alternatives a wrong hook would compute."""
    d = {k: v.detach().double() for k, v in net.state_dict().items()}

    def moments(a, unbiased=False):
        n = a.shape[0] * a.shape[2] * a.shape[3]
        m = a.sum((0, 2, 3)) / n
        return ((a - m.view(1, -1, 1, 1)) ** 2).sum((0, 2, 3)) / (n - 1 if unbiased else n), m

    def r(a, bn, unbiased=False, squared=False):
        v, m = moments(a, unbiased)
        dv, dm = ((v - d[f"{bn}.running_var"]) ** 2).sum(), ((m - d[f"{bn}.running_mean"]) ** 2).sum()
        return float(dv + dm) if squared else float(dv.sqrt() + dm.sqrt())

    def bn_eval(a, bn):  # eval-mode BN: running statistics, eps 1e-5
        sh = (1, -1, 1, 1)
        return ((a - d[f"{bn}.running_mean"].view(sh)) / (d[f"{bn}.running_var"].view(sh) + 1e-5).sqrt()
                * d[f"{bn}.weight"].view(sh) + d[f"{bn}.bias"].view(sh))

    a1 = F.conv2d(x.double(), d["c1.weight"], padding=1)    # the BN inputs, computed directly
    o1 = bn_eval(a1, "b1")
    a2 = F.conv2d(o1.clamp_min(0), d["c2.weight"], padding=1)
    o2 = bn_eval(a2, "b2")
    return {"correct": 5 * r(a1, "b1") + r(a2, "b2"),
            "bn_outputs": 5 * r(o1, "b1") + r(o2, "b2"),
            "unbiased_var": 5 * r(a1, "b1", unbiased=True) + r(a2, "b2", unbiased=True),
            "squared_norms": 5 * r(a1, "b1", squared=True) + r(a2, "b2", squared=True),
            "rho_on_last": r(a1, "b1") + 5 * r(a2, "b2")}


def test_bn_prior_through_the_teacher_hook():
    """The generator's prior b_k(x) from a real Teacher's BN hooks equals spec 0.2 on the BN *inputs*: biased
    variance over (B,H,W), plain L2 norms, rho 5 on the first BN layer; the wrong readings differ."""
    net = TwoBN()
    teacher = Teacher(Loaded(LastLinearOutputs(net)), "two_bn", "test")
    x = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(1))  # n = 18: biased != unbiased
    out = teacher(x, bn_stats=True)
    got = teacher_prior(out, None, LossConfig(w_bn=1.0)).item()  # what the generator step adds (default rho)
    ref = reference_prior(net, x)
    assert len(out.bn_terms) == 2
    assert got == pytest.approx(ref["correct"], rel=1e-5, abs=1e-6)
    for wrong in ("bn_outputs", "unbiased_var", "squared_norms", "rho_on_last"):  # the test can tell them apart
        assert abs(ref[wrong] - ref["correct"]) > 1e-2 * ref["correct"], wrong


def softmax(row, tau):
    e = [math.exp(v / tau) for v in row]
    return [v / sum(e) for v in e]


def kl_rows(t_rows, s_rows, tau):
    """Sum over classes of p_t (log p_t - log p_s), one number per row."""
    out = []
    for t, s in zip(t_rows, s_rows):
        pt, ps = softmax(t, tau), softmax(s, tau)
        out.append(sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps)))
    return out


T2 = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
S2 = [[0.5, 0.5, 0.0], [1.0, 0.0, 1.0]]


def test_kl_is_batch_mean_with_tau_squared():
    """(B,C): tau^2 (1/B) sum_b sum_c; (K,B,C): also the mean over K; dense (B,C,H,W): the mean over pixels."""
    tau = 2.0
    got = L.kl_div(torch.tensor(T2), torch.tensor(S2), tau).item()
    assert got == pytest.approx(tau ** 2 * sum(kl_rows(T2, S2, tau)) / 2, rel=1e-6)
    t3, s3 = [T2, [[0.0, 0.0, 4.0], [2.0, 1.0, 0.0]]], [S2, [[1.0, 1.0, 1.0], [0.0, 0.0, 3.0]]]
    per_k = [sum(kl_rows(t, s, 1.0)) / 2 for t, s in zip(t3, s3)]
    assert L.kl_div(torch.tensor(t3), torch.tensor(s3)).item() == pytest.approx(sum(per_k) / 2, rel=1e-6)
    # dense: B=1, C=3, H=1, W=2 -> two pixels; pixel (0, w) has class logits T2[w]
    t4, s4 = (torch.tensor(v).T.reshape(1, 3, 1, 2) for v in (T2, S2))
    assert L.kl_div(t4, s4).item() == pytest.approx(sum(kl_rows(T2, S2, 1.0)) / 2, rel=1e-6)


def test_l1_is_the_mean_absolute_difference():
    """header_l1 = (1/(K B C)) sum |s - t|; ensemble_l1 = (1/(B C)) sum |mean_k s - mean_k t| (spec 0.2, 2.3)."""
    s = [[[1.0, -2.0, 0.0], [3.0, 1.0, 1.0]], [[0.0, 0.0, 2.0], [-1.0, 4.0, 0.5]]]
    t = [[[0.0, 1.0, 0.0], [1.0, 1.0, -1.0]], [[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]
    k, b, c = 2, 2, 3
    header = sum(abs(s[i][j][m] - t[i][j][m]) for i in range(k) for j in range(b) for m in range(c)) / (k * b * c)
    ens = sum(abs((s[0][j][m] + s[1][j][m]) / 2 - (t[0][j][m] + t[1][j][m]) / 2)
              for j in range(b) for m in range(c)) / (b * c)
    assert header != pytest.approx(ens)  # two different reductions of the same tensors
    assert L.header_l1(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(header, rel=1e-6)
    assert L.ensemble_l1(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(ens, rel=1e-6)


def test_attention_map_and_transfer():
    """a(A) = l2-normalise(flatten(mean_c A_c^2)) per sample; AT = sum_j mean((a_s - a_t)^2) (spec 1.2)."""
    a = torch.tensor([[[[1.0, 2.0], [3.0, 0.0]], [[1.0, 0.0], [1.0, 2.0]]],     # mean_c A^2 = [1, 2, 5, 2]
                      [[[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]]])    # mean_c A^2 = [2, 0, 0, 2]
    want_s = [[v / math.sqrt(34) for v in (1, 2, 5, 2)], [v / math.sqrt(8) for v in (2, 0, 0, 2)]]
    got = L.attention_map(a)
    assert got.shape == (2, 4) and got.flatten().tolist() == pytest.approx(sum(want_s, []), rel=1e-6)
    t = torch.tensor([[[[0.0, 0.0], [0.0, 3.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])  # C=1: maps [0,0,0,1], [.5]*4
    want_t = [[0.0, 0.0, 0.0, 1.0], [0.5] * 4]
    assert L.attention_map(t).flatten().tolist() == pytest.approx(sum(want_t, []), rel=1e-6)
    sq = [(want_s[b][i] - want_t[b][i]) ** 2 for b in range(2) for i in range(4)]
    stage1 = sum(sq) / 8
    # stage 2: the student map against itself scaled (normalisation makes it identical): contributes 0
    at = L.attention_transfer([got, L.attention_map(2 * a)], [L.attention_map(t), L.attention_map(a)])
    assert at.item() == pytest.approx(stage1, rel=1e-6)
    at2 = L.attention_transfer([got, got], [L.attention_map(t), L.attention_map(t)])
    assert at2.item() == pytest.approx(2 * stage1, rel=1e-6)  # summed over stages, not averaged


# Paper values (spec 2.4, 3.2, 4.2, 5.2): student SGD lr 0.1 (momentum 0.9, wd 5e-4), generator Adam lr 1e-3;
# MAD on its ABM base (spec 1.2): student Adam lr 2e-3, no weight decay. (mad_dfad keeps the shared SGD, a
# documented departure.)
STUDENT_LR, GENERATOR_LR = 0.1, 1e-3
SPEC_STUDENT_ADAM_LR = {"mad": 2e-3}
SPEC_SCHEDULE = {"cdfkd_mfs": "multistep", "ddad": "multistep", "mad": "cosine", "mad_dfad": "cosine"}  # cgdd: none


def lr_per_iteration(cfg):
    """Build optimisers and schedulers as the engine does; the lr each iteration 0..n really runs with."""
    opt_s, opt_g = engine.make_optimizers(cfg, nn.Linear(2, 2), nn.Linear(2, 2))
    sched_s, sched_g = engine.build_scheduler(opt_s, cfg), engine.build_scheduler(opt_g, cfg)
    lrs = []
    for _ in range(cfg.train.iterations + 1):
        lrs.append((opt_s.param_groups[0]["lr"], opt_g.param_groups[0]["lr"]))
        for opt, sched in ((opt_s, sched_s), (opt_g, sched_g)):
            opt.step()
            sched.step()  # once per iteration, as Distiller.train_iteration
    return opt_s, opt_g, lrs


@pytest.mark.parametrize("method", METHODS)
def test_learning_rate_at_each_milestone(method):
    """The lr read from the optimisers before/after each multistep milestone (x0.1 each), or on the cosine."""
    n = 300
    cfg = make_config({"method": method}, [f"--train.iterations={n}"])
    assert cfg.optim.schedule == SPEC_SCHEDULE.get(method, cfg.optim.schedule)
    opt_s, opt_g, lrs = lr_per_iteration(cfg)
    assert isinstance(opt_g, torch.optim.Adam)
    if method in SPEC_STUDENT_ADAM_LR:
        assert type(opt_s) is torch.optim.Adam and opt_s.param_groups[0]["weight_decay"] == 0.0
        lrs = [(s * STUDENT_LR / SPEC_STUDENT_ADAM_LR[method], g) for s, g in lrs]  # in units of the SGD rate below
    else:
        assert isinstance(opt_s, torch.optim.SGD)
        assert opt_s.param_groups[0]["momentum"] == 0.9 and opt_s.param_groups[0]["weight_decay"] == 5e-4
    if cfg.optim.schedule == "multistep":
        ms = [f * n for f in cfg.optim.milestones]
        assert all(abs(m - round(m)) < 1e-6 for m in ms)  # n chosen so that the fractions land on iterations
        for i, m in enumerate(round(m) for m in ms):
            before, after = lrs[m - 1], lrs[m]
            assert before == pytest.approx((STUDENT_LR * 0.1 ** i, GENERATOR_LR * 0.1 ** i), rel=1e-9)
            assert after == pytest.approx((STUDENT_LR * 0.1 ** (i + 1), GENERATOR_LR * 0.1 ** (i + 1)), rel=1e-9)
        assert lrs[-1] == pytest.approx((STUDENT_LR * 0.1 ** len(ms), GENERATOR_LR * 0.1 ** len(ms)), rel=1e-9)
    else:
        assert cfg.optim.schedule == "cosine"
        for it in (0, 1, n // 4, n // 2, 3 * n // 4, n - 1, n):
            f = 0.5 * (1 + math.cos(math.pi * it / n))
            assert lrs[it] == pytest.approx((STUDENT_LR * f, GENERATOR_LR * f), rel=1e-9, abs=1e-15), it
        assert lrs[n // 2] == pytest.approx((STUDENT_LR / 2, GENERATOR_LR / 2))  # half way: half the rate


def drops(lrs):
    return [it for it in range(1, len(lrs)) if lrs[it][0] < lrs[it - 1][0] * 0.5]


def test_cdfkd_mfs_drops_where_the_paper_does():
    """Spec 2.4: x0.1 after epochs 100 and 200 of 300 -> iterations 100 and 200 of a 300-iteration run."""
    cfg = make_config({"method": "cdfkd_mfs"}, ["--train.iterations=300"])
    assert drops(lr_per_iteration(cfg)[2]) == [100, 200]


def test_ddad_drops_where_dfad_does():
    """Spec 3.2 (DFAD): x0.1 at epochs 100 and 200 of 500 -> iterations 100 and 200 of 500."""
    cfg = make_config({"method": "ddad"}, ["--train.iterations=500"])
    assert drops(lr_per_iteration(cfg)[2]) == [100, 200]


def test_milestones_survive_float_error():
    """0.29 * 100 is 28.999999999999996 in floats: the drop is still at iteration 29 (and 58), not one early."""
    cfg = make_config({}, ["--train.iterations=100", "--optim.schedule=multistep", "--optim.milestones=[0.29, 0.58]"])
    assert drops(lr_per_iteration(cfg)[2]) == [29, 58]


def test_fast_bf16_follows_what_the_device_reports(monkeypatch):
    """CUDA: native bf16 as torch.cuda.is_bf16_supported reports it (emulation is not fast); CPU: AMX tiles, or
    avx512_bf16 on an AMD CPU (Intel's avx512_bf16 without AMX measured slower than fp32)."""
    from cdkd import teacher_pool
    for amx, avx512_bf16, vendor, fast in ((True, False, "GenuineIntel", True), (False, True, "GenuineIntel", False),
                                           (False, True, "AuthenticAMD", True), (False, False, "AuthenticAMD", False)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(teacher_pool, "cpu_vendor", lambda vendor=vendor: vendor)
        state = torch.get_rng_state()
        assert fast_bf16(torch.device("cpu")) is fast
        assert torch.equal(torch.get_rng_state(), state)  # deciding draws no random numbers (DDP ranks stay aligned)
    monkeypatch.undo()
    want = ""  # the real reading: /proc/cpuinfo's vendor_id where Linux has one
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            want = next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    assert teacher_pool.cpu_vendor() == want
    asked = []
    for native in (True, False):
        def supported(including_emulation=True, native=native):
            asked.append(including_emulation)
            return native
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
        assert fast_bf16(torch.device("cuda")) is native
    assert asked == [False, False]

    def broken(including_emulation=True):
        raise RuntimeError("no CUDA driver")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", broken)
    assert fast_bf16(torch.device("cuda")) is False


def test_amp_auto_follows_fast_bf16(monkeypatch):
    """train.amp=auto (the default): bf16 where bf16 convolutions are fast, fp32 elsewhere; explicit values stay."""
    from cdkd import trainer
    from cdkd.config import make_config
    for fast, amp, scope in ((True, "bf16", "all"), (False, "none", "generator")):
        monkeypatch.setattr(trainer, "fast_bf16", lambda device, fast=fast: fast)
        cfg = trainer.resolve_auto(make_config({}, ["--train.amp_scope=auto"]), torch.device("cpu"))
        assert (cfg.train.amp, cfg.train.amp_scope) == (amp, scope)
        assert trainer.resolve_auto(make_config({}, ["--train.amp=bf16"]), torch.device("cpu")).train.amp == "bf16"
        assert ("fp32" in trainer.precision_line(cfg, torch.device("cpu"))) is not fast


def test_a_local_demo_worker_gets_the_machines_cores(monkeypatch):
    """On a one-node cluster of this machine's cores, Ray Train workers with in-worker teachers share the cores."""
    pytest.importorskip("ray")
    from cdkd.config import make_config
    from cdkd.distributed.job import worker_threads
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    node = {"Alive": True, "Resources": {"CPU": 8.0}}
    cfg = make_config({}, ["--distributed.workers=2"])
    assert worker_threads(1, cfg, [node]) == 4
    assert worker_threads(1, cfg, [node, node]) == 1                                   # a real cluster: as asked
    assert worker_threads(1, cfg, [{"Alive": True, "Resources": {"CPU": 4.0}}]) == 1   # not this machine's cores
    assert worker_threads(1, make_config({}, ["--distributed.teacher_pool=ray"]), [node]) == 1  # actors need cores
