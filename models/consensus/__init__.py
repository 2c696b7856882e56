"""Consensus labels from several annotators: self-consistency scores, filled missing annotations, and a
second-order MRF solved by graph cuts. `consensus.consensus_labels` on arrays; `run.run_consensus` on files.
(Nothing is imported here: the submodules import each other, and a package that imports them back would
make a cycle.)"""
