"""The awr plugin keeps modzoo's contract, and its weights are IQL's."""
import torch
from modzoo_awr.plugin import awr_weights

from modzoo.testing import check_plugin


def test_awr_passes_modzoo_conformance(tmp_path):
    check_plugin("awr", workdir=tmp_path)


def test_weights_are_clipped_exponentiated_advantages():
    q, v = torch.tensor([1.0, 0.0, 5.0]), torch.tensor([0.0, 0.5, 0.0])
    w = awr_weights(q, v, beta=3.0, w_max=100.0)
    torch.testing.assert_close(w, torch.tensor([torch.e ** 3, torch.e ** -1.5, 100.0]))
