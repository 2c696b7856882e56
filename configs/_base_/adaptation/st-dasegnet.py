# ST-DASegNet (Zhao et al., JAG 2024): DDM, two PatchGAN discriminators, EMA decoder teachers.
adaptation = dict(
    type='st-dasegnet',
    ddm=dict(type='DomainDisentangledModule'),
    # n = 2 for SegFormer; DeepLab configs set num_layers=3
    discriminator=dict(type='PatchGANDiscriminator', num_layers=2, base_channels=64, max_channels=512),
    adv_weight=0.005,             # generator and discriminator terms
    self_training_weight=0.25,
    pseudo_threshold=0.975,       # q = fraction of pixels at or above this confidence
    pseudo_rare_threshold=0.8,    # w = q * cw[label] at or above this, else 0.5 * q
    pseudo_class_weight=None,     # cw; None = 1 for every class
    target_class_weight=None,     # CE class weights of D_T; None = the model's (decode_head.loss_decode)
    ema_max_alpha=0.999,
    # options beside the spec (docs/st-dasegnet.md); their values here are the spec's
    ema_horizon=None,             # EMA cap from the budget: 1 - 1 / (ema_horizon x iterations); None: ema_max_alpha
    source_warmup=0.0,            # fraction of the budget trained on the source alone before adapting
    pseudo_quantile=None,         # CBST-style class-wise thresholds (this quantile per class) decide q
    pseudo_prior=None,            # 'em': pseudo-labels moved onto the target's class frequencies, estimated by EM;
                                  # or those frequencies given (one per class, e.g. a label-shift job's target_prior);
                                  # 'label-shift': read before training from the model.checkpoint start, as a
                                  # label-shift job reads them (its check refuses a shift that is not a class mix)
    pseudo_prior_estimation=0.1,  # 'em' estimates over this fraction of the budget from the start of adapting, then
                                  # freezes it
    prior_at_prediction=True,     # with pseudo_prior: the delivered model predicts the target with that class mix
    norm_eval=False,              # batch norm on running statistics (mmseg's norm_eval) in students and teachers once
                                  # adapting starts: frozen at the source model's, per-domain batch statistics unused;
                                  # 'per-domain': frozen at statistics of each domain's own, estimated from the start
                                  # model on params.batches batches of each before training (DSBN, Chang et al.)
    track_domain_statistics=False,  # with norm_eval 'per-domain': batch norm in training mode, each domain's batches
                                  # normalised by their batch statistics and updating that domain's running ones
                                  # (DSBN as trained by Chang et al.) instead of both sets frozen at the estimate
    ddm_start='random',           # 'neutral': the DDM weighs both styles 1/2 at the start, and decoders warm-started
                                  # from a plain segmentor (model.checkpoint) take twice its input weights, so the
                                  # students start as that model; 'random': as built (the spec names no start)
    average_weights=0.0,          # > 0: the delivered students are the equal-weight average of their states over this
                                  # last fraction of the budget, batch-norm statistics included (SWA, Izmailov et al.
                                  # 2018; models/weight_average.py); 0: the last state
    teacher_init='copy',          # 'copy' (ours, documented deviation) or 'random' (reference code)
)
