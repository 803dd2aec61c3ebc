"""Reference throughput for `scripts/bench.sh`: PyTorch/transformers (f32) and llama.cpp (llama-cpp-python) on the
same SmolLM2 GGUF and the same WikiText tokens as `dsg bench`, then one table with dsg's numbers and the ratios.

Usage: python scripts/bench_reference.py MODEL.gguf DSG_BENCH.json [--reps 3]
Either reference is skipped (and said so) when its package is not installed.
"""

import argparse
import json
import os
import statistics
import time



def wikitext_ids(tokenize):
    path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "wikitext", "wikitext-2-raw-v1.test.raw")
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    return tokenize(text[:20000])


def bench_torch(model_path, reps, threads, lengths, decode_tokens):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    d, f = os.path.split(os.path.abspath(model_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    ids = wikitext_ids(lambda t: tok(t, add_special_tokens=False)["input_ids"])
    rows = []
    with torch.inference_mode():
        for n in lengths:
            x = torch.tensor([ids[:n]])
            model(x, logits_to_keep=1)
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                model(x, logits_to_keep=1)
                times.append(time.perf_counter() - t)
            rows.append(("prefill", n, statistics.median(times)))
        x = torch.tensor([ids[:32]])
        times = []
        for _ in range(reps):
            # generate() timing includes the prompt pass; subtract a measured prefill of the same prompt.
            t = time.perf_counter()
            model(x, logits_to_keep=1)
            pre = time.perf_counter() - t
            t = time.perf_counter()
            model.generate(x, max_new_tokens=decode_tokens, min_new_tokens=decode_tokens, do_sample=False)
            times.append((time.perf_counter() - t - pre) / decode_tokens)
        rows.append(("decode", decode_tokens, statistics.median(times) * decode_tokens))
    return rows


def bench_llama_cpp(model_path, reps, threads, lengths, decode_tokens):
    from llama_cpp import Llama

    llm = Llama(model_path=model_path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=1024, verbose=False)
    ids = wikitext_ids(lambda t: llm.tokenize(t.encode("utf-8"), add_bos=False, special=False))
    rows = []
    for n in lengths:
        times = []
        for i in range(reps + 1):
            llm.reset()
            t = time.perf_counter()
            llm.eval(ids[:n])
            if i:
                times.append(time.perf_counter() - t)
        rows.append(("prefill", n, statistics.median(times)))
    times = []
    for _ in range(reps):
        llm.reset()
        llm.eval(ids[:32])
        t = time.perf_counter()
        for _ in range(decode_tokens):
            nxt = int(llm.scores[llm.n_tokens - 1].argmax())
            llm.eval([nxt])
        times.append(time.perf_counter() - t)
    rows.append(("decode", decode_tokens, statistics.median(times)))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("dsg_json")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    dsg = json.load(open(a.dsg_json))
    table = {}
    for r in dsg:
        phase = "decode" if r["phase"].startswith("decode") else "prefill"
        key = (phase, r["tokens"]) if phase == "prefill" else (r["phase"], r["tokens"])
        table[key] = {"dsg": r["tokens_per_sec"]}
    lengths = [r["tokens"] for r in dsg if r["phase"] == "prefill"]
    decode_tokens = max(r["tokens"] for r in dsg if r["phase"] != "prefill")
    refs = {}
    for name, fn in (("pytorch_f32", bench_torch), ("llama_cpp", bench_llama_cpp)):
        try:
            refs[name] = fn(a.model, a.reps, a.threads, lengths, decode_tokens)
        except ImportError as e:
            print(f"# {name}: skipped ({e})")
    header = f"| phase | tokens | dsg tok/s | PyTorch f32 tok/s | llama.cpp tok/s | dsg / PyTorch | dsg / llama.cpp |"
    print(header)
    print("|---|---|---|---|---|---|---|")
    for key, v in table.items():
        phase, n = key
        ref_phase = "decode" if phase.startswith("decode") else "prefill"

        def ref(name):
            for p, m, s in refs.get(name, []):
                if p == ref_phase and m == n:
                    return n / s
            return None

        pt, lc = ref("pytorch_f32"), ref("llama_cpp")
        fmt = lambda x: f"{x:.1f}" if x else "-"
        ratio = lambda x: f"{v['dsg'] / x:.2f}" if x else "-"
        print(f"| {phase} | {n} | {v['dsg']:.1f} | {fmt(pt)} | {fmt(lc)} | {ratio(pt)} | {ratio(lc)} |")


if __name__ == "__main__":
    main()
