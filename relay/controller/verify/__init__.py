"""The verify family: compare every legacy record with its new copy, resumable and rate-limited."""

from relay.controller.verify.rpcs import VerifyRpcs
from relay.controller.verify.verifier import VerificationRun, VerificationState, Verifier

__all__ = ["VerificationRun", "VerificationState", "Verifier", "VerifyRpcs"]
