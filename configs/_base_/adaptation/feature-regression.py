# Feature-regression transfer (Benbihi et al., arXiv 1805.04141): the student's features on target
# windows regress onto the frozen source-trained teacher's features on the same ground.
adaptation = dict(
    type='feature-regression',
    levels=None,                  # backbone levels (indices) to regress; None = every pyramid level
    level_weights=None,           # one weight per chosen level; None = equal weights summing to 1
    loss='mse',                   # 'mse' or 'l1', on features
    normalize=True,               # per-channel normalisation by the teacher's batch statistics
    trainable=['backbone'],       # any of 'backbone', 'neck', 'decode_head'; the rest stays frozen
    min_valid=0.99,               # a feature cell counts when this fraction of its pixels is valid
    average_weights=0.0,          # > 0: the delivered model averaged over this last fraction of the budget (SWA;
                                  # models/weight_average.py)
    # misregistration tolerance: 'none'; 'shift' = min over shifts of +-radius feature cells
    # (per window and level); 'pool' = both features average-pooled over (2*radius+1)^2 cells
    tolerance=dict(type='none', radius=1),
    # merged over the config's optim / lr_schedule: the student starts from a trained teacher, so
    # a smaller lr than training from scratch and no warm-up
    optim=dict(lr=1e-4),
    lr_schedule=dict(warmup_iters=0),
)
