#!/usr/bin/env python3
"""Write tiny llama-architecture GGUF files, written the way llama.cpp writes them, and reference outputs for them.

Why: dsg's default model is a llama.cpp GGUF (SmolLM2-135M-Instruct, Q4_1 with a Q8_0 token_embd and a tied
head). The GGUF loader has to get four things right: the tensor names, the block quantisation formats, llama.cpp's
*permuted* Q/K rows (which need the interleaved-pair RoPE), and the byte-level BPE tokenizer stored in the metadata.
These files exercise all four with a model small enough to commit. Every file's logits come from an independent path:
dequantise with gguf-py, un-permute Q/K to HF layout, and run transformers' LlamaForCausalLM. Two further paths
cross-check that reference: transformers' own GGUF loader, and a float64 numpy forward pass that uses the
interleaved RoPE directly on the permuted weights.

Run from the repository root:
    /work/pyref/bin/python scripts/make_gguf_fixtures.py
Output: tests/fixtures/gguf/{tiny_*.gguf, tiny_*.gguf.reference.safetensors, tokenizer_cases.json, summary.json}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf import LlamaFileType
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

# ---------------------------------------------------------------- model shape
N_LAYER = 2
D_MODEL = 64
N_FF = 64  # small, to keep the all-F32 file under 300 KB
N_HEAD = 4
N_HEAD_KV = 2  # GQA 2:1 (SmolLM2 has 9:3)
HEAD_DIM = D_MODEL // N_HEAD
ROPE_THETA = 100000.0  # as SmolLM2
RMS_EPS = 1e-5
CTX = 128
VOCAB = 288  # 3 specials + 256 byte tokens + 29 merges
SEED = 2024

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
BOS_ID, EOS_ID, UNK_ID, PAD_ID = 1, 2, 0, 2

# A ChatML template in the style of SmolLM2's (same structure and default system prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Training text for the tiny BPE (fixed, so the merges are reproducible).
CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog sleeps in the sun, and the fox runs on.
There are 3 cats and 12 dogs in the house; the cats eat at 7 and the dogs at 8.
In 1998 the team won the game 21 to 14, then they went home and the fans sang.
What is the capital of France? The capital of France is Paris. Paris is on the Seine.
The history of the theory of the thing is the thing that the other theories then left out.
She said that the answer is in the theorem, and he said there is no answer in the theorem.
Indented code, so that a "Ġ Ġ" merge exists (SmolLM2 has it as merge 5):
        if x:
            return the_value
        else:
            return 0
""" * 4

# The reference input: ChatML with digits, so specials, digits and merges all occur.
REFERENCE_TEXT = "<|im_start|>user\nThe 3 cats sat on 12 mats in 1998.<|im_end|>\n<|im_start|>assistant\n"

TOKENIZER_CASES = [
    "Hello world",                      # plain ASCII
    "abc 123 4567",                     # digits are split one by one
    " the theory",                      # space-prefixed words (Ġ-merges)
    "a  12",                            # two spaces before digits: Digits must run before the ByteLevel regex
    "caf\u00e9 \u2615",                 # non-ASCII UTF-8 -> byte tokens
    "<|im_start|>user\nhi<|im_end|>",   # special tokens kept whole
]

# (file stem, llama.cpp file type, tied head?, tensor type for token_embd, output, other 2-D weights)
FILES = [
    ("tiny_f32", LlamaFileType.ALL_F32, True, Q.F32, None, Q.F32),
    ("tiny_f16", LlamaFileType.MOSTLY_F16, True, Q.F16, None, Q.F16),
    ("tiny_q8_0", LlamaFileType.MOSTLY_Q8_0, False, Q.Q8_0, Q.Q8_0, Q.Q8_0),
    ("tiny_q4_0", LlamaFileType.MOSTLY_Q4_0, False, Q.Q4_0, Q.Q4_0, Q.Q4_0),
    # Mirrors SmolLM2-135M-Instruct.Q4_1.gguf: tied head, token_embd Q8_0, other matrices Q4_1.
    ("tiny_q4_1", LlamaFileType.MOSTLY_Q4_1, True, Q.Q8_0, None, Q.Q4_1),
]

HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
PER_LAYER = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
for _l in range(N_LAYER):
    for _h, _g in PER_LAYER.items():
        HF_TO_GGUF[f"model.layers.{_l}.{_h}"] = f"blk.{_l}.{_g}"


def gguf_to_hf(name: str) -> str:
    """llama.cpp tensor name -> HF Llama parameter name, for any number of blocks."""
    if name.startswith("blk."):
        _, layer, rest = name.split(".", 2)
        hf = {g: h for h, g in PER_LAYER.items()}[rest]
        return f"model.layers.{layer}.{hf}"
    return {g: h for h, g in HF_TO_GGUF.items() if not h.startswith("model.layers.")}[name]


# ---------------------------------------------------------------- Q/K permutation (llama.cpp convert_hf_to_gguf.py)
def permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """LlamaModel.permute: HF half-split rotary layout -> llama.cpp interleaved-pair layout."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---------------------------------------------------------------- tokenizer
def byte_level_pretok():
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])


def train_tiny_bpe() -> tuple[list[str], list[str]]:
    """(tokens in id order, merges as 'a b' strings)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = byte_level_pretok()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False, min_frequency=1,
    )
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer)
    vocab = tok.get_vocab()
    assert len(vocab) == VOCAB and sorted(vocab.values()) == list(range(VOCAB)), len(vocab)
    tokens = [None] * VOCAB
    for t, i in vocab.items():
        tokens[i] = t
    assert tokens[:3] == SPECIALS
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert len(merges) == VOCAB - 256 - len(SPECIALS)
    return tokens, merges


def build_reference_tokenizer(tokens: list[str], merges: list[str]) -> Tokenizer:
    """The HF tokenizer dsg must match: BPE from the GGUF vocab/merges, Digits + ByteLevel, specials whole."""
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                               merges=[tuple(m.split(" ")) for m in merges]))
    tok.pre_tokenizer = byte_level_pretok()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return tok


# ---------------------------------------------------------------- weights
def make_base_model() -> dict[str, np.ndarray]:
    """An HF-layout random Llama state dict (untied; tied files drop lm_head)."""
    g = torch.Generator().manual_seed(SEED)
    sd = {}
    for hf in sorted(HF_TO_GGUF, key=lambda n: list(HF_TO_GGUF).index(n)):
        if hf.endswith("norm.weight") or "layernorm" in hf:
            shape = (D_MODEL,)
            v = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            shape = {
                "embed_tokens": (VOCAB, D_MODEL), "lm_head": (VOCAB, D_MODEL),
                "q_proj": (N_HEAD * HEAD_DIM, D_MODEL), "k_proj": (N_HEAD_KV * HEAD_DIM, D_MODEL),
                "v_proj": (N_HEAD_KV * HEAD_DIM, D_MODEL), "o_proj": (D_MODEL, N_HEAD * HEAD_DIM),
                "gate_proj": (N_FF, D_MODEL), "up_proj": (N_FF, D_MODEL), "down_proj": (D_MODEL, N_FF),
            }[next(k for k in ("embed_tokens", "lm_head", "q_proj", "k_proj", "v_proj", "o_proj",
                               "gate_proj", "up_proj", "down_proj") if k in hf)]
            v = 0.15 * torch.randn(shape, generator=g)
        sd[hf] = v.numpy().astype(np.float32)
    return sd


def hf_config(tied: bool) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=N_FF, num_hidden_layers=N_LAYER,
        num_attention_heads=N_HEAD, num_key_value_heads=N_HEAD_KV, max_position_embeddings=CTX,
        rms_norm_eps=RMS_EPS, rope_theta=ROPE_THETA, tie_word_embeddings=tied,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
    )


def write_gguf(path: Path, sd: dict[str, np.ndarray], ftype, tied: bool, t_embd, t_out, t_2d,
               tokens: list[str], merges: list[str]) -> dict[str, str]:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type("model")
    w.add_name("dsg tiny llama " + path.stem)
    w.add_block_count(N_LAYER)
    w.add_context_length(CTX)
    w.add_embedding_length(D_MODEL)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_file_type(int(ftype))
    w.add_vocab_size(VOCAB)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_add_space_prefix(False)
    w.add_add_bos_token(False)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([int(gguf.TokenType.CONTROL) if t in SPECIALS else int(gguf.TokenType.NORMAL)
                       for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(UNK_ID)
    w.add_pad_token_id(PAD_ID)
    w.add_chat_template(CHAT_TEMPLATE)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    types = {}
    for hf, name in HF_TO_GGUF.items():
        if hf == "lm_head.weight" and tied:
            continue
        data = sd[hf]
        if name.endswith("attn_q.weight"):
            data = permute(data, N_HEAD, N_HEAD)
        elif name.endswith("attn_k.weight"):
            data = permute(data, N_HEAD, N_HEAD_KV)
        if data.ndim == 1:
            qt = Q.F32
        elif name == "token_embd.weight":
            qt = t_embd
        elif name == "output.weight":
            qt = t_out
        else:
            qt = t_2d
        if qt == Q.F32:
            w.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
        elif qt == Q.F16:
            w.add_tensor(name, np.ascontiguousarray(data.astype(np.float16)))
        else:
            qdata = gguf.quants.quantize(data, qt)
            w.add_tensor(name, qdata, raw_dtype=qt)
        types[name] = qt.name
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return types


# ---------------------------------------------------------------- references
def read_gguf(path: Path):
    """Metadata dict and {name: (dequantised f32 array in numpy row-major [rows, cols], type name)}."""
    r = gguf.GGUFReader(str(path))
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        meta[k] = f.contents()
    tensors = {}
    for t in r.tensors:
        arr = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        # GGUF shape is [ne0 = cols, ne1 = rows]; numpy wants [rows, cols].
        shape = tuple(int(x) for x in reversed(t.shape))
        tensors[t.name] = (arr.reshape(shape), t.tensor_type.name, [int(x) for x in t.shape])
    return meta, tensors


def reference_from_dequantised(meta, tensors, ids: torch.Tensor) -> torch.Tensor:
    """R1: dequantise -> un-permute Q/K -> HF LlamaForCausalLM (f32, eager)."""
    n_head = meta["llama.attention.head_count"]
    n_kv = meta["llama.attention.head_count_kv"]
    tied = "output.weight" not in tensors
    cfg = LlamaConfig(
        vocab_size=meta["llama.vocab_size"], hidden_size=meta["llama.embedding_length"],
        intermediate_size=meta["llama.feed_forward_length"], num_hidden_layers=meta["llama.block_count"],
        num_attention_heads=n_head, num_key_value_heads=n_kv,
        max_position_embeddings=meta["llama.context_length"],
        rms_norm_eps=meta["llama.attention.layer_norm_rms_epsilon"], rope_theta=meta["llama.rope.freq_base"],
        tie_word_embeddings=tied,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.config._attn_implementation = "eager"
    sd = {}
    for name, (arr, _, _) in tensors.items():
        if name.endswith("attn_q.weight"):
            arr = unpermute(arr, n_head, n_head)
        elif name.endswith("attn_k.weight"):
            arr = unpermute(arr, n_head, n_kv)
        sd[gguf_to_hf(name)] = torch.from_numpy(np.ascontiguousarray(arr))
    if tied:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(m == "lm_head.weight" for m in missing), (missing, unexpected)
    if tied:
        model.tie_weights()
        assert torch.equal(model.lm_head.weight, sd["model.embed_tokens.weight"])
    with torch.no_grad():
        return model(input_ids=ids[None], use_cache=False).logits[0].float().contiguous()


def reference_numpy_interleaved(meta, tensors, ids: np.ndarray) -> np.ndarray:
    """R3: float64 numpy forward on the PERMUTED weights with llama.cpp's interleaved-pair RoPE (rope mode 0)."""
    T = {k: v[0].astype(np.float64) for k, v in tensors.items()}
    nh, nkv = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    d = meta["llama.embedding_length"]
    hd = d // nh
    eps = float(meta["llama.attention.layer_norm_rms_epsilon"])
    base = float(meta["llama.rope.freq_base"])
    L = len(ids)
    pos = np.arange(L)[:, None]
    inv = base ** (-np.arange(0, hd, 2) / hd)  # [hd/2]
    ang = pos * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rope_i(x):  # x [L, H, hd]; rotate pairs (2i, 2i+1)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        c, s = cos[:, None, :], sin[:, None, :]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
        return out

    x = T["token_embd.weight"][ids]
    mask = np.triu(np.full((L, L), -np.inf), 1)
    for l in range(meta["llama.block_count"]):
        p = f"blk.{l}."
        h = rms(x, T[p + "attn_norm.weight"])
        q = rope_i((h @ T[p + "attn_q.weight"].T).reshape(L, nh, hd))
        k = rope_i((h @ T[p + "attn_k.weight"].T).reshape(L, nkv, hd))
        v = (h @ T[p + "attn_v.weight"].T).reshape(L, nkv, hd)
        out = np.empty((L, nh, hd))
        for hh in range(nh):
            kv = hh // (nh // nkv)
            s = q[:, hh] @ k[:, kv].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            out[:, hh] = s @ v[:, kv]
        x = x + out.reshape(L, nh * hd) @ T[p + "attn_output.weight"].T
        h = rms(x, T[p + "ffn_norm.weight"])
        gte = h @ T[p + "ffn_gate.weight"].T
        x = x + ((gte / (1 + np.exp(-gte))) * (h @ T[p + "ffn_up.weight"].T)) @ T[p + "ffn_down.weight"].T
    x = rms(x, T["output_norm.weight"])
    head = T.get("output.weight", T["token_embd.weight"])
    return x @ head.T


def reference_transformers_gguf(path: Path, ids: torch.Tensor):
    """R2: transformers' own GGUF loader (dequantises and reverse-permutes internally)."""
    with tempfile.TemporaryDirectory() as td:
        shutil.copy(path, Path(td) / path.name)
        model = AutoModelForCausalLM.from_pretrained(td, gguf_file=path.name, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
        tok = AutoTokenizer.from_pretrained(td, gguf_file=path.name)
        with torch.no_grad():
            logits = model(input_ids=ids[None], use_cache=False).logits[0].float()
    return logits, tok


def quant_check(sd, tensors) -> dict:
    """Per tensor: max |dequant(file) - original| relative to max |original|."""
    n_head, n_kv = N_HEAD, N_HEAD_KV
    out = {}
    for name, (arr, qt, _) in tensors.items():
        hf = gguf_to_hf(name)
        orig = sd[hf]
        if name.endswith("attn_q.weight"):
            arr = unpermute(arr, n_head, n_head)
        elif name.endswith("attn_k.weight"):
            arr = unpermute(arr, n_head, n_kv)
        out[name] = float(np.abs(arr - orig).max() / np.abs(orig).max())
    return out


def compact_json(obj) -> str:
    """Indented JSON whose innermost lists (ids, tokens) stay on one line."""
    lines = ["{"]
    items = list(obj.items())
    for n, (k, v) in enumerate(items):
        end = "," if n + 1 < len(items) else ""
        if k == "cases":
            lines.append(f' {json.dumps(k)}: [')
            for m, c in enumerate(v):
                lines.append("  " + json.dumps(c, ensure_ascii=False) + ("," if m + 1 < len(v) else ""))
            lines.append(" ]" + end)
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}{end}")
    lines.append("}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/gguf")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one thread: the summation order, and so every bit, is fixed
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # The permutation helpers are inverses of each other (and of transformers' reverse permute).
    probe = np.arange(N_HEAD_KV * HEAD_DIM * 3, dtype=np.float32).reshape(N_HEAD_KV * HEAD_DIM, 3)
    assert np.array_equal(unpermute(permute(probe, N_HEAD, N_HEAD_KV), N_HEAD, N_HEAD_KV), probe)

    tokens, merges = train_tiny_bpe()
    ref_tok = build_reference_tokenizer(tokens, merges)
    ids = ref_tok.encode(REFERENCE_TEXT, add_special_tokens=False).ids
    ids_t = torch.tensor(ids, dtype=torch.int64)
    sd = make_base_model()

    summary = {"reference_text": REFERENCE_TEXT, "input_ids": ids, "files": {}}
    hf_gguf_tok = None
    for stem, ftype, tied, t_embd, t_out, t_2d in FILES:
        path = out / f"{stem}.gguf"
        types = write_gguf(path, sd, ftype, tied, t_embd, t_out, t_2d, tokens, merges)
        meta, tensors = read_gguf(path)
        assert meta["tokenizer.ggml.tokens"] == tokens and meta["tokenizer.ggml.merges"] == merges

        r1 = reference_from_dequantised(meta, tensors, ids_t)
        r2, tok2 = reference_transformers_gguf(path, ids_t)
        r3 = reference_numpy_interleaved(meta, tensors, np.array(ids))
        d12 = (r1 - r2).abs().max().item()
        d13 = float(np.abs(r1.double().numpy() - r3).max())
        assert d13 < 1e-4, f"{stem}: numpy interleaved-RoPE reference disagrees: {d13}"
        assert d12 < 1e-4, f"{stem}: transformers GGUF loader disagrees: {d12}"
        hf_gguf_tok = tok2

        # The un-quantised model through the same path, to show what quantisation costs.
        r_exact = reference_from_dequantised(
            meta, {k: (sd[gguf_to_hf(k)] if not (k.endswith("attn_q.weight") or k.endswith("attn_k.weight"))
                       else permute(sd[gguf_to_hf(k)], N_HEAD, N_HEAD if "attn_q" in k else N_HEAD_KV),
                       v[1], v[2]) for k, v in tensors.items()}, ids_t)

        ref_path = out / f"{stem}.gguf.reference.safetensors"
        # One metadata key: safetensors writes the metadata map in hash order, so several keys make the bytes vary.
        save_file({"input_ids": ids_t.contiguous(), "logits": r1}, ref_path, metadata={"about": json.dumps({
            "generator": "scripts/make_gguf_fixtures.py",
            "method": "gguf.quants.dequantize -> un-permute Q/K -> transformers LlamaForCausalLM f32 eager",
            "text": REFERENCE_TEXT,
        }, sort_keys=True)})
        # Round trip: re-read file and reference, recompute, must be identical.
        meta_b, tensors_b = read_gguf(path)
        loaded = load_file(ref_path)
        assert torch.equal(reference_from_dequantised(meta_b, tensors_b, loaded["input_ids"]), loaded["logits"])

        summary["files"][path.name] = {
            "bytes": path.stat().st_size,
            "reference_bytes": ref_path.stat().st_size,
            "file_type": ftype.name,
            "tied": tied,
            "tensor_types": types,
            "tensor_shapes_gguf_ne": {k: v[2] for k, v in tensors.items()},
            "max_abs_diff_R1_vs_transformers_gguf": d12,
            "max_abs_diff_R1_vs_numpy_f64_interleaved": d13,
            "max_abs_logit": r1.abs().max().item(),
            "max_abs_diff_vs_unquantised_weights": (r1 - r_exact).abs().max().item(),
            "argmax_agree_with_unquantised": float((r1.argmax(-1) == r_exact.argmax(-1)).float().mean()),
            "max_rel_weight_error": max(quant_check(sd, tensors).values()),
        }
        s = summary["files"][path.name]
        print(f"{path.name}: {s['bytes']} B, R1-vs-transformers-gguf {d12:.2e}, R1-vs-numpy-f64 {d13:.2e}, "
              f"max|logit| {s['max_abs_logit']:.3f}, vs-unquantised {s['max_abs_diff_vs_unquantised_weights']:.3f}, "
              f"max rel weight err {s['max_rel_weight_error']:.4f}", flush=True)

    # Tokenizer reference cases.
    cases = []
    hf_gguf_tok_mismatch = []
    for text in TOKENIZER_CASES + [REFERENCE_TEXT]:
        enc = ref_tok.encode(text, add_special_tokens=False)
        assert ref_tok.decode(enc.ids, skip_special_tokens=False) == text
        t2 = hf_gguf_tok(text, add_special_tokens=False).input_ids
        case = {"text": text, "ids": enc.ids, "tokens": enc.tokens}
        if t2 != enc.ids:
            case["transformers_gguf_ids"] = t2
            hf_gguf_tok_mismatch.append(text)
        cases.append(case)
    (out / "tokenizer_cases.json").write_text(compact_json({
        "about": "ids from a HF `tokenizers` BPE built from the GGUF vocab/merges with pre-tokenizer "
                 "Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)], "
                 "decoder ByteLevel, the 3 control tokens added as special; add_special_tokens=False (no BOS). "
                 "Same vocabulary in every tiny_*.gguf. `transformers_gguf_ids` appears only where transformers "
                 "5.23's own GGUF tokenizer (ByteLevel without Digits) gives different ids; that builder is "
                 "wrong for pre=smollm, the `ids` are the reference.",
        "tokenizer_ggml_pre": "smollm",
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "unk_token_id": UNK_ID, "pad_token_id": PAD_ID,
        "cases": cases,
    }) + "\n")
    summary["tokenizer_cases_where_transformers_gguf_differs"] = hf_gguf_tok_mismatch
    summary["hf_gguf_tokenizer_pre_tokenizer"] = str(hf_gguf_tok.backend_tokenizer.pre_tokenizer)
    summary["n_merges"] = len(merges)
    summary["first_merges"] = merges[:10]
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    print("transformers GGUF tokenizer differs on:", hf_gguf_tok_mismatch)


if __name__ == "__main__":
    sys.exit(main())
