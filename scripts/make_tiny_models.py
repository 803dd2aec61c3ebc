#!/usr/bin/env python3
"""Write tiny, randomly initialised HF models and their reference outputs.

Why: dsg has one hookable decoder whose per-architecture differences (norm kind
and offset, activation, RoPE variant, sliding windows, soft-caps, biases, tied
head) are data. Each folder here exercises a subset of those differences with a
model small enough to commit, so a Rust test can load `config.json` +
`model.safetensors`, run the same token ids, and compare logits and every
residual-stream state against HF transformers.

Every parameter is re-initialised from a seeded generator (norm weights around
1, or around 0 for Gemma's (1 + w) RMSNorm; all biases non-zero), so a bug in a
norm, a bias, or a tied head cannot hide behind a default init of ones/zeros.

Run from the repository root:
    /work/pyref/bin/python scripts/make_tiny_models.py
Output: tests/fixtures/tiny/<name>/{config.json, model.safetensors, reference.safetensors}
Re-running reproduces identical files (fixed seeds, CPU, f32, eager attention).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)
from transformers.models.gemma2 import modeling_gemma2

SEQ_LENS = (7, 13, 20)
VOCAB = 256

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=None,
)


def specs():
    """name -> (config, init options, human-readable highlights)."""
    out = {}

    out["llama_gqa"] = (
        LlamaConfig(
            **COMMON,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            tie_word_embeddings=False,
        ),
        dict(seed=1001, norm_center=1.0),
        "Llama, 2 layers, 4 q / 2 kv heads (GQA), head_dim 16, SiLU SwiGLU, RMSNorm eps 1e-6, "
        "rope_theta 10000 (default RoPE, HF half-split rotate_half), untied lm_head",
    )

    out["llama3_tied"] = (
        LlamaConfig(
            **COMMON,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            # original_max_position_embeddings 64 puts the RoPE wavelengths of this
            # head_dim-16 model in all three llama3 regimes: pair 0 (wavelength 6.3 <
            # 64/4) unchanged, pair 1 (32.4, between 16 and 64) smoothly
            # interpolated, pairs 2..7 (> 64) divided by factor 8.
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            tie_word_embeddings=True,
        ),
        dict(seed=1002, norm_center=1.0),
        "Llama 3.x style: rope_type llama3 (factor 8, low 1, high 4, original_max_position_embeddings 64), "
        "rope_theta 500000, RMSNorm eps 1e-5, tied embeddings (no lm_head.weight in the file), "
        "4 q / 2 kv heads, 2 layers",
    )

    out["mistral_window"] = (
        MistralConfig(
            **COMMON,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            sliding_window=8,
            tie_word_embeddings=False,
        ),
        dict(seed=1003, norm_center=1.0),
        "Mistral, sliding_window 8 on every layer (shorter than the 13- and 20-token inputs), "
        "4 q / 2 kv heads, untied lm_head, rope_theta 10000",
    )

    out["qwen2_bias"] = (
        Qwen2Config(
            **COMMON,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            use_sliding_window=False,
            sliding_window=None,
            tie_word_embeddings=True,
        ),
        dict(seed=1004, norm_center=1.0),
        "Qwen2: q/k/v projections WITH bias (o_proj and MLP without), 4 q / 2 kv heads, "
        "rope_theta 1e6, use_sliding_window false (every layer full attention), tied embeddings "
        "(like Qwen2/2.5-0.5B)",
    )

    gemma_common = dict(
        **COMMON,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # 4 * 32 = 128 != hidden 64: o_proj is [64, 128]
        query_pre_attn_scalar=24,  # != head_dim: scaling is 24**-0.5, not 32**-0.5
        hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        sliding_window=4,
        tie_word_embeddings=True,
    )
    out["gemma2_softcap"] = (
        Gemma2Config(**gemma_common, attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
        # Large q/k and embedding init so that the (real Gemma 2) caps 50 / 30 bind.
        dict(seed=1005, norm_center=0.0, qk_std=0.55, embed_std=1.6),
        "Gemma 2: (1 + w) RMSNorm with 4 norms per block (input, post_attention, pre_feedforward, "
        "post_feedforward), embeddings scaled by sqrt(64) = 8, GeGLU with gelu_pytorch_tanh, "
        "head_dim 32 (heads*head_dim 128 != hidden 64), query_pre_attn_scalar 24, "
        "3 layers: layer 0 and 2 sliding (window 4), layer 1 global, "
        "attn_logit_softcapping 50, final_logit_softcapping 30, tied embeddings. "
        "q/k and embedding weights are scaled up so both caps bind",
    )
    out["gemma2_small_caps"] = (
        Gemma2Config(**{**gemma_common, "head_dim": 16},
                     attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
        dict(seed=1006, norm_center=0.0, qk_std=0.25, embed_std=0.25),
        "As gemma2_softcap but head_dim 16 (heads*head_dim = hidden) with query_pre_attn_scalar 24, "
        "and small caps (attn 5.0, final 3.0) that bend most values and clip the largest",
    )

    gemma3_common = dict(
        **COMMON,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )
    out["gemma3_local_global"] = (
        Gemma3TextConfig(
            **gemma3_common,
            num_hidden_layers=4,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=4,
            # Every 3rd layer global: sliding, sliding, full, sliding (the last layer is local).
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
        ),
        dict(seed=1008, norm_center=0.0, pattern=3),
        "Gemma 3 (gemma3_text): (1 + w) RMSNorm on each q and k head before RoPE, Gemma 2's four (1 + w) "
        "norms per block, embeddings scaled by sqrt(64) = 8, GeGLU, 4 layers with layer_types "
        "[sliding, sliding, full, sliding] (sliding_window_pattern 3 in the 4.x layout), window 4, "
        "RoPE base 1e4 on sliding layers and 1e6 on the global one, query_pre_attn_scalar 16 = head_dim, "
        "no soft-caps, tied embeddings",
    )
    out["gemma3_scaled"] = (
        Gemma3TextConfig(
            **gemma3_common,
            num_hidden_layers=3,
            head_dim=32,  # 4 * 32 = 128 != hidden 64: o_proj is [64, 128], q_norm/k_norm [32]
            query_pre_attn_scalar=24,  # != head_dim: scaling is 24**-0.5
            sliding_window=6,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0},
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 100000.0},
            },
        ),
        dict(seed=1009, norm_center=0.0, pattern=2),
        "Gemma 3 with rope_scaling linear (factor 4) on the global layer only (base 1e5), base 1e3 on the "
        "sliding layers, head_dim 32 (heads*head_dim 128 != hidden 64), query_pre_attn_scalar 24, "
        "window 6, layer_types [sliding, full, sliding] (sliding_window_pattern 2), no soft-caps, tied",
    )

    out["gpt2"] = (
        GPT2Config(
            vocab_size=VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=64,
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=True,
        ),
        dict(seed=1007, norm_center=1.0),
        "GPT-2: learned absolute positions (wpe, n_positions 64), LayerNorm with bias (eps 1e-5), "
        "gelu_new MLP (n_inner 4*64 = 256), biases everywhere (all non-zero), fused c_attn, "
        "Conv1D weights stored [in, out] (transposed vs nn.Linear), tied lm_head",
    )
    return out


def reinit_(model: torch.nn.Module, seed: int, norm_center: float, std: float = 0.1,
            qk_std: float | None = None, embed_std: float | None = None) -> None:
    """Overwrite every parameter from a seeded generator; nothing is left 0 or 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = any(t in name for t in ("norm", "ln_")) and "proj" not in name
            if is_norm and name.endswith("weight"):
                v = norm_center + 0.1 * torch.randn(p.shape, generator=g)
            elif name.endswith("bias"):
                v = 0.05 * torch.randn(p.shape, generator=g)
            elif embed_std is not None and "embed_tokens" in name:
                v = embed_std * torch.randn(p.shape, generator=g)
            elif qk_std is not None and ("q_proj" in name or "k_proj" in name):
                v = qk_std * torch.randn(p.shape, generator=g)
            else:
                v = std * torch.randn(p.shape, generator=g)
            p.copy_(v)


def make_inputs(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g, dtype=torch.int64) for n in SEQ_LENS]


@torch.no_grad()
def run(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(input_ids=ids[None, :], output_hidden_states=True, use_cache=False)
    logits = out.logits[0].float().contiguous()
    hidden = torch.stack([h[0] for h in out.hidden_states]).float().contiguous()
    return logits, hidden


class AttnLogitRecorder:
    """Wrap Gemma 2's eager attention to record the pre-softcap attention logits."""

    def __init__(self):
        self.values = []
        self._orig = modeling_gemma2.eager_attention_forward

    def __enter__(self):
        orig = self._orig
        rec = self

        def wrapped(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                    softcap=None, **kwargs):
            k = modeling_gemma2.repeat_kv(key, module.num_key_value_groups)
            raw = torch.matmul(query, k.transpose(2, 3)) * scaling
            if attention_mask is not None:
                keep = attention_mask[:, :, :, : k.shape[-2]] == 0
                raw = raw.masked_select(keep.expand_as(raw))
            rec.values.append(raw.flatten())
            return orig(module, query, key, value, attention_mask, dropout=dropout,
                        scaling=scaling, softcap=softcap, **kwargs)

        modeling_gemma2.eager_attention_forward = wrapped
        return self

    def __exit__(self, *exc):
        modeling_gemma2.eager_attention_forward = self._orig


def softcap_report(model, inputs) -> str:
    cfg = model.config
    rec = AttnLogitRecorder()
    finals = []
    with rec:
        for ids in inputs:
            logits, hidden = run(model, ids)
            finals.append(model.lm_head(hidden[-1]).flatten())  # pre-cap final logits
    attn = torch.cat(rec.values).abs()
    fin = torch.cat(finals).abs()
    ca, cf = cfg.attn_logit_softcapping, cfg.final_logit_softcapping
    return (f"attn pre-cap max |x| {attn.max():.2f}, {100 * (attn > ca).float().mean():.1f}% > cap {ca}; "
            f"final pre-cap max |x| {fin.max():.2f}, {100 * (fin > cf).float().mean():.1f}% > cap {cf}")


def window_check(model, inputs, window: int) -> str:
    """Prove the sliding window changes outputs: same weights with the window removed."""
    cfg = copy.deepcopy(model.config)
    cfg.sliding_window = 4096  # wider than any input: same as no window
    full = type(model)(cfg).eval()
    full.load_state_dict(model.state_dict())
    parts = []
    for ids in inputs:
        a, _ = run(model, ids)
        b, _ = run(full, ids)
        d = (a - b).abs().max().item()
        parts.append(f"len {len(ids)}: max|Δ| {d:.3g}")
        if len(ids) <= window:
            assert d == 0.0, "window must not matter when the sequence fits inside it"
        else:
            assert d > 1e-3, "window must change outputs for longer sequences"
    return "no-window vs window: " + ", ".join(parts)


def rope_check(model, inputs) -> str:
    """Prove both RoPEs matter: the same weights with the sliding layers' RoPE set to the global one."""
    cfg = copy.deepcopy(model.config)
    cfg.rope_parameters["sliding_attention"] = dict(cfg.rope_parameters["full_attention"])
    same = type(model)(cfg).eval()
    same.load_state_dict(model.state_dict())
    parts = []
    for ids in inputs:
        a, _ = run(model, ids)
        b, _ = run(same, ids)
        d = (a - b).abs().max().item()
        parts.append(f"len {len(ids)}: max|Δ| {d:.3g}")
        assert d > 1e-3, "the local RoPE must change outputs"
    out = "local RoPE = global RoPE vs as configured: " + ", ".join(parts)
    full = model.config.rope_parameters["full_attention"]
    if full.get("rope_type", "default") != "default":
        cfg = copy.deepcopy(model.config)
        cfg.rope_parameters["full_attention"] = {"rope_type": "default", "rope_theta": full["rope_theta"]}
        plain = type(model)(cfg).eval()
        plain.load_state_dict(model.state_dict())
        ds = [(run(model, ids)[0] - run(plain, ids)[0]).abs().max().item() for ids in inputs]
        assert min(ds) > 1e-3, "the global rope_scaling must change outputs"
        out += f"; global {full['rope_type']} scaling removed: max|Δ| " + ", ".join(f"{d:.3g}" for d in ds)
    return out


def legacy_config(d: dict, pattern: int | None = None) -> dict:
    """The same config in the transformers 4.x layout that most Hub checkpoints still carry.

    transformers 5 writes `rope_parameters` (holding rope_theta and the scaling) and `dtype`;
    4.x wrote top-level `rope_theta`, `rope_scaling` (absent or null for default RoPE) and
    `torch_dtype`, and had no `layer_types` (Gemma 2 alternated sliding/global by layer parity,
    Qwen2 derived windows from use_sliding_window/max_window_layers). dsg must read both.
    """
    d = dict(d)
    rp = dict(d.pop("rope_parameters", None) or {})
    if d.get("model_type") == "gemma3_text":
        # Gemma 3 (4.x): rope_theta and rope_scaling for the global layers, rope_local_base_freq
        # (default RoPE) for the sliding ones, and every `sliding_window_pattern`-th layer global.
        full, local = dict(rp["full_attention"]), dict(rp["sliding_attention"])
        assert local.get("rope_type", "default") == "default", "4.x had no scaling on local layers"
        d["rope_theta"] = full.pop("rope_theta")
        d["rope_local_base_freq"] = local["rope_theta"]
        if full.get("rope_type", "default") != "default":
            d["rope_scaling"] = full
        n = d["num_hidden_layers"]
        expect = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
        assert d["layer_types"] == expect, f"layer_types {d['layer_types']} are not pattern {pattern}"
        d["sliding_window_pattern"] = pattern
        d.pop("_sliding_window_pattern", None)  # written by transformers 5, not by 4.x
        rp = {}
    if rp:
        d["rope_theta"] = rp.pop("rope_theta")
        if rp.get("rope_type", "default") != "default":
            d["rope_scaling"] = rp
    if "dtype" in d:
        d["torch_dtype"] = d.pop("dtype")
    d.pop("layer_types", None)
    d.pop("use_bidirectional_attention", None)
    return d


def build(name, cfg, init, out_root: Path) -> dict:
    torch.manual_seed(init["seed"])
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
    reinit_(model, init["seed"], init["norm_center"], qk_std=init.get("qk_std"),
            embed_std=init.get("embed_std"))
    if cfg.tie_word_embeddings:
        assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()

    d = out_root / name
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    for extra in ("generation_config.json",):
        (d / extra).unlink(missing_ok=True)

    v5 = json.loads((d / "config.json").read_text())
    v4 = legacy_config(v5, init.get("pattern"))
    (d / "config_v4.json").write_text(json.dumps(v4, indent=2, sort_keys=True) + "\n")
    # transformers 5 must read the legacy layout back to the identical config.
    a = type(cfg).from_dict(v4).to_dict()
    b = type(cfg).from_dict(v5).to_dict()
    # Gemma 3 keeps the pattern it was given as an attribute; the layer types it implies are compared.
    for k in ("sliding_window_pattern", "_sliding_window_pattern"):
        a.pop(k, None), b.pop(k, None)
    assert a == b, f"{name}: legacy config differs in {[k for k in a.keys() | b.keys() if a.get(k) != b.get(k)]}"

    inputs = make_inputs(init["seed"] + 7)
    ref = {}
    info = {"max_abs_logit": 0.0}
    for i, ids in enumerate(inputs):
        logits, hidden = run(model, ids)
        ref[f"input_ids_{i}"] = ids.contiguous()
        ref[f"logits_{i}"] = logits
        ref[f"hidden_{i}"] = hidden
        info["max_abs_logit"] = max(info["max_abs_logit"], logits.abs().max().item())
    # One metadata key: safetensors writes the metadata map in hash order, so several keys make the bytes vary.
    save_file(ref, d / "reference.safetensors", metadata={"about": json.dumps({
        "generator": "scripts/make_tiny_models.py",
        "hidden_note": "hidden_i[0] = input to block 0; hidden_i[k] = output of block k-1 for k < n_layers; "
                       "hidden_i[n_layers] = output of the LAST block AFTER the final norm (HF convention)",
    }, sort_keys=True)})

    # Round trip: reload both the model folder and the reference file, recompute.
    re = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    loaded = load_file(d / "reference.safetensors")
    for i in range(len(SEQ_LENS)):
        logits, hidden = run(re, loaded[f"input_ids_{i}"])
        assert torch.equal(logits, loaded[f"logits_{i}"]), f"{name}: logits {i} not reproduced"
        assert torch.equal(hidden, loaded[f"hidden_{i}"]), f"{name}: hidden {i} not reproduced"
    # The last hidden entry really is post-final-norm.
    pre = None
    h = {}
    base = re.base_model
    final_norm = getattr(base, "norm", None) or getattr(base, "ln_f")
    last_block = (getattr(base, "layers", None) or getattr(base, "h"))[-1]
    hk = last_block.register_forward_hook(lambda m, a, o: h.__setitem__("o", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        re(input_ids=loaded["input_ids_0"][None], use_cache=False)
    hk.remove()
    with torch.no_grad():
        assert torch.allclose(final_norm(h["o"])[0], loaded["hidden_0"][-1], atol=1e-6)

    if cfg.model_type == "gemma2":
        info["softcap"] = softcap_report(re, inputs)
    if getattr(cfg, "sliding_window", None):
        info["window"] = window_check(re, inputs, cfg.sliding_window)
    if cfg.model_type == "gemma3_text":
        info["rope"] = rope_check(re, inputs)

    info["files"] = {f.name: f.stat().st_size for f in sorted(d.iterdir())}
    info["params"] = sum(p.numel() for p in model.parameters())
    info["tensors"] = {k: (list(v.shape), str(v.dtype).replace("torch.", ""))
                       for k, v in load_file(d / "model.safetensors").items()}
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/tiny")
    ap.add_argument("--only", nargs="*", help="subset of model names")
    ap.add_argument("--summary", help="write a JSON summary here (used to fill README.md)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one thread: the summation order, and so every bit, is fixed
    out_root = Path(args.out)
    summary = {}
    for name, (cfg, init, highlights) in specs().items():
        if args.only and name not in args.only:
            continue
        info = build(name, cfg, init, out_root)
        info["highlights"] = highlights
        summary[name] = info
        print(f"{name}: max|logit| {info['max_abs_logit']:.3f}, params {info['params']}, "
              f"files {info['files']}", flush=True)
        for k in ("softcap", "window", "rope"):
            if k in info:
                print(f"    {k}: {info[k]}")
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    sys.exit(main())
