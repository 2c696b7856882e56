# CroCo, cross-view completion (Weinzaepfel et al., NeurIPS 2022), on co-registered pairs: source and target
# windows over the same ground (as feature regression pairs them). Most patches of view 1 (source) are masked
# and reconstructed from its visible patches plus view 2 (target), unmasked: one encoder for both, a decoder whose
# blocks self-attend over view 1's tokens and cross-attend to view 2's. With a CNN/mmseg encoder the mask zeroes
# patches of the input, and tokens come from every backbone level pooled onto the patch grid.
pretraining = dict(
    type='croco',
    mask_ratio=0.9,               # share of view 1's patches masked (the paper: 0.9)
    patch=8,                      # side of a patch, pixels (the crop must be a multiple)
    dim=128,                      # decoder width
    depth=2,                      # decoder blocks (self-attention, cross-attention to view 2, MLP)
    heads=4,
    min_valid=0.5,                # a masked patch counts when this share of its pixels is valid
    swap=True,                    # at random, view 1 is the target window and view 2 the source one
    flip=True, rotate=True,       # the same random flip / 90-degree rotation of both views (they stay registered)
    photometric=dict(brightness=0.2, contrast=(0.8, 1.2), blur_p=0.0, blur_sigma=(0.1, 1.0), noise=0.05),
    optim=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05, norm_decay=False),
    lr_schedule=dict(power=1.0, min_lr=0.0, warmup_iters=50, warmup_ratio=1e-3),  # warm-up: at most a tenth of the run
)
