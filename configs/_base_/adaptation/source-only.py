# Source-only: no adaptation block beyond the method name (the baseline, and the oracle on target labels).
adaptation = dict(
    type='source-only',
    average_weights=0.0,  # > 0: the delivered model is the equal-weight average of its states over this last fraction
                          # of the budget, batch-norm statistics included (SWA, Izmailov et al. 2018); 0: the last state
)
