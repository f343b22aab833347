"""The peers embedpipe is measured against, each driven the way its documentation shows."""

from __future__ import annotations

import asyncio
import time
from collections import deque

import httpx

from pipeline.text.tokens import cl100k_base


def langchain_embed(base_url: str, texts: list[str], batch: int | None = None) -> list[list[float]]:
    """LangChain's `OpenAIEmbeddings`: sequential requests of `chunk_size` texts (its default
    1000 when `batch` is None); the openai client's own retries (which honour retry-after) with a
    generous attempt budget."""
    from langchain_openai import OpenAIEmbeddings

    size = {"chunk_size": batch} if batch else {}
    # check_embedding_ctx_length=False: its length check fetches a tokenizer over the network.
    model = OpenAIEmbeddings(model="text-embedding-3-small", base_url=base_url, api_key="sk-bench", max_retries=8,
                             check_embedding_ctx_length=False, **size)
    return model.embed_documents(texts)


def openai_loop_embed(base_url: str, texts: list[str], batch: int = 256) -> list[list[float]]:
    """The plain `openai` SDK as a new user writes it: one request of `batch` texts after another,
    the SDK's own retries (which honour retry-after-ms) raised to 8 so that it finishes."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="sk-bench", max_retries=8)
    vectors = []
    for start in range(0, len(texts), batch):
        response = client.embeddings.create(model="text-embedding-3-small", input=texts[start : start + batch])
        vectors.extend(item.embedding for item in response.data)
    return vectors


def cookbook_embed(base_url: str, texts: list[str], batch: int, rpm: float, tpm: float) -> list[list[float] | None]:
    """The OpenAI cookbook's api_request_parallel_processor, ported to httpx: capacity tracked
    per request and token, refilled continuously, launches paused 15 s after any rate-limit
    error, 5 attempts per request. Set here to 100% of the limits (its default is 50%).

    Like the cookbook, it logs a request that failed every attempt and goes on: its texts' vectors
    are None in what it returns."""
    vectors: list[list[float] | None] = [None] * len(texts)
    requests = [(start, texts[start : start + batch]) for start in range(0, len(texts), batch)]
    asyncio.run(_cookbook(base_url, requests, vectors, rpm, tpm))
    return vectors


async def _cookbook(base_url: str, requests: list[tuple[int, list[str]]], vectors: list, rpm: float, tpm: float,
                    max_attempts: int = 5) -> None:
    encoding = cl100k_base()
    todo, retry = deque(requests), deque()
    attempts: dict[int, int] = {}
    state = {"last_rate_limit": 0.0, "failed": 0, "in_flight": 0}
    request_capacity, token_capacity, updated = rpm, tpm, time.time()
    pending = None
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=None)) as client:
        while todo or retry or pending or state["in_flight"]:
            if pending is None and (retry or todo):
                pending = retry.popleft() if retry else todo.popleft()
                cost = sum(len(t) for t in encoding.encode_ordinary_batch(pending[1]))
            now = time.time()
            request_capacity = min(rpm, request_capacity + (now - updated) * rpm / 60)
            token_capacity = min(tpm, token_capacity + (now - updated) * tpm / 60)
            updated = now
            if pending is not None and request_capacity >= 1 and token_capacity >= cost:
                request_capacity -= 1
                token_capacity -= cost
                state["in_flight"] += 1
                asyncio.create_task(_cookbook_call(client, pending, vectors, retry, attempts, state, max_attempts))
                pending = None
            await asyncio.sleep(0.001)
            pause = 15 - (time.time() - state["last_rate_limit"])
            if pause > 0:
                await asyncio.sleep(pause)


async def _cookbook_call(client, request, vectors, retry, attempts, state, max_attempts) -> None:
    start, texts = request
    try:
        body = {"model": "text-embedding-3-small", "input": texts}
        try:
            answer = (await client.post("/embeddings", json=body, headers={"authorization": "Bearer sk-bench"})).json()
        except (httpx.HTTPError, ValueError) as exc:  # the cookbook retries any exception alike
            answer = {"error": {"message": str(exc)}}
        if "error" not in answer:
            for item in answer["data"]:
                vectors[start + item["index"]] = item["embedding"]
            return
        if "rate limit" in answer["error"].get("message", "").lower():
            state["last_rate_limit"] = time.time()
        attempts[start] = attempts.get(start, 0) + 1
        if attempts[start] < max_attempts:
            retry.append(request)
        else:
            state["failed"] += 1  # logged by the cookbook; its texts get no vector
    finally:
        state["in_flight"] -= 1
