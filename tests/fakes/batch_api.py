"""OpenAI's Files and Batch endpoints for the loopback server, with states that advance on a timer.

A batch validates its input file as the API does (unique custom_ids, the embeddings endpoint,
at most 50,000 requests and 50,000 inputs), then moves validating -> in_progress ->
finalizing -> completed over `duration` seconds. Output lines come back in shuffled order.
Tests can make the next batches expire half-done, or make requests fail.
"""

from __future__ import annotations

import email.parser
import itertools
import json
import random
import threading
import time
from collections import Counter

MAX_REQUESTS = 50_000
MAX_INPUTS = 50_000


class FakeBatchAPI:
    def __init__(self, embed_body, duration: float = 0.6):
        self.embed_body = embed_body  # body -> (status, payload), the sync endpoint's logic
        self.duration = duration
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.submitted: Counter[str] = Counter()  # texts in batches created, per text
        self.expire_next = 0  # how many of the next batches expire with half their requests done
        self.cancel_next = 0  # how many of the next batches an operator cancels a third of the way in
        self.fail_texts: Counter[str] = Counter()  # text -> how many more times a request holding it fails
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def handle(self, method: str, path: str, headers, raw: bytes) -> tuple[int, object, dict]:
        parts = path.split("?")[0].strip("/").split("/")[1:]  # drop "v1"
        with self._lock:
            if parts == ["files"] and method == "POST":
                return self._upload(headers, raw)
            if len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
                return (200, self.files[parts[1]], {}) if parts[1] in self.files else _not_found(parts[1])
            if parts == ["batches"]:
                return self._create(json.loads(raw)) if method == "POST" else (200, self._list(), {})
            if len(parts) >= 2 and parts[0] == "batches" and parts[1] in self.batches:
                batch = self._advance(self.batches[parts[1]])
                if parts[2:] == ["cancel"]:
                    batch["cancel_requested"] = time.monotonic()
                    batch = self._advance(batch)
                return 200, _public(batch), {}
            return _not_found(path)

    def _upload(self, headers, raw: bytes):
        message = email.parser.BytesParser().parsebytes(f"Content-Type: {headers['content-type']}\r\n\r\n".encode() + raw)
        fields = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True) for part in message.get_payload()}
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = fields["file"]
        return 200, {"id": file_id, "object": "file", "bytes": len(fields["file"]), "created_at": int(time.time()), "filename": "batch.jsonl", "purpose": fields["purpose"].decode(), "status": "processed"}, {}

    def _create(self, body: dict):
        batch_id = f"batch_{next(self._ids)}"
        lines = [json.loads(line) for line in self.files.get(body["input_file_id"], b"").splitlines() if line.strip()]
        errors = _validate(lines, body)
        batch = {
            "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "input_file_id": body["input_file_id"],
            "completion_window": body["completion_window"], "metadata": body.get("metadata"), "created_at": int(time.time()),
            "lines": lines, "errors": errors, "started": time.monotonic(), "duration": self.duration, "expire": self.expire_next > 0,
            "status": "validating", "output_file_id": None, "error_file_id": None,
        }
        self.expire_next = max(0, self.expire_next - 1)
        if self.cancel_next:
            batch["cancel_requested"] = time.monotonic()
            self.cancel_next -= 1
        if not errors:
            for line in lines:
                self.submitted.update(line["body"]["input"])
        self.batches[batch_id] = batch
        return 200, _public(batch), {}

    def _list(self) -> dict:
        return {"object": "list", "data": [_public(self._advance(b)) for b in self.batches.values()], "has_more": False}

    def _advance(self, batch: dict) -> dict:
        """Move the batch along its timeline; produce output files when it ends."""
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return batch
        elapsed = time.monotonic() - batch["started"]
        if batch["errors"]:
            batch["status"] = "failed"
        elif batch.get("cancel_requested"):
            self._finish(batch, "cancelled", done=len(batch["lines"]) // 3)
        elif elapsed < self.duration / 4:
            batch["status"] = "validating"
        elif elapsed < self.duration:
            batch["status"] = "in_progress"
        else:
            self._finish(batch, "expired" if batch["expire"] else "completed", done=len(batch["lines"]) // 2 if batch["expire"] else len(batch["lines"]))
        return batch

    def _finish(self, batch: dict, status: str, done: int) -> None:
        outputs, errors = [], []
        for line in batch["lines"][:done]:
            failed = any(self.fail_texts[text] > 0 for text in line["body"]["input"])
            self.fail_texts.subtract(text for text in line["body"]["input"] if failed and self.fail_texts[text] > 0)
            status_code, payload = (500, {"error": {"message": "The server had an error", "type": "server_error"}}) if failed else self.embed_body(line["body"])
            record = {"id": f"batch_req_{next(self._ids)}", "custom_id": line["custom_id"], "response": {"status_code": status_code, "request_id": "req", "body": payload}, "error": None}
            (outputs if status_code == 200 else errors).append(record)
        random.shuffle(outputs)  # join on custom_id, never on line order
        batch["output_file_id"] = self._store(outputs)
        batch["error_file_id"] = self._store(errors)
        batch["request_counts"] = {"total": len(batch["lines"]), "completed": len(outputs), "failed": len(errors)}
        batch["status"] = status

    def _store(self, records: list[dict]) -> str | None:
        if not records:
            return None
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = "".join(json.dumps(r) + "\n" for r in records).encode()
        return file_id


def _validate(lines: list[dict], body: dict) -> list[dict]:
    problems = []
    endpoint = body.get("endpoint")  # OpenAI's; Azure's has no /v1
    if endpoint not in ("/v1/embeddings", "/embeddings") or body.get("completion_window") != "24h":
        problems.append("endpoint must be /v1/embeddings (Azure: /embeddings) and completion_window 24h")
    if not lines or len(lines) > MAX_REQUESTS:
        problems.append(f"the file must hold 1 to {MAX_REQUESTS} requests")
    if sum(len(line.get("body", {}).get("input", [])) for line in lines) > MAX_INPUTS:
        problems.append(f"a batch may hold at most {MAX_INPUTS} embedding inputs")
    ids = [line.get("custom_id") for line in lines]
    if len(set(ids)) != len(ids):
        problems.append("custom_id values must be unique")
    if any(line.get("url") != endpoint or line.get("method") != "POST" for line in lines):
        problems.append(f"every line must POST to {endpoint}")
    return [{"code": "invalid_request", "message": message, "line": None} for message in problems]


def _public(batch: dict) -> dict:
    total = len(batch["lines"])
    counts = batch.get("request_counts") or {"total": total, "completed": 0, "failed": 0}
    if batch["status"] == "in_progress":
        share = min(1.0, (time.monotonic() - batch["started"]) / batch["duration"])
        counts = {"total": total, "completed": int(total * share) if share < 1 else total - 1, "failed": 0}
    hidden = {"lines", "started", "duration", "expire", "cancel_requested", "errors"}
    errors = {"object": "list", "data": batch["errors"]} if batch["errors"] else None
    return {**{k: v for k, v in batch.items() if k not in hidden}, "request_counts": counts, "errors": errors}


def _not_found(what: str):
    return 404, {"error": {"message": f"No such object: {what}", "type": "invalid_request_error", "code": None}}, {}
