"""geoadapt service: FastAPI app, job store, auth, tiles and the command-line interface.

Never imports torch, mmseg, models or workers at module import time: the API must start fast on a
CPU box. Commands that run models locally import them inside the command.
"""
