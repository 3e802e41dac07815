"""The first call a newcomer makes works end to end."""

from relay.v1 import job_service_pb2 as pb


async def test_an_executed_job_can_be_read_back(relay, keys):
    reply = await relay.jobs.Execute(
        pb.ExecuteRequest(actions=[pb.Action(provider="openai", action="chat")], actor_id="me"),
        metadata=keys.md("ws_a"),
    )
    job = (await relay.jobs.GetJob(pb.GetJobRequest(job_id=reply.job_ids[0]), metadata=keys.md("ws_a"))).job
    assert job.workspace_id == "ws-a"
    assert job.status == pb.JOB_STATUS_PENDING
