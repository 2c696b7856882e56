# SegFormer MiT-B1 with the paper's AdamW/poly schedule; any method (source-only, st-dasegnet, ...).
_base_ = ['./_base_/models/segformer_mit-b1.py', './_base_/schedules/adamw_poly_40k.py']
