"""One action of an Execute call, as the job store takes it, and the new job record it becomes."""

from __future__ import annotations

from dataclasses import dataclass

from relay.core import codec
from relay.core.codec import Record
from relay.core.ids import new_job_id


@dataclass(frozen=True, slots=True)
class NewAction:
    provider: str
    action: str
    params_json: str
    client_request_id: str
    #: The params' encoded form (``codec.encoded``), kept beside the text so reads need no JSON parse.
    params_pb: str = ""

    def new_record(self, workspace_id: str, actor_id: str, enqueued_at: str) -> Record:
        """The pending job this action makes, under a new job id."""
        return codec.new_record(
            job_id=new_job_id(),
            workspace_id=workspace_id,
            provider=self.provider,
            action=self.action,
            params_json=self.params_json,
            actor_id=actor_id,
            enqueued_at=enqueued_at,
            params_pb=self.params_pb,
        )
