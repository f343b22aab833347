"""Reading an embeddings answer: whatever the server sent, a vector per good item and a reason
for each bad one, never an exception other than `ResponseError`."""

from __future__ import annotations

import base64
import binascii

import httpx2
import numpy as np

from pipeline.errors import ResponseError

_JSON_TYPES = {
    type(None): "null",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
}


def decode_response(items, count: int, dimensions: int | None) -> tuple[np.ndarray, dict[int, str]]:
    """Place the answer's base64 float32 items (JSON objects) by their `index`. Returns the
    vectors and, for each position without a usable one, why: missing, repeated, not base64,
    wrong length, non-finite or all zero. Whatever `items` holds, it raises nothing."""
    decoded = _decode_whole(items, count, dimensions)
    if decoded is not None:
        return decoded, {}
    if not isinstance(items, list):
        wrong = f"the answer's data is {_json_type(items)}, not a list"
        return np.zeros((count, dimensions or 0), dtype=np.float32), dict.fromkeys(range(count), wrong)
    by_index: dict[int, list] = {}
    for item in items:
        index = item.get("index") if isinstance(item, dict) else None
        if type(index) is int:  # not a bool, float or string, which may equal or hash like one
            by_index.setdefault(index, []).append(item.get("embedding"))
    vectors: np.ndarray | None = None
    bad: dict[int, str] = {}
    for i in range(count):
        found = by_index.get(i, [])
        if len(found) == 1:
            vector, problem = _decode_one(found[0], dimensions)
        else:
            vector, problem = None, f"index {i} {'repeated' if found else 'missing'}"
        if problem or vector is None:
            bad[i] = problem or "no vector"
            continue
        if vectors is None:
            dimensions = dimensions or len(vector)
            vectors = np.zeros((count, dimensions), dtype=np.float32)
        vectors[i] = vector
    return (vectors if vectors is not None else np.zeros((count, dimensions or 0), dtype=np.float32)), bad


def json_object(response: httpx2.Response) -> dict:
    """The answer's body as a JSON object; anything else is a ResponseError (retried)."""
    try:
        payload = response.json()
    except ValueError:  # not JSON, or not text at all (UnicodeDecodeError)
        payload = None
    if not isinstance(payload, dict):
        raise ResponseError(f"the answer is not a JSON object: {response.text[:80]!r}")
    return payload


def prompt_tokens(payload: dict) -> int | None:
    """The tokens the server says it counted, when it says so as a whole number."""
    usage = payload.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return tokens if type(tokens) is int and tokens >= 0 else None  # a bool is an int too


def _decode_whole(items, count: int, dimensions: int | None) -> np.ndarray | None:
    """Nearly every answer: each index once, every item a base64 string of one length, every
    vector finite and non-zero; decoded and checked as one matrix, not item by item. None for
    anything else, which `decode_response` then reads item by item to say what is wrong."""
    if not isinstance(items, list) or len(items) != count or not count:
        return None
    try:
        order = [item["index"] for item in items]
        raws = [binascii.a2b_base64(item["embedding"], strict_mode=True) for item in items]
    except (TypeError, KeyError, ValueError):  # not objects, no such key, not base64 (binascii.Error)
        return None
    width = len(raws[0])
    if not width or width % 4 or any(len(raw) != width for raw in raws) or (dimensions and width != 4 * dimensions):
        return None
    if any(type(index) is not int for index in order) or sorted(order) != list(range(count)):
        return None
    matrix = np.frombuffer(b"".join(raws), dtype="<f4").reshape(count, width // 4)
    if not (np.isfinite(matrix).all() and matrix.any(axis=1).all()):
        return None
    vectors = np.empty(matrix.shape, dtype=np.float32)
    vectors[np.array(order)] = matrix
    return vectors


def _decode_one(embedding, dimensions: int | None) -> tuple[np.ndarray | None, str | None]:
    if not isinstance(embedding, str):
        return None, f"the embedding is {_json_type(embedding)}, not a base64 string"
    try:
        raw = base64.b64decode(embedding, validate=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        return None, "the embedding is not valid base64"
    if len(raw) % 4 or not raw:
        return None, f"the embedding holds {len(raw)} bytes, not a whole number of float32 values (cut short?)"
    vector = np.frombuffer(raw, dtype="<f4")
    if dimensions and len(vector) != dimensions:
        return None, f"{len(vector)} dimensions, expected {dimensions}"
    if not np.isfinite(vector).all():
        return None, "non-finite values"
    if not vector.any():
        return None, "all zeros"
    return vector, None


def _json_type(value) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)
