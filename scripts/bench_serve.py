#!/usr/bin/env python3
"""Load test for an OpenAI-compatible server (dsg serve, llama.cpp's server): N concurrent clients
send chat completions from a fixed prompt list, a share of them streaming, until a total number of
requests is done. Prints one JSON object: counts by status, lost responses, latency percentiles,
time to first token (streaming), completion tokens and tokens per second.

Every request must come back complete: a non-streamed answer with a choice and usage, a stream
ending in `data: [DONE]`. Anything else counts as lost.

    python scripts/bench_serve.py --url http://127.0.0.1:8080 --clients 64 --requests 1000
"""

import argparse
import asyncio
import json
import statistics
import time

import aiohttp

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe the water cycle in detail.",
    "What are the main causes of the French Revolution?",
    "Give me a recipe for a vegetable soup.",
    "Explain photosynthesis to a child.",
    "Write a poem about autumn leaves.",
    "How do airplanes stay in the air?",
    "Describe a day in the life of a medieval farmer.",
    "What makes a good teacher?",
    "How does a refrigerator keep food cold?",
    "Tell me about the history of the printing press.",
    "How is bacterial toxin production regulated?",
    "What do virologists study about transmissibility?",
    "Summarise the plot of a detective novel you invent.",
    "Why is the sky blue?",
]


def percentile(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def one(session, url, model, i, stream, max_tokens, stats):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    t0 = time.perf_counter()
    first = None
    tokens = 0
    try:
        async with session.post(url + "/v1/chat/completions", json=body) as r:
            stats["status"][r.status] = stats["status"].get(r.status, 0) + 1
            if r.status != 200:
                await r.read()
                return
            if stream:
                done = False
                async for raw in r.content:
                    line = raw.decode().strip()
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        break
                    delta = chunk["choices"][0].get("delta", {}) if chunk.get("choices") else {}
                    if delta.get("content"):
                        tokens += 1
                        if first is None:
                            first = time.perf_counter() - t0
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                if not done:
                    stats["lost"] += 1
                    return
                stats["ttft"].append(first if first is not None else time.perf_counter() - t0)
            else:
                j = await r.json()
                if not j.get("choices") or "usage" not in j:
                    stats["lost"] += 1
                    return
                tokens = j["usage"]["completion_tokens"]
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as e:
        stats["lost"] += 1
        stats["errors"].append(repr(e)[:200])
        return
    stats["latency"].append(time.perf_counter() - t0)
    stats["tokens"] += tokens


async def run(args):
    stats = {"status": {}, "lost": 0, "errors": [], "latency": [], "ttft": [], "tokens": 0}
    counter = iter(range(args.requests))
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=args.clients)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        async with session.get(args.url + "/v1/models") as r:
            model = (await r.json())["data"][0]["id"]

        async def client():
            for i in counter:
                stream = (i % 100) < args.stream_percent
                await one(session, args.url, model, i, stream, args.max_tokens, stats)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(args.clients)))
        wall = time.perf_counter() - t0
    lat = stats["latency"]
    return {
        "server": args.label,
        "clients": args.clients,
        "requests": args.requests,
        "stream_percent": args.stream_percent,
        "max_tokens": args.max_tokens,
        "status": {str(k): v for k, v in sorted(stats["status"].items())},
        "lost": stats["lost"],
        "errors": stats["errors"][:5],
        "wall_s": round(wall, 2),
        "completed": len(lat),
        "completion_tokens": stats["tokens"],
        "tokens_per_s": round(stats["tokens"] / wall, 1),
        "requests_per_s": round(len(lat) / wall, 2),
        "latency_p50_s": round(percentile(lat, 0.5), 3) if lat else None,
        "latency_p99_s": round(percentile(lat, 0.99), 3) if lat else None,
        "latency_mean_s": round(statistics.mean(lat), 3) if lat else None,
        "ttft_p50_s": round(percentile(stats["ttft"], 0.5), 3) if stats["ttft"] else None,
        "ttft_p99_s": round(percentile(stats["ttft"], 0.99), 3) if stats["ttft"] else None,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--label", default="server")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--stream-percent", type=int, default=50)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--timeout", type=float, default=900)
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
