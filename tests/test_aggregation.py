import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from cdkd.aggregation import AttentionAggregator, fit_aggregator


class TwoHeaders(nn.Module):
    """Header A: right, small margin. Header B: wrong, its logits shifted by +10 so the mean follows B."""

    def forward(self, x):
        y = x[:, 0].long()
        a = torch.nn.functional.one_hot(y, 4).float() * 3
        b = torch.nn.functional.one_hot((y + 1) % 4, 4).float() * 4 + 10
        return torch.stack([a, b])


def test_attention_learns_to_trust_the_right_header():
    y = torch.arange(200) % 4
    data = TensorDataset(y.float().view(-1, 1), y)
    agg, info = fit_aggregator(TwoHeaders(), data, num_samples=200, num_classes=4, epochs=60, lr=0.05)
    assert info["mean_val_acc"] == 0.0
    assert info["agg_val_acc"] == 1.0
    s = TwoHeaders()(y.float().view(-1, 1))
    assert (agg(s).argmax(-1) == y).float().mean().item() == 1.0


def test_aggregator_is_a_convex_combination():
    agg = AttentionAggregator(3)
    s = torch.randn(2, 5, 3)
    out = agg(s)
    lo, hi = s.min(0).values, s.max(0).values
    assert out.shape == (5, 3) and torch.all(out >= lo - 1e-6) and torch.all(out <= hi + 1e-6)
