"""Utilities (objectives): a registry of configurable scorers; see registry.py."""
from .registry import (UTILITIES, BuiltUtility, ScoreFn, UtilityConfig, build_utility,
                       parse_utility_config, register_utility)

__all__ = ["UTILITIES", "BuiltUtility", "ScoreFn", "UtilityConfig", "build_utility",
           "parse_utility_config", "register_utility"]
