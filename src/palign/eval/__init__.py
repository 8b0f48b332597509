"""Evaluation layer: metrics, reference predictors, runs and reports."""

from palign.eval.baselines import PREDICTORS, run_baselines
from palign.eval.metrics import PersonScore, Report, evaluate, score_person

__all__ = ["PREDICTORS", "PersonScore", "Report", "evaluate", "run_baselines", "score_person"]
