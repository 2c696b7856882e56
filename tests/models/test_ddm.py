"""DDM formulas on small tensors: distinct weights per channel, universal branch by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.ddm import DistinctBranch, DomainDisentangledModule, UniversalBranch, reduced_channels


def test_reduced_width_rule():
    assert [reduced_channels(c) for c in (16, 64, 128, 512, 2048)] == [8, 8, 16, 64, 256]


def test_distinct_weights_sum_to_one_and_rescale_by_hand():
    torch.manual_seed(0)
    br = DistinctBranch(16)
    fs, ft = torch.randn(2, 16, 5, 4), torch.randn(2, 16, 5, 4)
    v_s, v_t = br.weights(fs, ft)
    assert torch.allclose(v_s + v_t, torch.ones_like(v_s), atol=1e-6)
    assert ((v_s > 0) & (v_s < 1)).all()

    # the same weights computed by hand in numpy
    W1, b1 = br.squeeze.weight.detach().numpy(), br.squeeze.bias.detach().numpy()
    Ws, bs = br.excite_s.weight.detach().numpy(), br.excite_s.bias.detach().numpy()
    Wt, bt = br.excite_t.weight.detach().numpy(), br.excite_t.bias.detach().numpy()
    s = (fs + ft).numpy().mean(axis=(2, 3))
    z = s @ W1.T + b1
    a_s, a_t = z @ Ws.T + bs, z @ Wt.T + bt
    hand_vs = np.exp(a_s) / (np.exp(a_s) + np.exp(a_t))
    np.testing.assert_allclose(v_s.detach().numpy(), hand_vs, rtol=1e-5, atol=1e-6)

    gs, gt = br(fs, ft)
    np.testing.assert_allclose(gs.detach().numpy(), fs.numpy() * hand_vs[:, :, None, None], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gt.detach().numpy(), ft.numpy() * (1 - hand_vs)[:, :, None, None], rtol=1e-5,
                               atol=1e-6)


def test_universal_branch_matches_hand_example():
    c = 2
    ub = UniversalBranch(c)
    with torch.no_grad():  # key conv = identity (centre tap), so K = ReLU((F_S + F_T) / 2)
        ub.key.weight.zero_()
        ub.key.bias.zero_()
        for i in range(c):
            ub.key.weight[i, i, 1, 1] = 1.0
    fs = torch.tensor([[[[1.0, 0.0], [2.0, 1.0]], [[0.0, 1.0], [1.0, -1.0]]]])  # (1, 2, 2, 2)
    ft = torch.tensor([[[[0.0, 2.0], [1.0, 1.0]], [[1.0, 0.0], [-1.0, 3.0]]]])

    # by hand: flatten to C x N (N = 4)
    Fs = np.array([[1, 0, 2, 1], [0, 1, 1, -1]], float)
    Ft = np.array([[0, 2, 1, 1], [1, 0, -1, 3]], float)
    K = np.maximum((Fs + Ft) / 2, 0)  # [[.5,1,1.5,1],[.5,.5,0,1]]

    def att(F):
        E = F @ K.T
        E = E.max(axis=1, keepdims=True) - E
        e = np.exp(E - E.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    M = (att(Fs) + att(Ft)) / 2
    # one value checked fully by hand: E_S = Fs K^T = [[4.5, 1.5], [1.5, -0.5]]
    np.testing.assert_allclose(Fs @ K.T, [[4.5, 1.5], [1.5, -0.5]])
    got = ub.shared_map(fs, ft)[0].detach().numpy()
    np.testing.assert_allclose(got, M, rtol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), [1.0, 1.0], rtol=1e-6)

    # U = M F, then each style's own ReLU(conv3x3) projection
    us, ut = ub(fs, ft)
    Us = torch.tensor(M @ Fs, dtype=torch.float32).view(1, c, 2, 2)
    Ut = torch.tensor(M @ Ft, dtype=torch.float32).view(1, c, 2, 2)
    ref_s = torch.relu(torch.nn.functional.conv2d(Us, ub.proj_s.weight, ub.proj_s.bias, padding=1))
    ref_t = torch.relu(torch.nn.functional.conv2d(Ut, ub.proj_t.weight, ub.proj_t.bias, padding=1))
    assert torch.allclose(us, ref_s, atol=1e-6) and torch.allclose(ut, ref_t, atol=1e-6)
    assert us.shape == (1, reduced_channels(c), 2, 2)


def test_module_levels_and_widths():
    torch.manual_seed(0)
    chans = [16, 32, 80, 128]
    ddm = DomainDisentangledModule(chans)
    fs = [torch.randn(2, c, 16 >> i, 16 >> i) for i, c in enumerate(chans)]
    ft = [torch.randn_like(f) for f in fs]
    gs, gt = ddm(fs, ft)
    assert [g.shape[1] for g in gs] == [16, 32, 80, 128 + 16] == ddm.out_channels
    # levels 0-2 are the distinct branch alone: channel rescaling of the input, weights in (0, 1)
    for i in range(3):
        ratio_s, ratio_t = gs[i] / fs[i], gt[i] / ft[i]
        v_s = ratio_s.flatten(2).median(dim=-1).values
        v_t = ratio_t.flatten(2).median(dim=-1).values
        assert torch.allclose(v_s + v_t, torch.ones_like(v_s), atol=1e-4)
    # deepest level: distinct part first, then the universal projection
    v_s, _ = ddm.distinct[3].weights(fs[3], ft[3])
    assert torch.allclose(gs[3][:, :128], fs[3] * v_s[:, :, None, None], atol=1e-6)
    assert (gs[3][:, 128:] >= 0).all()
    with pytest.raises(ValueError):
        ddm(fs[:3], ft[:3])
