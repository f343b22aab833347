"""OpenAI's Batch API: half the price of the embeddings endpoint, results within 24 hours.

The run first sends every chunk the cache lacks through batches, waits for them, and stores
their vectors in the same cache; the ordinary pass then writes the output from the cache, so
a batch run and a sync run produce identical files.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from typing import ClassVar

import numpy as np

from pipeline.cache.vectors import VectorCache
from pipeline.errors import ProviderError
from pipeline.hashset import HashSet
from pipeline.providers.batch_files import BatchFile, BatchLedger, BatchPlanner, request_lines
from pipeline.providers.http import backoff
from pipeline.providers.openai import OpenAIEmbedder, describe_error, fatal_error
from pipeline.providers.openai_answers import decode_response
from pipeline.text.tokens import count_tokens
from pipeline.unit_vectors import l2_normalise

log = logging.getLogger("embedpipe")
TERMINAL = {"completed", "failed", "expired", "cancelled"}


class OpenAIBatchEmbedder(OpenAIEmbedder):
    """Embeds through `/v1/batches`; what the Batch API could not do goes through the sync
    endpoint only when `embedding.batch_fallback_sync` is true."""

    provider = "openai-batch"
    uses_batch_api = True
    price_kind = "batch"
    query_provider = "openai"  # one query does not wait for a batch
    batch_url: ClassVar[str] = "/v1/embeddings"  # what each request of a batch posts to

    @property
    def batch_model(self) -> str:
        """What a batch's requests name as their `model`."""
        return self.model

    def __init__(self, config, api_key):
        super().__init__(config, api_key)
        self._one_at_a_time = threading.Lock()  # backfill runs share this embedder and its ledger

    def batch_lines(self, action: str, batch_id: str = "") -> list[str]:
        return batch_command(self, action, batch_id)

    def embed_batch(self, texts: list[str], token_counts: list[int] | None = None) -> np.ndarray:
        if self.config.batch_fallback_sync:
            return super().embed_batch(texts, token_counts)
        raise ProviderError(
            f"{len(texts)} texts got no vector from the Batch API after {self.config.batch_max_attempts} attempts; "
            "run again to retry them, or set embedding.batch_fallback_sync: true"
        )

    def run_batches(self, misses: Iterable[tuple[str, int]], cache: VectorCache) -> dict:
        """Submit every text in `misses` (text, tokens) not already in flight, wait for all
        batches (earlier runs' included), and store their vectors in `cache`. Returns counts."""
        with self._one_at_a_time:
            self.counts = {
                "batches": 0,
                "requests": 0,
                "inputs": 0,
                "tokens": 0,
                "reattached": 0,
                "resubmitted_texts": 0,
            }
            self._retry: list[str] = []  # texts a finished batch gave no usable vector for
            return self._run_batches(misses, cache)

    def _run_batches(self, misses: Iterable[tuple[str, int]], cache: VectorCache) -> dict:
        ledger = BatchLedger(cache.path / "batches" / hashlib.sha256(self.cache_namespace.encode()).hexdigest()[:16])
        in_flight = self._reattach(ledger)
        seen = HashSet()  # eight bytes a text: a backfill's misses may not fit memory as strings
        seen.add_many(
            [
                t
                for entry in in_flight.values()
                for texts in ledger.read_input(entry["local_id"]).values()
                for t in texts
            ]
        )
        attempts: dict[str, int] = {}  # only texts sent again; the rest were sent once
        planner = self._planner(self.batch_inputs)
        misses = iter(misses)
        while group := list(itertools.islice(misses, 4_096)):
            for (text, tokens), new in zip(group, seen.add_many([text for text, _ in group])):
                full = planner.add(text, tokens) if new else None
                if full:
                    self._submit(full, ledger, in_flight, cache)
        last = planner.flush()
        if last:
            self._submit(last, ledger, in_flight, cache)
        while in_flight or self._retry:
            if self._retry:
                self._resubmit(attempts, ledger, in_flight, cache)
            if in_flight:
                self._wait_for_one(ledger, in_flight, cache)
        return dict(self.counts)

    def _planner(self, request_inputs: int) -> BatchPlanner:
        return BatchPlanner(
            self.config.batch_max_inputs_per_file, request_inputs, self.config.batch_max_enqueued_tokens
        )

    def _reattach(self, ledger: BatchLedger) -> dict[str, dict]:
        """Batches an earlier run submitted and never collected; one it prepared but may not
        have created is looked up by its input file, and created only if absent."""
        in_flight = {}
        for local_id, entry in ledger.open_entries().items():
            if "batch_id" not in entry:
                batch = self._find_batch(entry.get("input_file_id"))
                if batch is None:  # never created: its texts are still misses and are planned anew
                    ledger.record(local_id, "collected", status="never created")
                    continue
                ledger.record(local_id, "submitted", batch_id=batch.id)
                entry["batch_id"] = batch.id
            in_flight[local_id] = entry
            self.counts["reattached"] += 1
            log.info("re-attached to batch %s from an earlier run", entry["batch_id"])
        return in_flight

    def _find_batch(self, input_file_id: str | None):
        if not input_file_id:
            return None
        recent = self.call(lambda: self.client.batches.list(limit=100).data)  # one page: the newest
        return next((b for b in recent if b.input_file_id == input_file_id), None)

    def _submit(self, file: BatchFile, ledger: BatchLedger, in_flight: dict, cache: VectorCache) -> None:
        while (
            in_flight
            and sum(e["tokens"] for e in in_flight.values()) + file.tokens > self.config.batch_max_enqueued_tokens
        ):
            self._wait_for_one(ledger, in_flight, cache)  # a wave: wait for room in the queue
        local_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        body = {
            "model": self.batch_model,
            "encoding_format": "base64",
            **({"dimensions": self.config.dimensions} if self.config.dimensions else {}),
        }
        path = ledger.write_input(local_id, request_lines(file, local_id, body, self.batch_url))
        ledger.record(local_id, "prepared", tokens=file.tokens, inputs=file.inputs)
        uploaded = self.call(
            lambda: self.client.files.create(file=(path.name, io.BytesIO(path.read_bytes())), purpose="batch")
        )
        ledger.record(local_id, "uploaded", input_file_id=uploaded.id)
        tries = []

        def create():
            tries.append(1)
            if len(tries) > 1:  # the failed try may have created it unseen: look before creating twice
                found = self._find_batch(uploaded.id)
                if found is not None:
                    return found
            return self.client.batches.create(
                input_file_id=uploaded.id,
                endpoint=self.batch_url,  # Azure names it without /v1
                completion_window="24h",
                metadata={"embedpipe": local_id},
            )

        batch = self.call(create)
        ledger.record(local_id, "submitted", batch_id=batch.id)
        in_flight[local_id] = {
            "local_id": local_id,
            "batch_id": batch.id,
            "tokens": file.tokens,
            "input_file_id": uploaded.id,
        }
        self.counts["batches"] += 1
        self.counts["requests"] += len(file.requests)
        self.counts["inputs"] += file.inputs
        self.counts["tokens"] += file.tokens
        log.info(
            "submitted batch %s: %d requests, %d texts, %d tokens",
            batch.id,
            len(file.requests),
            file.inputs,
            file.tokens,
        )

    def _resubmit(self, attempts: dict[str, int], ledger: BatchLedger, in_flight: dict, cache: VectorCache) -> None:
        """Texts a batch did not deliver go into a new batch, up to `batch_max_attempts` each;
        past that they are left to the sync pass (fallback) or reported."""
        texts, self._retry = self._retry, []
        planner = self._planner(request_inputs=1)  # a text that fails alone fails alone
        for text in texts:
            attempts[text] = attempts.get(text, 1) + 1
            if attempts[text] > self.config.batch_max_attempts:
                continue
            self.counts["resubmitted_texts"] += 1
            full = planner.add(text, count_tokens(text))
            if full:
                self._submit(full, ledger, in_flight, cache)
        last = planner.flush()
        if last:
            self._submit(last, ledger, in_flight, cache)

    def _wait_for_one(self, ledger: BatchLedger, in_flight: dict, cache: VectorCache) -> None:
        """Poll, backing off, until one batch ends; collect it."""
        interval = self.config.batch_poll_seconds
        while True:
            for local_id, entry in list(in_flight.items()):
                batch = self.call(lambda batch_id=entry["batch_id"]: self.client.batches.retrieve(batch_id))
                counts = batch.request_counts
                progress = f"{counts.completed + counts.failed}/{counts.total}" if counts else "?"
                if entry.get("last_seen") != (batch.status, progress):
                    log.info("batch %s: %s, %s requests done", batch.id, batch.status, progress)
                    entry["last_seen"] = (batch.status, progress)
                if batch.status in TERMINAL:
                    self._collect(local_id, batch, ledger, cache)
                    del in_flight[local_id]
                    return
            time.sleep(interval)
            interval = min(interval * 1.5, max(60.0, self.config.batch_poll_seconds))

    def _collect(self, local_id: str, batch, ledger: BatchLedger, cache: VectorCache) -> None:
        """Join the output and error files on custom_id, store every good vector, queue the rest."""
        if batch.status == "failed":  # recorded, so the next run plans its texts anew
            ledger.record(local_id, "collected", status=batch.status)
            reasons = "; ".join(e.message for e in (batch.errors.data if batch.errors and batch.errors.data else []))
            raise ProviderError(f"batch {batch.id} failed validation: {reasons or 'no reason given'}")
        requests = ledger.read_input(local_id)
        found: dict[str, np.ndarray] = {}
        for line in self._read_lines(batch.output_file_id) + self._read_lines(batch.error_file_id):
            texts, data = _answer(line, requests)
            if texts is not None:
                vectors, bad = decode_response(data, len(texts), self.dimensions)
                found.update((text, vectors[i]) for i, text in enumerate(texts) if i not in bad)
        if found:
            cache.put_many(dict(zip(found, l2_normalise(np.stack(list(found.values()))))))
        missing = [text for texts in requests.values() for text in texts if text not in found]
        self._retry.extend(missing)
        ledger.record(local_id, "collected", status=batch.status)
        log.info("batch %s %s: %d vectors stored, %d texts to retry", batch.id, batch.status, len(found), len(missing))

    def _read_lines(self, file_id: str | None) -> list[dict]:
        """The file's JSON object lines; a malformed one is skipped, and its texts are sent again."""
        if not file_id:
            return []
        content = self.call(lambda: self.client.files.content(file_id))
        written = [line for line in content.text.splitlines() if line.strip()]
        lines = [line for line in map(_json_line, written) if isinstance(line, dict)]
        if len(lines) < len(written):
            skipped = len(written) - len(lines)
            log.warning("file %s: %d lines are not JSON objects; their texts are sent again", file_id, skipped)
        return lines

    def call(self, request):
        """A Files or Batches call, retried on transient failures like an embeddings request."""
        import openai  # imported with the client (`OpenAIEmbedder.client`)

        for attempt in range(self.config.max_attempts):
            try:
                return request()
            except (openai.APIConnectionError, openai.InternalServerError) as exc:
                self.tally(f"batch api {type(exc).__name__}")
            except openai.NotFoundError as exc:
                raise ProviderError(f"the Batch API has no such object: {describe_error(exc)}") from None
            except openai.APIStatusError as exc:
                fatal = fatal_error(exc, self.config.api_key_env, self.model)
                if fatal or isinstance(exc, openai.BadRequestError):
                    raise fatal or ProviderError(f"the Batch API refused a call: {describe_error(exc)}") from None
                self.tally("batch api 429")
            time.sleep(backoff(attempt))
        raise ProviderError(f"the Batch API did not answer after {self.config.max_attempts} attempts")


def _json_line(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None


def _answer(line: dict, requests: dict[str, list[str]]) -> tuple[list[str] | None, object]:
    """The texts of a successful output line's request and its answer's `data`; (None, None)
    for a failed request or a line that names no request of this batch."""
    custom_id, response = line.get("custom_id"), line.get("response")
    texts = requests.get(custom_id) if isinstance(custom_id, str) else None
    if texts is None or not isinstance(response, dict) or response.get("status_code") != 200:
        return None, None
    body = response.get("body")
    return texts, body.get("data") if isinstance(body, dict) else None


def describe_batch(batch) -> str:
    """One line about a batch, for `embedpipe batches`."""
    counts = batch.request_counts
    done = f"{counts.completed} done, {counts.failed} failed of {counts.total}" if counts else "no counts yet"
    mine = " (embedpipe)" if batch.metadata and "embedpipe" in batch.metadata else ""
    created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(batch.created_at))
    return f"{batch.id}  {batch.status:<11} {done}  created {created}{mine}"


def batch_command(embedder: OpenAIBatchEmbedder, action: str, batch_id: str = "") -> list[str]:
    """`list`, `status ID` or `cancel ID` against the Batch API; lines to print."""
    client = embedder.client
    if action == "list":
        return [describe_batch(b) for b in embedder.call(lambda: client.batches.list(limit=100).data)]
    if action == "status":
        batch = embedder.call(lambda: client.batches.retrieve(batch_id))
        errors = [f"  error: {e.message}" for e in (batch.errors.data if batch.errors and batch.errors.data else [])]
        return [describe_batch(batch), *errors]
    return [describe_batch(embedder.call(lambda: client.batches.cancel(batch_id)))]
