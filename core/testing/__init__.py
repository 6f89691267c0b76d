"""The conformance kit a plugin author runs (``check_plugin``, or ``pytest --modzoo-plugin=NAME`` through
:mod:`modzoo.testing.pytest_plugin`)."""
from .conformance import (
                          GUIDANCE_CHECKS,
                          POLICY_CHECKS,
                          TASK,
                          ConformanceError,
                          Report,
                          cases,
                          check_guidance,
                          check_plugin,
                          check_policy,
                          checkpoint_tensors,
                          plugin_halves,
                          run_case,
                          synthetic_dataset,
                          tiny_overrides,
)

__all__ = ["check_plugin", "check_guidance", "check_policy", "synthetic_dataset", "tiny_overrides", "Report",
           "ConformanceError", "GUIDANCE_CHECKS", "POLICY_CHECKS", "plugin_halves", "cases", "run_case", "TASK",
           "checkpoint_tensors"]
