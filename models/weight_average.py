"""Weight averaging of a training job's delivered network over the last part of its budget (``adaptation.
average_weights``; SWA, Izmailov et al. 2018): the equal-weight mean of its states, batch-norm running statistics
included, kept by torch's ``AveragedModel``. The last state of a run is one draw from wherever the last steps left
it; the mean of the late states sits nearer the middle of the region they visit."""
from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel

from core.errors import ConfigError

#: the key of the average among a method's networks (so checkpoints carry it and a resumed job goes on with it)
WEIGHT_AVERAGE = "weight_average"


def averaging_start(fraction: object, total_iters: int) -> int | None:
    """The first iteration whose state enters the average (``fraction``: the last part of the budget averaged), or
    None when no average is kept (None or 0)."""
    if fraction is None or (not isinstance(fraction, bool) and fraction == 0):
        return None
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ConfigError(f"adaptation.average_weights must be the fraction of the budget (0 < f <= 1) whose last "
                          f"iterations are averaged, or 0 for none, not {fraction!r}", field="model.overrides")
    return total_iters - max(1, int(round(fraction * total_iters)))


def weight_average(network: nn.Module) -> AveragedModel:
    """An empty average of ``network``'s states: parameters and floating buffers (batch-norm statistics)."""
    return AveragedModel(network, use_buffers=True)
