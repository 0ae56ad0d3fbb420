"""Training losses: classification (``classification``), feature (``feature``), the OLTR
discriminative-centroid loss (``centroid``) and a stage's whole objective (``stage``)."""
from facelt.losses.centroid import DiscCentroidLoss, reference_attract
from facelt.losses.classification import (CrossEntropy, FocalLoss, ShiftedCrossEntropy,
                                          balanced_softmax_loss, build_loss, log_prior,
                                          logit_adjusted_loss)
from facelt.losses.feature import LiftedStructuredLoss, RangeLoss, build_aux_loss, pairwise_squared
from facelt.losses.stage import StageLoss, build_stage_loss

__all__ = ["DiscCentroidLoss", "CrossEntropy", "FocalLoss", "ShiftedCrossEntropy",
           "balanced_softmax_loss", "build_loss", "log_prior", "logit_adjusted_loss",
           "LiftedStructuredLoss", "RangeLoss", "build_aux_loss", "pairwise_squared",
           "StageLoss", "build_stage_loss", "reference_attract"]
