"""The verify family: compare every legacy record with its new copy, resumable and rate-limited."""

from relay.controller.verify.rpcs import VerifyRpcs
from relay.controller.verify.verifier import VerificationRun, Verifier

__all__ = ["VerificationRun", "Verifier", "VerifyRpcs"]
