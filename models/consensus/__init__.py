"""Consensus labels from several annotators: self-consistency scores, filled missing annotations, and a
second-order MRF solved by graph cuts (see models.consensus.consensus)."""
from models.consensus.consensus import AnnotatorScore, ConsensusOptions, ConsensusResult, consensus_labels
from models.consensus.run import ConsensusOutputs, run_consensus

__all__ = ["AnnotatorScore", "ConsensusOptions", "ConsensusOutputs", "ConsensusResult", "consensus_labels",
           "run_consensus"]
