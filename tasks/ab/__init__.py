"""The A/B stage (issue 24): an endpoint's production and candidate arms judged by the users'
thumbs, and the decision acted on. Pure statistics: `brightrun.ab`; SQL:
`brightrun.registry.ab_stats`."""

from tasks.ab.decide import (
    AB_PROMOTED,
    AB_RECOMMENDED,
    AB_ROLLED_BACK,
    ABOutcome,
    ABSplitChanged,
    Arms,
    DeployApplier,
    RoutesApplier,
    decision_markdown,
    evaluate_arms,
    read_arms,
    run_decision,
)

__all__ = [
    "AB_PROMOTED",
    "AB_RECOMMENDED",
    "AB_ROLLED_BACK",
    "ABOutcome",
    "ABSplitChanged",
    "Arms",
    "DeployApplier",
    "RoutesApplier",
    "decision_markdown",
    "evaluate_arms",
    "read_arms",
    "run_decision",
]
