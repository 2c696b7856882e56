"""Multi-label MRF by alpha-expansion on graph cuts (PyMaxflow): unary costs + contrast-weighted Potts.

    E(f) = sum_p U_p(f_p) + sum_{(p,q) 4-neighbours} w_pq [f_p != f_q]

    alpha_expansion(U, w_right, w_down):
      f <- argmin_k U_p(k)
      repeat (at most ``cycles`` times, until a whole cycle lowers E by nothing):
        for each label a: one binary cut over "keep f_p" (0) / "switch to a" (1), built as below;
          keep the result when it lowers E
    For two labels one expansion is the exact global minimum (a single min cut); for more it is
    Boykov, Veksler & Zabih's expansion move, within a factor 2 of the optimum for Potts.

One expansion move as a cut (x_p = 1: sink side = takes label a). A pair term with
E00 = w [f_p != f_q], E01 = w [f_p != a], E10 = w [a != f_q], E11 = 0 is submodular for Potts and
splits exactly into: E00 constant, (E10 - E00) on x_p = 1, (E11 - E10) on x_q = 1, and an edge p -> q
of capacity E01 + E10 - E00 - E11 >= 0 cut when x_p = 0, x_q = 1.
"""
from __future__ import annotations

import numpy as np


def potts_energy(labels: np.ndarray, unary: np.ndarray, w_right: np.ndarray, w_down: np.ndarray) -> float:
    """E(f): unary (K, H, W) at the labels plus the Potts weights of neighbours with different labels."""
    u = np.take_along_axis(unary, labels[None].astype(np.intp), axis=0)[0].sum()
    pr = (w_right[:, :-1] * (labels[:, :-1] != labels[:, 1:])).sum()
    pd = (w_down[:-1, :] * (labels[:-1, :] != labels[1:, :])).sum()
    return float(u + pr + pd)


def _expand(labels: np.ndarray, alpha: int, unary: np.ndarray, w_right: np.ndarray, w_down: np.ndarray,
            movable: np.ndarray) -> np.ndarray:
    """The best expansion of ``alpha`` from ``labels`` (one min cut); pixels not ``movable`` keep theirs."""
    import maxflow

    h, w = labels.shape
    cost0 = np.take_along_axis(unary, labels[None].astype(np.intp), axis=0)[0].astype(np.float64)
    cost1 = unary[alpha].astype(np.float64).copy()
    cost1[~movable] = np.inf  # never cut: the source capacity below is infinite
    cost1[labels == alpha] = cost0[labels == alpha]  # already alpha: both choices are the same
    g = maxflow.Graph[float]()
    ids = g.add_grid_nodes((h, w))
    edge_right = np.zeros((h, w))
    edge_down = np.zeros((h, w))
    for axis, wts, edge in ((1, w_right, edge_right), (0, w_down, edge_down)):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        fp, fq = labels[tuple(a)], labels[tuple(b)]
        wt = wts[tuple(a)].astype(np.float64)
        e00 = wt * (fp != fq)
        e01 = wt * (fp != alpha)
        e10 = wt * (fq != alpha)
        # constants E00 drop out; unary parts on x_p = 1 and x_q = 1, the rest on the edge p -> q
        cost1[tuple(a)] += e10 - e00
        cost1[tuple(b)] -= e10
        edge[tuple(a)] = e01 + e10 - e00
    # unaries as terminal capacities: x = 1 costs the source capacity, x = 0 the sink capacity
    low = np.minimum(cost0, np.where(np.isfinite(cost1), cost1, cost0))
    src = np.where(np.isfinite(cost1), cost1 - low, 1e30)
    snk = cost0 - low
    g.add_grid_tedges(ids, src, snk)
    right = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 0]])
    down = np.array([[0, 0, 0], [0, 0, 0], [0, 1, 0]])
    g.add_grid_edges(ids, weights=np.maximum(edge_right, 0.0), structure=right, symmetric=False)
    g.add_grid_edges(ids, weights=np.maximum(edge_down, 0.0), structure=down, symmetric=False)
    g.maxflow()
    switch = g.get_grid_segments(ids)
    out = labels.copy()
    out[switch & movable] = alpha
    return out


def alpha_expansion(unary: np.ndarray, w_right: np.ndarray, w_down: np.ndarray, *,
                    labels: np.ndarray | None = None, movable: np.ndarray | None = None, cycles: int = 5,
                    candidates: list[int] | None = None) -> tuple[np.ndarray, dict]:
    """Minimise E(f) (see the module docstring) from ``labels`` (default: the unary argmin).

    ``unary`` (K, H, W); ``w_right`` (H, W): weight between p and its right neighbour (last column
    unused); ``w_down`` likewise downwards. ``movable``: pixels whose label may change (others keep
    theirs and still pull on their neighbours). ``candidates``: labels tried (default: all K).
    Returns (labels (H, W) int, {"energy_start", "energy", "cycles", "moves"}).
    """
    k, h, w = unary.shape
    f = unary.argmin(axis=0).astype(np.int32) if labels is None else labels.astype(np.int32).copy()
    movable = np.ones((h, w), bool) if movable is None else movable
    e = e0 = potts_energy(f, unary, w_right, w_down)
    moves = 0
    done = 0
    for done in range(1, cycles + 1):
        improved = False
        for alpha in candidates if candidates is not None else range(k):
            g = _expand(f, alpha, unary, w_right, w_down, movable)
            e_new = potts_energy(g, unary, w_right, w_down)
            if e_new < e - 1e-9 * max(1.0, abs(e)):
                f, e, improved = g, e_new, True
                moves += 1
        if not improved:
            break
    return f, {"energy_start": e0, "energy": e, "cycles": done, "moves": moves}
