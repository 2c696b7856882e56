# SegFormer MiT-B3 with the paper's AdamW/poly schedule; any method (source-only, st-dasegnet, ...).
_base_ = ['./_base_/models/segformer_mit-b3.py', './_base_/schedules/adamw_poly_40k.py']
