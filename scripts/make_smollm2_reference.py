#!/usr/bin/env python3
"""Reference outputs of the real default model, SmolLM2-135M-Instruct (Q4_1 GGUF), computed by HF transformers.

Why: the tiny fixtures prove the mechanics. This one shows that dsg, on the real 30-layer model, reproduces what
transformers computes from the same GGUF: the tokens of WikiText-2, the greedy prediction and NLL at every one of 4096
positions, the perplexity, one residual-stream slice, and a chat answer. It is small enough to commit (< 200 KB). The
model itself is not committed: fetch it as described in /work/shared/research/smollm2-gguf.md.

Run from the repository root (about 2-4 minutes on 2 cores, about 3 GB of RAM):
    /work/pyref/bin/python scripts/make_smollm2_reference.py \
        --gguf /root/.cache/dsg/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --wikitext ../shared/data/wikitext/wikitext-2-raw-v1.test.raw
Output: tests/fixtures/smollm2/{wikitext_ref.safetensors, wikitext_ref.json}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_gguf_fixtures import read_gguf, reference_from_dequantised, reference_numpy_interleaved  # noqa: E402

N_TOKENS = 4096
RESID_LAYER = 15  # blocks.15.hook_resid_post = HF hidden_states[16]
RESID_ROWS = 32
TOPK_ROWS = 256
CHAT_USER = "What is the capital of France?"
CHAT_NEW_TOKENS = 12
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tokenizer_from_gguf_metadata(path: Path) -> Tokenizer:
    """The tokenizer dsg should build: BPE from the GGUF tokens/merges, Digits + ByteLevel (llama.cpp `smollm`)."""
    r = gguf.GGUFReader(str(path))
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    assert r.fields["tokenizer.ggml.pre"].contents() == "smollm"
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                               merges=[tuple(m.split(" ")) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == int(gguf.TokenType.CONTROL)])
    return tok


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def dump_json(obj) -> str:
    """Indented JSON with lists of numbers kept on one line."""
    s = json.dumps(obj, indent=1, ensure_ascii=False)
    return re.sub(r"\[\s+([-0-9.e, \n]+?)\s+\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", s) + "\n"


@torch.no_grad()
def greedy(model, ids: list[int], n: int) -> list[int]:
    """Plain greedy decoding, full recompute each step (no cache, no generation_config knobs)."""
    out = list(ids)
    for _ in range(n):
        logits = model(input_ids=torch.tensor([out]), use_cache=False).logits[0, -1]
        out.append(int(logits.argmax()))
    return out[len(ids):]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default="/root/.cache/dsg/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--wikitext", default="/work/shared/data/wikitext/wikitext-2-raw-v1.test.raw")
    ap.add_argument("--out", default="tests/fixtures/smollm2")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--check-tokens", type=int, default=64,
                    help="positions for the float64 numpy cross-check of the logits")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gguf_path = Path(args.gguf)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info: dict = {}

    digest = sha256(gguf_path)
    assert digest == GGUF_SHA256, f"unexpected GGUF {digest}"

    # ---------------------------------------------------------------- text
    raw = Path(args.wikitext).read_bytes()
    text = raw.decode("utf-8")  # strict; CRLF kept as on disk
    info["wikitext"] = {"path": "wikitext/wikitext-2-raw-v1.test.raw", "bytes": len(raw),
                        "sha256": hashlib.sha256(raw).hexdigest(), "crlf_count": raw.count(b"\r\n")}

    # ---------------------------------------------------------------- tokenizers
    with tempfile.TemporaryDirectory() as td:
        os.symlink(gguf_path.resolve(), Path(td) / gguf_path.name)
        t0 = time.perf_counter()
        hf_tok = AutoTokenizer.from_pretrained(td, gguf_file=gguf_path.name)
        info["transformers_tokenizer_load_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(td, gguf_file=gguf_path.name, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
        info["transformers_model_load_s"] = round(time.perf_counter() - t0, 2)
    ref_tok = tokenizer_from_gguf_metadata(gguf_path)

    ids_ref = ref_tok.encode(text, add_special_tokens=False).ids
    ids_hf = hf_tok(text, add_special_tokens=False).input_ids
    n_diff_prefix = next((i for i, (a, b) in enumerate(zip(ids_ref, ids_hf)) if a != b), None)
    info["tokenizer"] = {
        "reference": "tokenizers BPE from GGUF tokens/merges, pre-tokenizer Sequence[Digits(individual_digits=True), "
                     "ByteLevel(add_prefix_space=False, use_regex=True)], decoder ByteLevel, the 17 CONTROL tokens "
                     "added as special; add_special_tokens=False (no BOS)",
        "transformers_gguf_pre_tokenizer": str(hf_tok.backend_tokenizer.pre_tokenizer),
        "transformers_gguf_decoder": str(hf_tok.backend_tokenizer.decoder),
        "full_text_tokens_reference": len(ids_ref),
        "full_text_tokens_transformers_gguf": len(ids_hf),
        "first_divergence_index": n_diff_prefix,
        "first_4096_identical": ids_ref[:N_TOKENS] == ids_hf[:N_TOKENS],
    }
    if n_diff_prefix is not None:
        i = n_diff_prefix
        info["tokenizer"]["divergence_context"] = {
            "reference_tokens": [ref_tok.id_to_token(t) for t in ids_ref[max(0, i - 3):i + 4]],
            "transformers_tokens": hf_tok.convert_ids_to_tokens(ids_hf[max(0, i - 3):i + 4]),
        }
    print("tokenizer:", json.dumps(info["tokenizer"], ensure_ascii=False), flush=True)

    ids = ids_ref[:N_TOKENS]
    assert len(ids) == N_TOKENS
    ids_t = torch.tensor(ids, dtype=torch.int64)
    info["input_text_prefix_repr"] = repr(ref_tok.decode(ids[:40]))

    # ---------------------------------------------------------------- one 4096-token forward
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with torch.no_grad():
        o = model(input_ids=ids_t[None], output_hidden_states=True, use_cache=False)
    fwd_s = time.perf_counter() - t0
    load_after = os.getloadavg()[0]
    logits = o.logits[0].float()  # [4096, 49152]
    resid = o.hidden_states[RESID_LAYER + 1][0, :RESID_ROWS].float().contiguous()
    lse = torch.logsumexp(logits, dim=-1)
    nll = (lse[:-1] - logits[:-1].gather(1, ids_t[1:, None])[:, 0]).contiguous()
    top1 = logits.argmax(-1).to(torch.int32)
    top5v, top5i = logits[:TOPK_ROWS].topk(5, dim=-1)
    ppl = math.exp(nll.double().mean().item())
    info["forward"] = {
        "seconds": round(fwd_s, 2), "threads": torch.get_num_threads(), "tokens": N_TOKENS,
        "device": "cpu", "cpu": cpu_name(), "dtype": "float32",
        "attn_implementation": "eager",
        "load_average_1min_before_after": [round(load_before, 2), round(load_after, 2)],
        "cpu_count": os.cpu_count(),
        "note": "wall time of one model() call with output_hidden_states; on a shared machine it varies with load",
    }
    info["perplexity"] = ppl
    info["mean_nll"] = nll.double().mean().item()
    info["perplexity_first_256"] = math.exp(nll[:255].double().mean().item())
    info["top1_accuracy"] = float((top1[:-1].long() == ids_t[1:]).float().mean())
    info["resid_post_15_mean_norm_rows_0_31"] = float(resid.norm(dim=-1).mean())
    info["resid_post_15_mean_norm_all_4096"] = float(o.hidden_states[RESID_LAYER + 1][0].norm(dim=-1).mean())
    # The same measurement on text whose CRLF were turned into LF (what Python's text-mode open() does). This is
    # how the 32.4 in research/smollm2-gguf.md was obtained; kept here so the two numbers can be told apart.
    ids_lf = ref_tok.encode(text.replace("\r\n", "\n"), add_special_tokens=False).ids[:256]
    with torch.no_grad():
        l_lf = model(input_ids=torch.tensor([ids_lf]), use_cache=False).logits[0]
    info["perplexity_first_256_if_crlf_normalised_to_lf"] = math.exp(torch.nn.functional.cross_entropy(
        l_lf[:-1], torch.tensor(ids_lf[1:])).item())
    print(f"forward {fwd_s:.1f}s, ppl {ppl:.4f}, ppl first 256 {info['perplexity_first_256']:.3f}", flush=True)
    del o

    # ---------------------------------------------------------------- independent cross-check of the logits
    n = args.check_tokens
    meta, tensors = read_gguf(gguf_path)
    r1 = reference_from_dequantised(meta, tensors, ids_t[:n])
    r3 = reference_numpy_interleaved(meta, tensors, np.array(ids[:n]))
    info["cross_check"] = {
        "positions": n,
        "max_abs_diff_transformers_gguf_vs_own_dequant_unpermute": (logits[:n] - r1).abs().max().item(),
        "max_abs_diff_transformers_gguf_vs_numpy_f64_interleaved_rope": float(np.abs(logits[:n].double().numpy() - r3).max()),
        "max_abs_logit": logits[:n].abs().max().item(),
        "argmax_agree_numpy_f64": float((logits[:n].argmax(-1).numpy() == r3.argmax(-1)).mean()),
    }
    print("cross-check:", info["cross_check"], flush=True)
    del tensors, r3

    # ---------------------------------------------------------------- chat
    messages = [{"role": "user", "content": CHAT_USER}]
    prompt = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    chat_ids = ref_tok.encode(prompt, add_special_tokens=False).ids
    chat_ids_hf = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(chat_ids_hf, "keys"):
        chat_ids_hf = chat_ids_hf["input_ids"]
    assert list(chat_ids_hf) == chat_ids, (chat_ids_hf, chat_ids)
    gen = greedy(model, chat_ids, CHAT_NEW_TOKENS)
    eos = hf_tok.eos_token_id
    info["chat"] = {
        "messages": messages,
        "prompt": prompt,
        "prompt_ids": chat_ids,
        "greedy_ids": gen,
        "greedy_text": ref_tok.decode(gen, skip_special_tokens=False),
        "greedy_text_until_eos": ref_tok.decode(gen[:gen.index(eos)] if eos in gen else gen),
        "first_eos_index": gen.index(eos) if eos in gen else None,
        "note": "exactly 12 argmax steps with full recompute, not stopped at EOS",
    }
    print("chat:", repr(info["chat"]["greedy_text"]), flush=True)

    # ---------------------------------------------------------------- specials
    info["special_tokens"] = {
        "bos": hf_tok.bos_token_id, "eos": hf_tok.eos_token_id, "pad": hf_tok.pad_token_id,
        "unk": hf_tok.unk_token_id,
        "bos_token": hf_tok.bos_token, "eos_token": hf_tok.eos_token, "pad_token": hf_tok.pad_token,
        "control_tokens": {t: ref_tok.token_to_id(t) for t in sorted(ref_tok.get_added_tokens_decoder().values(),
                                                                       key=lambda a: ref_tok.token_to_id(a.content))
                           for t in [t.content]},
        "add_bos_token": False,
    }
    info["chat_template"] = gguf.GGUFReader(str(gguf_path)).fields["tokenizer.chat_template"].contents()
    assert info["chat_template"] == hf_tok.chat_template

    info["model"] = {"file": gguf_path.name, "sha256": digest, "bytes": gguf_path.stat().st_size,
                     "config": {k: v for k, v in model.config.to_dict().items()
                                if k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                         "num_key_value_heads", "intermediate_size", "rms_norm_eps",
                                         "rope_parameters", "vocab_size", "tie_word_embeddings")}}
    info["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "gguf": getattr(gguf, "__version__", "0.19.0"),
                        "numpy": np.__version__}
    info["arrays"] = {
        "input_ids": "int64 [4096]: reference tokenizer ids of the WikiText-2 raw test text (first 4096)",
        "top1": "int32 [4096]: argmax of the logits at each position (prediction of the NEXT token)",
        "nll": "float32 [4095]: -log softmax(logits[i])[input_ids[i+1]]",
        "logsumexp": "float32 [4096]: logsumexp of the logits at each position",
        "top5_ids_first256": "int32 [256, 5]: top-5 token ids at positions 0..255, best first",
        "top5_logits_first256": "float32 [256, 5]: their logits",
        "resid_post_15": "float32 [32, 576]: blocks.15.hook_resid_post (HF hidden_states[16]) at positions 0..31",
    }

    st_path = out / "wikitext_ref.safetensors"
    save_file({
        "input_ids": ids_t.contiguous(),
        "top1": top1.contiguous(),
        "nll": nll.float().contiguous(),
        "logsumexp": lse.float().contiguous(),
        "top5_ids_first256": top5i.to(torch.int32).contiguous(),
        "top5_logits_first256": top5v.float().contiguous(),
        "resid_post_15": resid,
    }, st_path, metadata={"about": json.dumps({"generator": "scripts/make_smollm2_reference.py",
                                                "perplexity": f"{ppl:.6f}"}, sort_keys=True)})
    (out / "wikitext_ref.json").write_text(dump_json(info))

    # Round trip: the stored file reproduces what we computed (re-run the first 512 positions; causal, so the same).
    back = load_file(st_path)
    assert back["input_ids"].tolist() == ids
    with torch.no_grad():
        l2 = model(input_ids=back["input_ids"][None, :512], use_cache=False).logits[0]
    info_rt = {
        "max_abs_diff_logsumexp_512_vs_4096_pass": (torch.logsumexp(l2, -1) - back["logsumexp"][:512]).abs().max().item(),
        "top1_agree_512": float((l2.argmax(-1).to(torch.int32) == back["top1"][:512]).float().mean()),
    }
    print("round trip:", info_rt)
    info["round_trip"] = info_rt
    (out / "wikitext_ref.json").write_text(dump_json(info))
    print({p.name: p.stat().st_size for p in out.iterdir()})


if __name__ == "__main__":
    sys.exit(main())
