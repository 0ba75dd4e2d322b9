"""Sampling a model behind an OpenAI-compatible API (``sampler=openai``; the card's ``api``): OpenAI,
Gemini's OpenAI endpoint, OpenRouter, any ``vllm serve``. Built on the official ``openai`` client (async).

- Requests: one per question with ``n`` samples where the endpoint honours ``n`` (``api.n``), else one
  per sample; seeded with the sample's (question, index) seed where the endpoint takes one (``api.seed``:
  one request per sample then, so sample i does not depend on the budget).
- Chat endpoints (``api.endpoint=chat``, hosted models) get the few-shot prompt as messages: each
  exemplar a user turn (its question, as the dataset's question template writes it) and an assistant
  turn (its solution), then the question as the last user turn. Completion endpoints get the prompt text.
- Limits per endpoint (``api.limits``): token buckets for requests and tokens per minute, paused by a
  ``Retry-After``; at most ``concurrency`` requests in flight.
- Failures: 408, 409, 429, 5xx, dropped connections and empty or unreadable responses are retried with
  exponential backoff and jitter; after ``max_retries`` the sample is stored as failed (finish=failed),
  which is not graded (neither right nor wrong). Any other 4xx (a bad key, an unknown model, a prompt too
  long) stops the run with a message naming the key to fix.
- Nothing lost, nothing paid twice: each sample goes to the store as its response arrives (``on_sample``);
  a killed run resumes with only the missing ones. ``api.batch``: OpenAI's Batch API (its discount); the
  batch id is kept in the store (``journal``), so a restarted run polls that batch instead of sending
  the requests again.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import time
from collections import Counter
from pathlib import Path

from cms import progress, resume
from cms.models import ModelError
from cms.sampling import Sample

log = logging.getLogger(__name__)

RETRY_STATUS = (408, 409, 429)
MAX_N = 128  # samples per request at most (OpenAI's limit on n)
DONE = ("completed", "failed", "expired", "cancelled")


class ApiError(ModelError):
    """A failure no retry can fix (a bad key, an unknown model, a prompt too long): the message names the fix."""


class Bucket:
    """A token bucket refilled at ``per_minute`` / 60 per second that holds one unit: requests leave evenly
    spaced, never in bursts, so any minute sees ``per_minute`` (a request of many tokens waits for a full
    bucket and leaves a debt). None: no limit. ``pause`` (a ``Retry-After``) stops it until then. A request that
    waited is credited from the moment it was due, not from when a busy machine woke it, so late wake-ups do not
    slow the rate down."""

    def __init__(self, per_minute: float | None):
        self.rate = per_minute / 60.0 if per_minute else None
        self.capacity = 1.0
        self.level, self.t, self.until = self.capacity, time.monotonic(), 0.0
        self.lock = asyncio.Lock()

    async def take(self, amount: float = 1.0) -> None:
        """Wait until ``amount`` can be taken (more than the capacity: until the bucket is full, leaving a debt)."""
        async with self.lock:
            now = time.monotonic()
            while True:
                if now < self.until:
                    await asyncio.sleep(self.until - now)
                    now = time.monotonic()
                    continue
                if self.rate is None:
                    return
                self.level, self.t = min(self.capacity, self.level + (now - self.t) * self.rate), now
                need = min(amount, self.capacity)
                if self.level >= need - 1e-9:  # (the refill up to a due moment may round just below)
                    self.level -= amount
                    return
                due = now + (need - self.level) / self.rate
                await asyncio.sleep(due - now)
                now = due if self.until <= due else time.monotonic()  # refilled up to when it was due, not a late wake-up

    def give_back(self, amount: float) -> None:
        """Return what was taken beyond the real use (negative: take the excess)."""
        if self.rate is not None:
            self.level = min(self.capacity, self.level + amount)

    def pause(self, seconds: float) -> None:
        self.until = max(self.until, time.monotonic() + seconds)


def retry_after(headers) -> float | None:
    """Seconds a response's ``Retry-After`` (or ``retry-after-ms``) asks to wait; None if it asks nothing."""
    if headers is None:
        return None
    if headers.get("retry-after-ms"):
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


def usage_of(body: dict) -> dict:
    """An API response's billed usage: input (of which cached_input), output (of which reasoning), and the
    provider's own cost where it reports one."""
    u = body.get("usage") or {}
    return {"input": u.get("prompt_tokens") or 0, "cached_input": (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
            "output": u.get("completion_tokens") or 0,
            "reasoning": (u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0, "cost": u.get("cost")}


def samples_of(body: dict, count: int, chat: bool) -> list[Sample] | None:
    """The ``count`` samples of a response body (the request's usage on the first); None when it is empty:
    too few choices, or a choice with no text at all (an empty string is a model's answer)."""
    choices = sorted(body.get("choices") or [], key=lambda c: c.get("index", 0))
    texts = [(c.get("message") or {}).get("content") if chat else c.get("text") for c in choices]
    if len(choices) < count or any(t is None for t in texts):
        return None
    usage = usage_of(body)
    per = round(usage["output"] / count)
    return [Sample(t, per, "length" if c.get("finish_reason") == "length" else "stop", usage if k == 0 else None)
            for k, (t, c) in enumerate(zip(texts[:count], choices))]


class OpenAISampler:
    """``generate(prompts, n, ...)`` against the card's endpoint; see the module docstring."""

    streams = True  # hands each sample to the store as it arrives
    hosted = True  # runs a model behind an API, never local weights (evaluation uses a local sampler)

    def __init__(self, path: str | None = None, card: dict | None = None, batch_size: int = 64, max_retries: int = 6,
                 timeout_s: float = 120.0, poll_s: float = 10.0, backoff_s: float = 0.5, seed: int = 0, **_):
        if not card or not card.get("api"):
            raise ModelError(f"sampler=openai samples a model behind an API, and the card {(card or {}).get('name')!r} has no api: "
                             "set family.<role>.api.base_url and .model (family=local_api shows how), or use sampler=hf")
        self.card, self.api = card, card["api"]
        limits = self.api.get("limits") or {}
        self.rpm, self.tpm, self.concurrency = limits.get("rpm"), limits.get("tpm"), max(1, int(limits.get("concurrency") or 1))
        self.batch_size, self.max_retries, self.timeout_s, self.poll_s, self.backoff_s = batch_size, max_retries, timeout_s, poll_s, backoff_s
        self.chat = self.api.get("endpoint", "chat") == "chat"
        key_env = self.api.get("key_env")
        if key_env and not os.environ.get(key_env):
            raise ApiError(f"{key_env} is not set: export {key_env}=<your key> for {self.api['base_url']} (the card {card['name']!r} "
                           f"names the variable in api.key_env; cms reads keys from the environment only and never writes them)")
        self.stats: Counter = Counter()

    def _client(self):
        from openai import AsyncOpenAI

        key_env = self.api.get("key_env")
        return AsyncOpenAI(base_url=self.api["base_url"], api_key=os.environ[key_env] if key_env else "EMPTY",
                           max_retries=0, timeout=self.timeout_s)

    def _requests(self, prompts, n, seeds, chats) -> list[tuple[int, list[int], dict]]:
        """(question, sample positions, request body) for every request."""
        out = []
        for q, prompt in enumerate(prompts):
            content = {"messages": chats[q] if chats and chats[q] else [{"role": "user", "content": prompt}]} if self.chat else {"prompt": prompt}
            if self.api.get("n", True) and not self.api.get("seed") and n > 1:
                for start in range(0, n, MAX_N):  # OpenAI takes n <= 128 per request
                    idx = list(range(start, min(n, start + MAX_N)))
                    out.append((q, idx, {**content, **({"n": len(idx)} if len(idx) > 1 else {})}))
            else:
                out += [(q, [i], {**content, **({"seed": seeds[q][i]} if self.api.get("seed") else {})}) for i in range(n)]
        return out

    def generate(self, prompts, n, temperature, top_p, max_new_tokens, stop, seeds, desc=None, chats=None, on_sample=None, journal=None):
        """``n`` samples per prompt; ``on_sample(q, i, sample)`` gets each as it arrives. A prompt's samples
        that failed after every retry come back with finish=failed."""
        decoding = {"model": self.api["model"], "max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                    **({"stop": list(stop)} if stop else {})}
        requests = [(q, idx, {**decoding, **body}) for q, idx, body in self._requests(prompts, n, seeds, chats)]
        results: list[list] = [[None] * n for _ in prompts]
        with progress.bar(len(prompts) * n, desc, unit="sample") as bar:
            def finished(q: int, idx: list[int], samples: list[Sample]) -> None:
                for i, s in zip(idx, samples):
                    results[q][i] = s
                    self.stats["failed" if s.finish == "failed" else "samples"] += 1
                    if on_sample:
                        on_sample(q, i, s)
                bar.update(len(idx))

            runner = self._batch(requests, journal, finished) if self.api.get("batch") else self._online(requests, finished)
            asyncio.run(runner)
        retries = {k: v for k, v in self.stats.items() if k.startswith("retry:")}
        log.info("api %s: %d requests, %d retries %s, %d samples, %d failed", self.api["model"], self.stats["requests"],
                 sum(retries.values()), dict(sorted(retries.items())), self.stats["samples"], self.stats["failed"])
        return results

    async def _online(self, requests, finished) -> None:
        client = self._client()
        gate, calls, tokens = asyncio.Semaphore(self.concurrency), Bucket(self.rpm), Bucket(self.tpm)
        try:
            await asyncio.gather(*(self._one(client, gate, calls, tokens, q, idx, body, finished) for q, idx, body in requests))
        finally:
            await client.close()

    async def _one(self, client, gate, calls, tokens, q, idx, body, finished) -> None:
        from openai import APIConnectionError, APIResponseValidationError, APIStatusError

        estimate = len(json.dumps(body.get("messages") or body.get("prompt"))) / 4 + body["max_tokens"] * len(idx)
        error = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(min(30.0, self.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random()))
            async with gate:  # a slot first, then the buckets: a Retry-After holds back every request not yet sent
                await calls.take()
                await tokens.take(estimate)
                self.stats["requests"] += 1
                try:
                    create = client.chat.completions.create if self.chat else client.completions.create
                    response = (await create(**body)).model_dump()
                except APIStatusError as err:
                    if err.status_code not in RETRY_STATUS and err.status_code < 500:
                        raise self._permanent(err) from None
                    wait = retry_after(err.response.headers)
                    if wait is not None:
                        calls.pause(wait)
                    kind, error = f"retry:http_{err.status_code}", f"HTTP {err.status_code}: {err.message}"
                except (APIConnectionError, APIResponseValidationError, json.JSONDecodeError) as err:
                    kind, error = "retry:connection", f"{type(err).__name__}: {err}"
                else:
                    samples = samples_of(response, len(idx), self.chat)
                    tokens.give_back(estimate - sum(usage_of(response)[k] for k in ("input", "output")))
                    if samples is not None:
                        finished(q, idx, samples)
                        return
                    kind, error = "retry:empty", "an empty response"
            self.stats[kind] += 1
        finished(q, idx, [Sample("", 0, "failed", error=f"{error} after {self.max_retries + 1} attempts") for _ in idx])

    def _permanent(self, err) -> ApiError:
        """The message for a 4xx no retry fixes, naming the key to fix."""
        where, status = f"the card {self.card['name']!r}", err.status_code
        detail = f"HTTP {status} from {self.api['base_url']}: {err.message}"
        if status in (401, 403):
            fix = f"set {self.api.get('key_env') or 'api.key_env'} to a key this endpoint accepts ({where}, api.key_env names the variable)"
        elif status == 404:
            fix = f"the endpoint has no model {self.api['model']!r}: fix api.model of {where} (family.<role>.api.model), or its api.base_url"
        elif "context" in str(err.message).lower() or "maximum" in str(err.message).lower():
            fix = "the prompt and its answer exceed the model's context: lower dataset.num_shots or dataset.max_new_tokens"
        else:
            fix = f"fix the request settings of {where} (family.<role>.api) or the sampler's decoding (sampler.temperature, sampler.top_p)"
        return ApiError(f"{detail}: {fix}. The samples stored before are kept; the same command resumes")

    async def _batch(self, requests, journal: Path | None, finished) -> None:
        """OpenAI's Batch API: one file of requests, one batch, polled until it ends; its id is kept in
        ``journal`` so a restarted run polls the same batch."""
        url = "/v1/chat/completions" if self.chat else "/v1/completions"
        lines = [{"custom_id": str(k), "method": "POST", "url": url, "body": body} for k, (_, _, body) in enumerate(requests)]
        digest = resume.digest(lines)
        state = json.loads(journal.read_text()) if journal and journal.exists() else None
        from openai import APIStatusError

        client = self._client()
        try:
            if state and state.get("requests") == digest:
                batch_id = state["batch_id"]
                log.info("api: polling batch %s, submitted before this run", batch_id)
            else:
                payload = "".join(json.dumps(line) + "\n" for line in lines).encode()
                upload = await client.files.create(file=("requests.jsonl", payload), purpose="batch")
                batch_id = (await client.batches.create(input_file_id=upload.id, endpoint=url, completion_window="24h")).id
                self.stats["requests"] += 1
                if journal:
                    tmp = journal.with_suffix(".tmp")
                    tmp.write_text(json.dumps({"batch_id": batch_id, "requests": digest, "input_file_id": upload.id}))
                    tmp.replace(journal)
                log.info("api: submitted batch %s of %d requests", batch_id, len(lines))
            while (batch := await self._poll(client, batch_id)).status not in DONE:
                await asyncio.sleep(self.poll_s)
            bodies = {}
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    for line in (await client.files.content(file_id)).text.splitlines():
                        if line.strip():
                            item = json.loads(line)
                            bodies[item["custom_id"]] = item
            for k, (q, idx, _) in enumerate(requests):
                item = bodies.get(str(k)) or {}
                response = item.get("response") or {}
                samples = samples_of(response.get("body") or {}, len(idx), self.chat) if response.get("status_code") == 200 else None
                if samples is None:
                    why = item.get("error") or (response.get("body") or {}).get("error") or f"batch {batch_id} ended {batch.status}"
                    samples = [Sample("", 0, "failed", error=str(why)) for _ in idx]
                finished(q, idx, samples)
        except APIStatusError as err:  # a refused key or an unknown model; a server failing for long stays as it is
            if err.status_code < 500 and err.status_code not in RETRY_STATUS:
                raise self._permanent(err) from None
            raise
        finally:
            await client.close()
        if journal and journal.exists():
            journal.unlink()

    async def _poll(self, client, batch_id: str):
        """The batch's state, asked again (with backoff) while the endpoint fails for a moment."""
        from openai import APIConnectionError, APIStatusError

        for attempt in range(self.max_retries + 1):
            try:
                return await client.batches.retrieve(batch_id)
            except APIStatusError as err:
                if err.status_code not in RETRY_STATUS and err.status_code < 500 or attempt == self.max_retries:
                    raise
            except APIConnectionError:
                if attempt == self.max_retries:
                    raise
            await asyncio.sleep(min(30.0, self.backoff_s * 2 ** attempt))

    def close(self) -> None:
        """Nothing held between calls: each ``generate`` opens and closes its own client."""
