"""Imports every module that registers a built-in utility type (add yours here)."""
from . import registry  # noqa: F401  (the "python" utility)
from . import dataset  # noqa: F401  (multiple_choice, exact_match)
from . import multitask  # noqa: F401  (multitask)
from . import reward  # noqa: F401  (reward_model, llm_judge)
from . import harness  # noqa: F401  (lm_eval: lm-evaluation-harness tasks; lm-eval itself loads lazily)
