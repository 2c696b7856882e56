# Source-only: no adaptation block beyond the method name (the baseline, and the oracle on target labels).
adaptation = dict(type='source-only')
