#!/usr/bin/env python3
"""A tiny Gemma 3 GGUF, written the way llama.cpp's convert_hf_to_gguf.py writes Gemma 3, with a SentencePiece
tokenizer, and reference outputs for it.

Why: the real Gemma-3-270M file checks dsg's GGUF Gemma 3 mapping end to end but is 250 MB and slow; this one is
small enough to commit and exercises the same conventions: `general.architecture = gemma3`, llama.cpp's Gemma tensor
names (`post_attention_norm`, `ffn_norm` = pre-feed-forward, `post_ffw_norm`, `attn_{q,k}_norm`), every norm stored as
`1 + w` (the converter's `norm_shift`), Q/K *not* permuted (NEOX RoPE), `attention.key_length`, the sliding window,
a tied head, and a `llama` (SentencePiece BPE, scores + byte fallback) tokenizer.

The weights are those of the transformers tiny fixture `tests/fixtures/tiny/gemma3_local_global` (4 layers, layer
types sliding, sliding, full, sliding; window 4; RoPE bases 1e6 global / 1e4 local), so its recorded logits are the
model reference. Its layer pattern is every 3rd layer global, which llama.cpp hard-codes as 6 for Gemma 3; the file
states it in `gemma3.attention.sliding_window_pattern` (dsg honours the key; llama.cpp's Gemma 3 ignores it).
The tokenizer reference is transformers' own GGUF tokenizer conversion of this file.

Run from the repository root (seconds):
    /work/venvs/gemma3/bin/python scripts/make_gemma3_gguf_fixture.py
Output: tests/fixtures/gguf/tiny_gemma3.gguf, tests/fixtures/gguf/tiny_gemma3_tokens.json
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file
from transformers import AutoTokenizer

SRC = Path("tests/fixtures/tiny/gemma3_local_global")
OUT = Path("tests/fixtures/gguf")

NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}

# 256 ids: 4 controls, a user-defined "\n\n", five byte tokens (the UTF-8 bytes of "é" and "€", characters outside
# the vocabulary that must fall back to bytes), single characters and merges of them, padded with <unusedN> controls.
CONTROLS = ["<pad>", "<eos>", "<bos>", "<unk>"]
USER = ["\n\n"]
CHARS = list("▁abcdefghijklmnopqrstuvwxyzTHEW.,'")
MERGED = ["▁t", "he", "▁the", "in", "er", "▁a", "an", "on", "re", "▁th", "▁w", "at", "en", "nd", "▁and", "ing",
          "▁in", "es", "or", "ed", "▁o", "▁of", "▁s", "is", "it", "ar", "▁c", "ou", "▁b", "al", "▁T", "▁The",
          "▁W", "as", "le", "▁h", "ion", "ic", "ro", "▁wh", "▁which", "ch", "wh", "ich", "hi"]
BYTES = [0xC3, 0xA9, 0xE2, 0x82, 0xAC]


def vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = CONTROLS + USER + [f"<0x{b:02X}>" for b in BYTES] + CHARS + MERGED
    types = ([int(gguf.TokenType.CONTROL)] * len(CONTROLS) + [int(gguf.TokenType.USER_DEFINED)] * len(USER)
             + [int(gguf.TokenType.BYTE)] * len(BYTES) + [int(gguf.TokenType.NORMAL)] * (len(CHARS) + len(MERGED)))
    # Scores as in Gemma's file: controls -1000, bytes 0, normal pieces -(rank), merges ranked by list order.
    scores = [-1000.0] * (len(CONTROLS) + len(USER)) + [0.0] * len(BYTES)
    scores += [-(1000.0 + i) for i in range(len(CHARS))] + [-float(i) for i in range(len(MERGED))]
    while len(tokens) < 256:
        tokens.append(f"<unused{len(tokens)}>")
        types.append(int(gguf.TokenType.CONTROL))
        scores.append(-1000.0)
    assert len(tokens) == len(set(tokens)) == 256
    return tokens, scores, types


def main():
    cfg = json.loads((SRC / "config.json").read_text())
    sd = load_file(SRC / "model.safetensors")
    path = OUT / "tiny_gemma3.gguf"
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_type("model")
    w.add_name("dsg tiny gemma3")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(cfg["rope_parameters"]["full_attention"]["rope_theta"])
    w.add_sliding_window(cfg["sliding_window"])
    w.add_uint32("gemma3.attention.sliding_window_pattern", 3)
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    tokens, scores, types = vocab()
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, t in sd.items():
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        else:
            rest = name.removeprefix("model.layers.")
            layer, rest = rest.split(".", 1)
            module, kind = rest.rsplit(".", 1)
            out = f"blk.{layer}.{NAMES[module]}.{kind}"
        data = t.astype(np.float32)
        if name.endswith("norm.weight"):
            data = data + 1.0  # convert_hf_to_gguf's Gemma norm_shift
        w.add_tensor(out, np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    with tempfile.TemporaryDirectory() as td:
        os.symlink(path.resolve(), Path(td) / path.name)
        tok = AutoTokenizer.from_pretrained(td, gguf_file=path.name)
    texts = ["The theater in the north", "which of the chairs", "hello world", "a  b   c",
             "caf\u00e9 \u20ac5", "the\n\nend", "<bos>the", "WHEN THE", "it's, as it is."]
    cases = [{"text": t, "ids": tok(t, add_special_tokens=False).input_ids,
              "ids_with_bos": tok(t).input_ids, "decoded": tok.decode(tok(t, add_special_tokens=False).input_ids)}
             for t in texts]
    (OUT / "tiny_gemma3_tokens.json").write_text(json.dumps({
        "generator": "scripts/make_gemma3_gguf_fixture.py",
        "reference": "transformers AutoTokenizer.from_pretrained(gguf_file=tiny_gemma3.gguf)",
        "cases": cases}, indent=1, ensure_ascii=False) + "\n")
    print(path, path.stat().st_size, json.dumps(cases, ensure_ascii=False)[:2000])


if __name__ == "__main__":
    main()
