#!/usr/bin/env python3
"""Reference outputs of the second real model, Gemma-3-270M (base, Q4_K_M GGUF), from transformers and llama.cpp.

Why: the tiny Gemma 3 fixtures prove the decoder's mechanics; this shows that dsg, on the real 18-layer file, reproduces
what two independent implementations compute from the same GGUF: transformers (its GGUF loader dequantises every tensor
to f32 and undoes llama.cpp's conventions itself) and llama.cpp (llama-cpp-python, its own quantised kernels).

Protocol (the same in tests/model_gemma3_270m.rs): the WikiText-2 raw test text tokenised without special tokens, the
first 4096 tokens, BOS prepended, one causal pass of 4097 positions. Position i (0 = BOS) predicts text token i; the NLL
and top-1 of those 4096 predictions are recorded, with the perplexity exp(mean NLL).

Run from the repository root (about 5 minutes on 2 cores, about 8 GB of RAM):
    /work/venvs/gemma3/bin/python scripts/make_gemma3_270m_reference.py \
        --gguf ~/.cache/dsg/models/gemma-3-270m-q4_k_m.gguf --llama-python /work/llamavenv/bin/python
Output: tests/fixtures/gemma3_270m/{wikitext_ref.safetensors, wikitext_ref.json}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

N_TOKENS = 4096
RESID_LAYER = 6  # blocks.6.hook_resid_post = HF hidden_states[7]
RESID_ROWS = 32
GREEDY_PROMPT = "The capital of France is"
GREEDY_TOKENS = 12
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

LLAMA_CPP = r"""
import json, sys, time, numpy as np, llama_cpp
path, ids_path, out_path = sys.argv[1:4]
ids = json.load(open(ids_path))
llm = llama_cpp.Llama(model_path=path, n_ctx=len(ids) + 8, n_batch=512, n_ubatch=512, logits_all=True,
                      n_threads=2, verbose=False)
text = open(sys.argv[4], encoding="utf-8", newline="").read()  # CRLF kept, as transformers reads it
tok = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
t0 = time.perf_counter()
llm.eval(ids)
secs = time.perf_counter() - t0
nll, top1 = [], []
for s in range(0, len(ids), 256):  # float64 a slice at a time: the logits alone are 4 GB in float32
    sc = np.asarray(llm.scores[s:min(s + 256, len(ids))], dtype=np.float64)
    m = sc.max(1, keepdims=True)
    lse = np.log(np.exp(sc - m).sum(1)) + m[:, 0]
    top1 += sc.argmax(1).tolist()
    for i in range(sc.shape[0]):
        if s + i + 1 < len(ids):
            nll.append(float(lse[i] - sc[i, ids[s + i + 1]]))
json.dump({"version": llama_cpp.__version__, "tokens": tok, "nll": nll, "top1": top1,
           "eval_seconds": secs}, open(out_path, "w"))
"""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=str(Path.home() / ".cache/dsg/models/gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--wikitext", default="/work/shared/data/wikitext/wikitext-2-raw-v1.test.raw")
    ap.add_argument("--llama-python", default="/work/llamavenv/bin/python",
                    help="a Python with llama-cpp-python (0.3.36 here)")
    ap.add_argument("--out", default="tests/fixtures/gemma3_270m")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    gguf_path = Path(args.gguf)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    digest = sha256(gguf_path)
    assert digest == GGUF_SHA256, f"unexpected GGUF {digest}"
    raw = Path(args.wikitext).read_bytes()
    text = raw.decode("utf-8")
    info: dict = {"wikitext": {"path": "wikitext/wikitext-2-raw-v1.test.raw", "bytes": len(raw),
                               "sha256": hashlib.sha256(raw).hexdigest()}}

    with tempfile.TemporaryDirectory() as td:
        os.symlink(gguf_path.resolve(), Path(td) / gguf_path.name)
        tok = AutoTokenizer.from_pretrained(td, gguf_file=gguf_path.name)
    text_ids = tok(text, add_special_tokens=False).input_ids[:N_TOKENS]
    assert len(text_ids) == N_TOKENS
    bos = tok.bos_token_id
    ids = [bos] + text_ids
    ids_t = torch.tensor(ids, dtype=torch.int64)
    # llama.cpp first, in its own process, so that the two never hold their 4 GB of logits at once.
    with tempfile.TemporaryDirectory() as td:
        ids_path, res_path = Path(td) / "ids.json", Path(td) / "out.json"
        ids_path.write_text(json.dumps(ids))
        script = Path(td) / "llama_ref.py"
        script.write_text(LLAMA_CPP)
        subprocess.run([args.llama_python, str(script), str(gguf_path), str(ids_path), str(res_path),
                        args.wikitext], check=True)
        lc = json.loads(res_path.read_text())
    with tempfile.TemporaryDirectory() as td:
        os.symlink(gguf_path.resolve(), Path(td) / gguf_path.name)
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(td, gguf_file=gguf_path.name, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
        info["transformers_model_load_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    with torch.no_grad():
        o = model.model(input_ids=ids_t[None], output_hidden_states=True, use_cache=False)
        hidden = o.last_hidden_state[0]
        lse, top1, nll = [], [], []
        for s in range(0, len(ids), 512):
            logits = model.lm_head(hidden[s:s + 512]).double()
            lse.append(torch.logsumexp(logits, -1))
            top1.append(logits.argmax(-1))
        lse = torch.cat(lse)
        top1 = torch.cat(top1)
        for s in range(0, len(ids) - 1, 512):
            logits = model.lm_head(hidden[s:min(s + 512, len(ids) - 1)]).double()
            tgt = ids_t[s + 1:s + 1 + logits.shape[0]]
            nll.append(torch.logsumexp(logits, -1) - logits.gather(1, tgt[:, None])[:, 0])
        nll = torch.cat(nll)
    fwd_s = time.perf_counter() - t0
    resid = o.hidden_states[RESID_LAYER + 1][0, :RESID_ROWS].float().contiguous()
    ppl = math.exp(nll.mean().item())
    info["transformers"] = {"version": transformers.__version__, "torch": torch.__version__,
                            "perplexity": ppl, "forward_s": round(fwd_s, 2), "dtype": "float32",
                            "attn_implementation": "eager",
                            "top1_accuracy": float((top1[:-1] == ids_t[1:]).double().mean())}
    print("transformers:", info["transformers"], flush=True)

    lc_nll = np.array(lc["nll"])
    lc_top1 = np.array(lc["top1"])
    info["llama_cpp"] = {
        "version": lc["version"], "perplexity": float(np.exp(lc_nll.mean())),
        "eval_seconds": round(lc["eval_seconds"], 2),
        "tokenizer_first_4096_identical_to_transformers": lc["tokens"][:N_TOKENS] == text_ids,
        "tokenizer_full_text_identical_to_transformers": lc["tokens"] == tok(text, add_special_tokens=False).input_ids,
        "top1_agreement_with_transformers": float((lc_top1 == top1.numpy()).mean()),
    }
    print("llama.cpp:", info["llama_cpp"], flush=True)

    prompt_ids = tok(GREEDY_PROMPT, add_special_tokens=True).input_ids
    greedy = list(prompt_ids)
    with torch.no_grad():
        for _ in range(GREEDY_TOKENS):  # plain argmax with full recompute, not stopped at EOS
            greedy.append(int(model(input_ids=torch.tensor([greedy]), use_cache=False).logits[0, -1].argmax()))
    info["greedy"] = {"prompt": GREEDY_PROMPT, "prompt_ids": prompt_ids, "greedy_ids": greedy[len(prompt_ids):],
                      "greedy_text": tok.decode(greedy[len(prompt_ids):])}
    print("greedy:", info["greedy"], flush=True)
    info["protocol"] = ("first 4096 tokens of the WikiText-2 raw test text (no special tokens), BOS prepended, one "
                        "pass; nll[i] = -log softmax(logits[i])[ids[i+1]] for i in 0..4095")
    info["model"] = {"file": gguf_path.name, "sha256": digest, "bytes": gguf_path.stat().st_size,
                     "config": {k: v for k, v in model.config.to_dict().items()
                                if k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                         "num_key_value_heads", "head_dim", "intermediate_size", "rms_norm_eps",
                                         "rope_parameters", "sliding_window", "layer_types", "vocab_size",
                                         "query_pre_attn_scalar", "tie_word_embeddings")}}
    info["versions"] = {"python": platform.python_version(), "numpy": np.__version__}
    save_file({"input_ids": ids_t.contiguous(), "top1": top1.to(torch.int32).contiguous(),
               "llama_cpp_top1": torch.tensor(lc_top1, dtype=torch.int32),
               "nll": nll.float().contiguous(), "llama_cpp_nll": torch.tensor(lc_nll, dtype=torch.float32),
               "logsumexp": lse.float().contiguous(), f"resid_post_{RESID_LAYER}": resid},
              out / "wikitext_ref.safetensors",
              metadata={"about": json.dumps({"generator": "scripts/make_gemma3_270m_reference.py"})})
    (out / "wikitext_ref.json").write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n")
    print({p.name: p.stat().st_size for p in out.iterdir()})


if __name__ == "__main__":
    sys.exit(main())
