"""Pipelines the workers (and the local CLI) call: one function per job type, reporting through callbacks."""
