"""Utilities (objectives): a registry of configurable scorers (registry.py) that follow one protocol
(protocol.py: a scorer plus optional predictions, ensembles and finalize)."""
from .protocol import (Answers, ClassScores, Ensembling, Finalizing, Predicting, Predictions, Responses,
                       TaskPredictions, Utility, as_utility)
from .registry import (UTILITIES, BuiltUtility, ScoreFn, UtilityConfig, build_utility,
                       parse_utility_config, register_utility)

__all__ = ["UTILITIES", "BuiltUtility", "ScoreFn", "UtilityConfig", "build_utility",
           "parse_utility_config", "register_utility", "Utility", "Predicting", "Ensembling", "Finalizing",
           "Predictions", "ClassScores", "Answers", "Responses", "TaskPredictions", "as_utility"]
