"""The batch loop of one backfill, run in a background task of the controller that owns it.

Each step: a SCAN step and one read of its keys (read ahead while the previous batch is copied), a wait
on the token bucket, then ONE Lua call (``COPY_BATCH``) that copies the batch and records counts and
checkpoint atomically. Between batches the runner obeys the operator (pause, cancel, rate and batch, via
the state in Redis so any controller can ask), brakes when Redis makes commands wait past the ceiling,
and publishes progress at least every second and every 5,000 keys. Its guarantees (exactly-once counts,
a Redis restart, dry runs) are in the package's doc.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.asyncio import Redis

from relay.controller.backfill.batch import Batch, BatchCopier, BatchReader, CopyReply
from relay.controller.backfill.continuation import Continuation
from relay.controller.backfill.events import EventHub, make_event
from relay.controller.backfill.in_flight import DEPTH, DEPTH_WITH_BUDGET, InFlight
from relay.controller.backfill.pacing import Pacing
from relay.controller.backfill.read_ahead import ReadAhead
from relay.controller.backfill.retry import retrying, stop_task
from relay.controller.backfill.signals import Cancelled, Stopping
from relay.controller.backfill.split_batch import batch_copier
from relay.controller.backfill.state import (
    CANCELLED,
    COMPLETED,
    COUNT_FIELDS,
    FAILED,
    INVALID_IDS_KEPT,
    NEW_PASS_FIELDS,
    ORPHANED,
    PAUSED,
    RUNNING,
    BackfillRecord,
    Counts,
)
from relay.controller.backfill.store import BackfillStore, Fenced
from relay.controller.backfill.tallies import OutcomeTally
from relay.controller.common.lease import Lease
from relay.controller.stages.facts import record_backfill_completed
from relay.core import codec
from relay.core.config import Settings
from relay.core.keys import KEYS, KeyLayout
from relay.core.stores import Stores
from relay.core.telemetry import Metrics
from relay.v1 import backfill_pb2 as pb

log = logging.getLogger("relay.backfill")

PROGRESS_MIN_SECONDS = 0.5
PROGRESS_MAX_SECONDS = 1.0
PROGRESS_MAX_KEYS = 5000
PAUSE_POLL_SECONDS = 0.25


class BackfillRunner:
    def __init__(
        self,
        record: BackfillRecord,
        *,
        redis: Redis,
        store: BackfillStore,
        settings: Settings,
        metrics: Metrics,
        hub: EventHub,
        lease: Lease | None,
        first: tuple[pb.BackfillEventKind.ValueType, str],
        keys: KeyLayout = KEYS,
        stores: Stores | None = None,
    ):
        self.record = record
        self.dry = record.options.dry_run
        self.hub = hub
        self._redis = redis
        self._store = store
        self._lease = lease
        self._first = first
        # In a split topology the legacy records are scanned on their own Redis (see split_batch).
        legacy = stores.legacy if stores is not None else redis
        pipelined = stores.pipelined if stores is not None and stores.shared else None
        self._reader = BatchReader(legacy, record.options.workspace_id, keys, pipelined)
        self._copier = batch_copier(redis, stores, keys)
        self._pacing = Pacing(
            record,
            redis,
            settings.backfill_latency_ceiling_seconds,
            settings.backfill_script_budget_seconds,
        )
        self._wake = asyncio.Event()
        self._stopping = False
        self._last_progress = 0.0
        self._keys_since_progress = 0
        self._last_examined = 0
        self._tally = OutcomeTally(metrics)
        self._continuation = Continuation(record)
        depth = DEPTH_WITH_BUDGET if settings.backfill_script_budget_seconds > 0 else DEPTH
        self._read_ahead = ReadAhead(
            record, self._reader, self._pacing, self._continuation, plan=self._copier.plan, depth=depth
        )
        stream = self._copier.stream() if isinstance(self._copier, BatchCopier) else None
        self._copies = InFlight(
            record, self._reader, self._copier, store, self._pacing, self._continuation, stream, depth
        )
        self._last_control = ""  # the operator's request as the last reply said
        self.task: asyncio.Task[None] | None = None
        #: The run reached its end (its final state is recorded); ``done`` follows once its task ends.
        self.finished = False
        self.done = asyncio.Event()

    # --- requests from this controller -----------------------------------------------------
    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"backfill {self.record.backfill_id}")

    def poke(self, control: str | None = None, rate: float | None = None, batch: int | None = None) -> None:
        """Apply an operator's request now (for an execute backfill it is also stored in Redis)."""
        if control is not None:
            self.record.control = control
        if rate is not None:
            self.record.rate_limit_now = rate
        if batch is not None:
            self.record.batch_size_now = batch
        self._pacing.apply_rate()
        self._wake.set()

    async def stop(self, grace_seconds: float) -> None:
        """Stop after the current batch (the controller shuts down)."""
        self._stopping = True
        self._wake.set()
        if self.task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.task), grace_seconds)
        except (TimeoutError, asyncio.CancelledError):
            # Cancelled until it ends: a single cancellation swallowed by a Redis call would leave this
            # waiting for a run that goes on.
            await stop_task(self.task)

    # --- the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        ticker = asyncio.create_task(self._tick())
        try:
            self._publish(*self._first)
            await self._loop()
        except Cancelled:
            await self._end(CANCELLED, "cancelled by an operator")
        except Fenced as exc:
            log.warning("backfill taken over elsewhere", extra={"backfill_id": self.record.backfill_id})
            self.record.reason = str(exc)
            self.hub.detach()
        except Stopping:
            await self._end_on_shutdown()
        except asyncio.CancelledError:
            self.hub.detach()
            raise
        except Exception as exc:
            log.exception("backfill failed", extra={"backfill_id": self.record.backfill_id})
            await self._end(FAILED, f"{type(exc).__name__}: {exc}"[:500])
        finally:
            self._tally.flush()
            await self._pacing.close()
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            if self._lease is not None:
                await self._lease.release()
            self.done.set()

    async def _loop(self) -> None:
        rec = self.record
        self._pacing.apply_rate()
        if not rec.scan_done:
            self._read_ahead.start()
            self._copies.restart()
            held: Batch | BaseException | None = None  # read ahead, handled once nothing is in flight
            try:
                while True:
                    if not self._copies:
                        await self._obey()
                        batch = await self._next_batch(held)
                        held = None
                        if batch is None:
                            continue
                        await self._pacing.bucket.take(batch.examined)
                        await self._copies.send(batch)
                    held = await self._send_ahead(held)
                    batch, reply, seconds = await self._copies.next()
                    self._last_control = reply.control
                    held = await self._send_ahead(held)
                    self._record(batch, reply, seconds)
                    if rec.scan_done:
                        break
                    await self._probe()
                    self._maybe_progress()
            finally:
                await self._copies.stop()
                await self._read_ahead.stop()
        await self._complete()

    async def _send_ahead(self, held: Batch | BaseException | None) -> Batch | BaseException | None:
        """Unthrottled: send the next batches before the previous ones are answered and recorded (as many
        as the copies allow in flight), so Redis never waits for this process."""
        rec = self.record
        while held is None and not self._copies.full and self._may_send_early():
            last = self._copies.last_sent
            if last is None or last.last:
                break
            ahead = await self._read_ahead.get()
            if isinstance(ahead, Batch) and ahead.run_id and ahead.run_id == rec.run_id:
                await self._copies.send(ahead)
            else:
                return ahead  # an error, or another Redis run: handled in order, once nothing is in flight
        return held

    def _may_send_early(self) -> bool:
        """Nothing asks the loop to stop between these two batches, and no rate limit spaces them."""
        control = self.record.control or ("" if self.dry else self._last_control)
        lost = self._lease is not None and self._lease.lost.is_set()
        return not (self._stopping or lost or control or self._pacing.effective_rate() > 0)

    async def _next_batch(self, held: Batch | BaseException | None) -> Batch | None:
        """The next batch read ahead; None when the scan had to begin again (Redis restarted)."""
        rec = self.record
        batch = held if held is not None else await self._read_ahead.get()
        if isinstance(batch, BaseException):
            raise batch
        if batch.run_id and not rec.run_id:
            await self._adopt_run(batch.run_id)
        elif batch.run_id != rec.run_id:
            # The cursor was another Redis run's: drop what was read ahead, scan from "0".
            await self._read_ahead.stop()
            await self._rescan(batch.run_id)
            self._read_ahead.start()
            return None
        return batch

    async def _adopt_run(self, run_id: str) -> None:
        """A backfill recorded before run ids were: its cursor is taken to be this run's."""
        self.record.run_id = run_id
        if not self.dry:
            await self._write({"run_id": run_id})

    async def _rescan(self, run_id: str) -> None:
        """Begin the scan again from cursor "0" on Redis run ``run_id``, as a new pass.

        A SCAN cursor does not survive a restart (new hash seed), so the keys the old cursor had not yet
        reached are unknown. The new pass counts every legacy key once: records an earlier pass copied
        count as skipped "exists". It covers the whole scope, so a max_keys continuation chain ends here.
        """
        rec = self.record
        reason = (
            f"Redis restarted (run_id changed) after {rec.counts.scanned:,} keys: a SCAN cursor does not "
            "survive a restart, so the scan began again from the start; counts are those of the new pass"
        )
        fresh = rec.new_pass(run_id, reason, codec.now_iso())
        if not self.dry:
            stored = fresh.to_hash()
            values = {name: stored[name] for name in NEW_PASS_FIELDS}  # run_id and rescans: the store's
            done = await retrying(
                lambda: self._store.rescan(rec.backfill_id, rec.token, rec.batches, run_id, values)
            )
            if not done:
                raise Fenced("another controller took the backfill over")
        log.warning("backfill scans again: Redis restarted", extra={"backfill_id": rec.backfill_id})
        rec.adopt(fresh)
        self._copies.restart()  # the new pass counts from 0
        self._continuation.clear()
        self._pacing.restart(from_start=True)
        self._publish(pb.BACKFILL_EVENT_KIND_THROTTLED, reason)

    def _record(self, batch: Batch, reply: CopyReply, seconds: float) -> None:
        rec = self.record
        rec.cursor = batch.cursor_to
        rec.batches += 1
        rec.update_time = codec.now_iso()
        if self.dry:
            rec.counts.add_outcomes(reply.outcomes, batch.filtered)
        else:
            rec.counts = Counts(**{name: reply.counts.get(name, 0) for name in COUNT_FIELDS})
            if reply.control != rec.control:
                rec.control = reply.control
            if reply.rate_limit_now is not None and reply.rate_limit_now != rec.rate_limit_now:
                rec.rate_limit_now = reply.rate_limit_now
                self._pacing.apply_rate()
            if reply.batch_size_now:
                rec.batch_size_now = reply.batch_size_now
        for item, outcome in zip(batch.items, reply.outcomes, strict=False):
            if outcome == "i" and len(rec.invalid_ids) < INVALID_IDS_KEPT:
                rec.invalid_ids.append(item.job_id)
        self._pacing.observe(rec.counts.scanned)
        rec.rate = self._pacing.rate_with(rec.counts.scanned)
        rec.total_estimate = self._pacing.estimate(batch.cursor_to, rec.counts.scanned)
        if batch.last:
            self._continuation.record_end(batch)
        self._keys_since_progress += batch.examined
        self._last_examined = batch.examined
        # Per key of the SCAN step (passed over or copied): the unit the next step is sized in.
        # Sized by COPY_BATCH's own run time; a split-store copy (several short single-slot scripts with
        # round trips between them, no one script holding Redis) reports none and keeps its batch size.
        if reply.script_seconds is not None:
            self._pacing.observe_script(max(batch.examined, len(batch.items)), reply.script_seconds)
        if not self.dry and reply.outcomes:
            self._tally.count(batch, reply.outcomes, seconds)

    async def _probe(self) -> None:
        reason = await self._pacing.probe()
        if reason is None:
            return
        rec = self.record
        rec.throttle_seq += 1
        rec.throttle_reason = reason
        if not self.dry:
            await self._write({"throttle_seq": str(rec.throttle_seq), "throttle_reason": reason})
        self._publish(pb.BACKFILL_EVENT_KIND_THROTTLED, reason)

    # --- operator requests -------------------------------------------------------------------
    async def _obey(self) -> None:
        """Raise to stop or cancel; wait while paused."""
        self._check_stop()
        if self.record.control != "pause":
            return
        rec = self.record
        await self._set_state(PAUSED, "paused by an operator")
        self._publish(pb.BACKFILL_EVENT_KIND_PAUSED, rec.reason)
        self._pacing.restart()
        rec.rate = 0.0
        while True:
            self._wake.clear()
            self._check_stop()
            if rec.control != "pause":
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), PAUSE_POLL_SECONDS)
            if not self.dry:
                control, rate, batch = await retrying(lambda: self._store.controls(rec.backfill_id))
                self.poke(control, rate, batch)
        await self._set_state(RUNNING, "resumed by an operator")
        self._publish(pb.BACKFILL_EVENT_KIND_RESUMED, rec.reason)

    def _check_stop(self) -> None:
        if self._stopping:
            raise Stopping
        if self._lease is not None and self._lease.lost.is_set():
            raise Fenced("the backfill lease was lost")
        if self.record.control == "cancel":
            raise Cancelled

    async def _set_state(self, state: str, reason: str) -> None:
        rec = self.record
        rec.state, rec.reason, rec.update_time = state, reason, codec.now_iso()
        if not self.dry:
            await self._write({"state": state, "reason": reason, "update_time": rec.update_time})

    async def _write(self, values: dict[str, str], indexed_by: str = "") -> None:
        rec = self.record
        if not await retrying(lambda: self._store.write(rec.backfill_id, rec.token, values, indexed_by)):
            raise Fenced("another controller took the backfill over")

    # --- endings -----------------------------------------------------------------------------
    async def _complete(self) -> None:
        rec = self.record
        options = rec.options
        scope = f" of workspace {options.workspace_id}" if options.workspace_id else ""
        if rec.max_keys_reached:
            reason = (
                f"stopped at max_keys={options.max_keys}; the next execute backfill{scope} continues here"
            )
        else:
            reason = f"scanned every legacy key{scope}"
        # The whole scope was scanned and every record placed: the stage rules may rely on it, and after a
        # scan of every workspace JobService may stop listing legacy keys (see backfill.engine).
        complete = not self.dry and rec.covers_scope and not rec.max_keys_reached and rec.counts.errors == 0
        indexed = complete and not options.workspace_id
        if indexed:
            reason += "; every legacy record is now in its workspace index"
        now = codec.now_iso()
        rec.state, rec.reason, rec.end_time, rec.update_time = COMPLETED, reason, now, now
        if not self.dry:
            values = {"state": COMPLETED, "reason": reason, "end_time": now, "update_time": now}
            await self._write(values, indexed_by=rec.backfill_id if indexed else "")
        if complete:
            try:
                await record_backfill_completed(
                    self._redis, options.workspace_id, rec.scan_started or rec.create_time, rec.backfill_id
                )
            except Exception as exc:  # the stage rules then ask for another backfill: safe, if slower
                log.warning("backfill completion not recorded as a migration fact: %s", type(exc).__name__)
        self._tally.flush()  # before the event: whoever waits for it reads complete counters
        await self._let_go()
        self._publish(pb.BACKFILL_EVENT_KIND_COMPLETED, reason)

    async def _end(self, state: str, reason: str) -> None:
        rec = self.record
        now = codec.now_iso()
        if not self.dry:
            try:
                await self._write({"state": state, "reason": reason, "end_time": now, "update_time": now})
            except Fenced:
                self.hub.detach()
                return
            except Exception as exc:  # Redis away: the state stays RUNNING there, and will be resumed
                log.warning("backfill end not recorded: %s", type(exc).__name__)
                self.hub.detach()
                return
        rec.state, rec.reason, rec.end_time, rec.update_time = state, reason, now, now
        kind = pb.BACKFILL_EVENT_KIND_CANCELLED if state == CANCELLED else pb.BACKFILL_EVENT_KIND_FAILED
        self._tally.flush()
        await self._let_go()
        self._publish(kind, reason)

    async def _end_on_shutdown(self) -> None:
        rec = self.record
        if self.dry:
            await self._end(CANCELLED, "its controller shut down (a dry run keeps no checkpoint)")
            return
        if rec.state == RUNNING:
            reason = "its controller shut down; another controller resumes it from the checkpoint"
            with contextlib.suppress(Exception):
                await self._set_state(ORPHANED, reason)
        self.hub.detach()

    async def _let_go(self) -> None:
        """Release the lease before the final event: whoever starts the next backfill on hearing it must
        find this one over, in Redis and here."""
        self.finished = True
        if self._lease is not None:
            await self._lease.release()

    # --- events ------------------------------------------------------------------------------
    def _publish(self, kind: pb.BackfillEventKind.ValueType, reason: str = "") -> None:
        self._last_progress = time.monotonic()
        self._keys_since_progress = 0
        if kind == pb.BACKFILL_EVENT_KIND_PROGRESS and not self.hub.watchers:
            return
        self.hub.publish(make_event(self.record, kind, reason))

    def _maybe_progress(self) -> None:
        waited = time.monotonic() - self._last_progress
        if (
            waited >= PROGRESS_MIN_SECONDS
            # The next batch was read ahead at an earlier size, which the script budget may since have
            # changed (and SCAN may return a few keys more than asked): allow for twice the larger one.
            or self._keys_since_progress + 2 * max(self._pacing.batch_size(), self._last_examined)
            > PROGRESS_MAX_KEYS
        ):
            self._publish(pb.BACKFILL_EVENT_KIND_PROGRESS)

    async def _tick(self) -> None:
        """Progress at least every second, also while a batch waits on the rate limit or a slow Redis."""
        while True:
            await asyncio.sleep(PROGRESS_MAX_SECONDS / 4)
            if (
                self.record.state == RUNNING
                and time.monotonic() - self._last_progress >= PROGRESS_MAX_SECONDS
            ):
                self._publish(pb.BACKFILL_EVENT_KIND_PROGRESS)
