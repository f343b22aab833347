"""The peers embedpipe is measured against, each driven the way its documentation shows."""

from __future__ import annotations

import asyncio
import time
from collections import deque

import httpx

from pipeline.tokens import cl100k_base


def langchain_embed(base_url: str, texts: list[str], batch: int) -> None:
    """LangChain's `OpenAIEmbeddings`: sequential requests of `chunk_size` texts; the openai
    client's own retries (which honour retry-after) with a generous attempt budget."""
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: its length check fetches a tokenizer over the network.
    model = OpenAIEmbeddings(model="text-embedding-3-small", base_url=base_url, api_key="sk-bench", chunk_size=batch, max_retries=8, check_embedding_ctx_length=False)
    vectors = model.embed_documents(texts)
    assert len(vectors) == len(texts)


def cookbook_embed(base_url: str, texts: list[str], batch: int, rpm: float, tpm: float) -> None:
    """The OpenAI cookbook's api_request_parallel_processor, ported to httpx: capacity tracked
    per request and token, refilled continuously, launches paused 15 s after any rate-limit
    error, 5 attempts per request. Set here to 100% of the limits (its default is 50%)."""
    asyncio.run(_cookbook(base_url, [texts[i : i + batch] for i in range(0, len(texts), batch)], rpm, tpm))


async def _cookbook(base_url: str, requests: list[list[str]], rpm: float, tpm: float, max_attempts: int = 5) -> None:
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
                cost = sum(len(t) for t in encoding.encode_ordinary_batch(pending))
            now = time.time()
            request_capacity = min(rpm, request_capacity + (now - updated) * rpm / 60)
            token_capacity = min(tpm, token_capacity + (now - updated) * tpm / 60)
            updated = now
            if pending is not None and request_capacity >= 1 and token_capacity >= cost:
                request_capacity -= 1
                token_capacity -= cost
                state["in_flight"] += 1
                asyncio.create_task(_cookbook_call(client, pending, retry, attempts, state, max_attempts))
                pending = None
            await asyncio.sleep(0.001)
            pause = 15 - (time.time() - state["last_rate_limit"])
            if pause > 0:
                await asyncio.sleep(pause)
    if state["failed"]:
        raise RuntimeError(f"{state['failed']} requests failed after {max_attempts} attempts")


async def _cookbook_call(client, texts, retry, attempts, state, max_attempts) -> None:
    try:
        response = await client.post("/embeddings", json={"model": "text-embedding-3-small", "input": texts}, headers={"authorization": "Bearer sk-bench"})
        body = response.json()
        if "error" in body:
            if "rate limit" in body["error"].get("message", "").lower():
                state["last_rate_limit"] = time.time()
            attempts[id(texts)] = attempts.get(id(texts), 0) + 1
            if attempts[id(texts)] < max_attempts:
                retry.append(texts)
            else:
                state["failed"] += 1
    finally:
        state["in_flight"] -= 1
