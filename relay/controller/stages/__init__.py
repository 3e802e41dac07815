"""The stage family: the rules of a stage change, the evidence they read, and the RPCs that change it.

``rules`` is pure (no Redis); ``facts`` records the completed operations the rules rely on; ``control``
reads and changes the stage table in one transaction with the rules; ``rpcs`` converts to protobuf.
"""

from relay.controller.stages.control import ScopeStage, StageControl
from relay.controller.stages.facts import read_evidence
from relay.controller.stages.rpcs import StageRpcs
from relay.controller.stages.rules import Evidence, Fact, Refusal, RuleLimits, check_transition

__all__ = [
    "Evidence",
    "Fact",
    "Refusal",
    "RuleLimits",
    "ScopeStage",
    "StageControl",
    "StageRpcs",
    "check_transition",
    "read_evidence",
]
