# Semi-supervised correction (after SemiMedSeg, Zhang et al. 2021): segmentation + inpainting decoders on
# one encoder, per-class masking of the predicted regions, gated feature fusion (models/adaptation/semi.py).
adaptation = dict(
    type='semi',
    phase1=0.25,                  # share of the budget trained on segmentation alone (coarse maps first)
    target_weight=1.0,            # CE weight of the labelled target windows (source crops: 1)
    fine_weight=1.0,              # weight of the fine (fused) CE on labelled target windows, times target_weight
    inpaint_weight=0.5,           # L1 inpainting loss on unlabelled target windows (reference: 2 L_l + L_u)
    max_mask_fraction=0.5,        # classes masked per window while their predicted share stays under this
    fusion_kernel=3,              # GFF gate convolutions (k x k)
    mask_seed=0,                  # the generator that picks the masked classes
    labelled_batch_size=None,     # labelled target crops per batch; None: the job's batch size
    inpaint_batch_size=None,      # unlabelled target crops inpainted per batch; None: the job's batch size
    average_weights=0.0,          # > 0: the delivered model averaged over this last fraction of the budget (SWA;
                                  # models/weight_average.py)
    min_labelled=0.5,             # a labelled target crop holds at least this share of labelled pixels
                                  # (half the best crop's share where the labels are smaller than that allows)
)
