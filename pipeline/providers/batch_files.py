"""Plan texts into Batch API input files inside the API's limits, and keep a durable ledger of them."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

MAX_REQUEST_INPUTS = 2048
MAX_REQUEST_TOKENS = 300_000
MAX_FILE_REQUESTS = 50_000
MAX_FILE_INPUTS = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
_LINE_OVERHEAD = 200  # bytes of JSON around one request's inputs


@dataclass
class BatchFile:
    """One input file's requests: lists of texts, in order."""

    request_inputs: int = MAX_REQUEST_INPUTS
    requests: list[list[str]] = field(default_factory=list)
    tokens: int = 0
    inputs: int = 0
    size: int = 0
    _request_tokens: int = 0

    def fits(self, text: str, tokens: int, max_inputs: int, max_tokens: int) -> bool:
        size = self.size + _json_size(text) + _LINE_OVERHEAD
        return (
            self.inputs < max_inputs
            and size < MAX_FILE_BYTES
            and (not self.inputs or self.tokens + tokens <= max_tokens)
        )

    def add(self, text: str, tokens: int) -> None:
        current = self.requests[-1] if self.requests else None
        if current is None or len(current) == self.request_inputs or self._request_tokens + tokens > MAX_REQUEST_TOKENS:
            self.requests.append([])
            self._request_tokens = 0
            self.size += _LINE_OVERHEAD
        self.requests[-1].append(text)
        self._request_tokens += tokens
        self.tokens += tokens
        self.inputs += 1
        self.size += _json_size(text)


class BatchPlanner:
    """Packs texts into files: ≤ 2048 inputs and ≤ 300,000 tokens a request; ≤ 50,000 requests,
    ≤ 50,000 inputs and ≤ 200 MB a file; `max_inputs` and `request_inputs` may set smaller
    ones, and no file holds more than `max_tokens` (the enqueued-token budget)."""

    def __init__(
        self, max_inputs: int = MAX_FILE_INPUTS, request_inputs: int = MAX_REQUEST_INPUTS, max_tokens: int = 10**12
    ):
        self.max_inputs = min(max_inputs, MAX_FILE_INPUTS)
        self.max_tokens = max_tokens  # the enqueued-token budget: no file may exceed it
        self.request_inputs = min(request_inputs, MAX_REQUEST_INPUTS)
        self.current = BatchFile(self.request_inputs)

    def add(self, text: str, tokens: int) -> BatchFile | None:
        """Add one text; returns a file when this text started a new one and the old one is full."""
        full = None
        if not self.current.fits(text, tokens, self.max_inputs, self.max_tokens):
            full, self.current = self.current, BatchFile(self.request_inputs)
        self.current.add(text, tokens)
        return full

    def flush(self) -> BatchFile | None:
        full, self.current = self.current, BatchFile(self.request_inputs)
        return full if full.inputs else None


def _json_size(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8"))


def request_lines(file: BatchFile, local_id: str, body: dict, url: str = "/v1/embeddings") -> list[dict]:
    """The JSONL lines of a batch input file; custom_id is `{local_id}-{n}`."""
    return [
        {"custom_id": f"{local_id}-{n}", "method": "POST", "url": url, "body": {**body, "input": texts}}
        for n, texts in enumerate(file.requests)
    ]


class BatchLedger:
    """What was submitted, written and fsynced before the run moves on, so a restarted run
    re-attaches to its batches instead of paying for their texts again.

    `ledger.jsonl` holds one event per line (prepared, uploaded, submitted, collected); each
    prepared batch keeps its exact input file beside it, the truth for joining on custom_id.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = directory / "ledger.jsonl"

    def entries(self) -> dict[str, dict]:
        """Every batch by local id, its events folded into one dict."""
        entries: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    event = json.loads(line)
                except ValueError:  # a line torn by a kill mid-append: its batch was never recorded
                    continue
                entries.setdefault(event["local_id"], {}).update(event)
        return entries

    def open_entries(self) -> dict[str, dict]:
        """Batches prepared but not yet collected."""
        return {k: e for k, e in self.entries().items() if e.get("event") != "collected"}

    def record(self, local_id: str, event: str, **fields) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"local_id": local_id, "event": event, **fields}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def write_input(self, local_id: str, lines: list[dict]) -> Path:
        path = self.directory / f"{local_id}.jsonl"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def read_input(self, local_id: str) -> dict[str, list[str]]:
        """custom_id -> the texts that request holds."""
        lines = (self.directory / f"{local_id}.jsonl").read_text(encoding="utf-8").splitlines()
        return {line["custom_id"]: line["body"]["input"] for line in map(json.loads, lines)}
