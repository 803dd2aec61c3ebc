#!/usr/bin/env python3
"""Write PEFT LoRA adapters for the committed tiny models, with transformers + peft reference logits.

Why: dsg loads LoRA adapters in the PEFT format (`adapter_config.json` +
`adapter_model.safetensors`, PEFT's tensor names) onto its own decoder, and must
show that a LoRA forward pass equals transformers + peft with the same adapter
(1e-4). Each case here takes one tiny model from `tests/fixtures/tiny/`, wraps it
with `peft.get_peft_model(LoraConfig(...))`, re-draws every lora_A / lora_B from a
seeded generator (PEFT initialises B to zero, which would make the adapter a
no-op and hide a missing or mis-scaled LoRA path), saves the adapter with PEFT's
own `save_pretrained`, and records the logits of

  * the base model without the adapter,
  * the peft model (unmerged: base(x) + scaling * B(A(dropout(x)))),
  * the same adapter merged into the weights (`merge_and_unload`),

so a test can check dsg's unmerged and merged paths and see that the adapter
really moves the logits.

The cases together cover: all seven Llama projections and a q/v subset, ranks 4
and 8, lora_alpha != r, `use_rslora` (scaling alpha/sqrt(r) instead of alpha/r),
dropout 0.1 (asserted to change nothing in eval mode), q/k/v biases under LoRA
(Qwen2), Gemma 2's soft-capped logits, and GPT-2's Conv1D layers
(`fan_in_fan_out=True`: the base weight is stored [in, out] but lora_A / lora_B
are still (r, in) / (out, r)).

Run from the repository root:
    /work/pyref/bin/python scripts/make_lora_fixtures.py
Output: tests/fixtures/lora/<case>/{case.json, reference.safetensors, adapter/adapter_config.json,
        adapter/adapter_model.safetensors}
Re-running reproduces identical files (fixed seeds, CPU, f32, eager attention, one torch thread).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

SEQ_LENS = (7, 13, 20)
VOCAB = 256
TINY = Path("tests/fixtures/tiny")
ALL_LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# peft vs merged logits must agree to this (they differ only by f32 rounding of W + s*B@A).
MERGE_TOL = 1e-4
# The adapter must move the logits by at least this much (max |Δ| over all positions and vocab).
MIN_EFFECT = 0.1


def cases():
    """case name -> (base tiny model folder name, LoraConfig kwargs, seed, init std of A and B, highlights)."""
    return {
        "llama_gqa_all_r8": (
            "llama_gqa",
            dict(r=8, lora_alpha=16, target_modules=ALL_LLAMA, lora_dropout=0.1),
            2001, 0.1,
            "all 7 projections (q,k,v,o,gate,up,down), r 8, alpha 16 (scaling 2.0), dropout 0.1; "
            "GQA so k/v lora_B are (32, 8)",
        ),
        "qwen2_qv_r4": (
            "qwen2_bias",
            dict(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj"], lora_dropout=0.1),
            2002, 0.15,
            "subset q_proj,v_proj only (k/o/MLP untouched), r 4, alpha 12 (scaling 3.0), dropout 0.1; "
            "the base q/v projections carry a bias, which LoRA leaves alone (bias='none')",
        ),
        "gemma2_rslora_r8": (
            "gemma2_small_caps",
            dict(r=8, lora_alpha=4, target_modules=["q_proj", "k_proj", "o_proj", "up_proj", "down_proj"],
                 lora_dropout=0.1, use_rslora=True),
            2003, 0.1,
            "use_rslora: scaling = alpha/sqrt(r) = 4/sqrt(8) = 1.4142 (alpha/r would be 0.5), r 8, "
            "targets q,k,o,up,down (not v, not gate), dropout 0.1, 3 layers with soft-caps 5 / 3",
        ),
        "gpt2_conv1d_r4": (
            "gpt2",
            dict(r=4, lora_alpha=6, target_modules=["c_attn", "c_proj", "c_fc"], lora_dropout=0.1,
                 fan_in_fan_out=True),
            2004, 0.1,
            "GPT-2 Conv1D targets c_attn (fused qkv, out 192), attn.c_proj and mlp.c_proj (both match "
            "'c_proj'), c_fc; fan_in_fan_out true; r 4, alpha 6 (scaling 1.5), dropout 0.1",
        ),
    }


def load_base(name: str):
    return AutoModelForCausalLM.from_pretrained(TINY / name, attn_implementation="eager",
                                                dtype=torch.float32).eval()


def make_inputs(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g, dtype=torch.int64) for n in SEQ_LENS]


@torch.no_grad()
def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids[None, :], use_cache=False).logits[0].float().contiguous()


def lora_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]


def reinit_lora_(model, seed: int, std: float) -> None:
    """PEFT starts with B = 0 (a no-op adapter); draw every A and B instead, in a fixed order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_A" in name or "lora_B" in name:
                p.copy_(std * torch.randn(p.shape, generator=g))


def deterministic_config_(path: Path) -> None:
    """PEFT stores target_modules as a set and writes it in hash order: sort it (same JSON layout as PEFT)."""
    d = json.loads(path.read_text())
    if isinstance(d.get("target_modules"), list):
        d["target_modules"] = sorted(d["target_modules"])
    path.write_text(json.dumps(d, indent=2, sort_keys=True))


def build(case: str, base_name: str, lcfg: dict, seed: int, std: float, out_root: Path) -> dict:
    torch.manual_seed(seed)
    inputs = make_inputs(seed + 7)
    base = load_base(base_name)
    # The base model still gives the tiny fixture's own reference logits (written by make_tiny_models.py),
    # so these LoRA references sit on the model dsg already matches. Not bit for bit: another transformers
    # version or CPU changes the last bits (observed up to 2.4e-6).
    tiny_ref = load_file(TINY / base_name / "reference.safetensors")
    tiny_diff = 0.0
    for i in range(len(SEQ_LENS)):
        got = logits_of(base, tiny_ref[f"input_ids_{i}"])
        tiny_diff = max(tiny_diff, (got - tiny_ref[f"logits_{i}"]).abs().max().item())
    assert tiny_diff < 1e-5, f"{base_name}: base logits differ from tests/fixtures/tiny by {tiny_diff}"
    base_logits = [logits_of(base, ids) for ids in inputs]

    config = LoraConfig(task_type="CAUSAL_LM", bias="none", **lcfg)
    model = get_peft_model(load_base(base_name), config)
    reinit_lora_(model, seed, std)
    model.eval()

    expect_scaling = lcfg["lora_alpha"] / (math.sqrt(lcfg["r"]) if lcfg.get("use_rslora") else lcfg["r"])
    layers = lora_layers(model)
    assert layers, f"{case}: no LoRA layer was created"
    for n, m in layers:
        assert math.isclose(m.scaling["default"], expect_scaling, rel_tol=1e-12), (n, m.scaling)
        assert m.lora_dropout["default"].p == lcfg["lora_dropout"]
        if lcfg.get("fan_in_fan_out"):
            assert m.fan_in_fan_out and type(m.get_base_layer()).__name__ == "Conv1D", n

    peft_logits = [logits_of(model, ids) for ids in inputs]

    # Dropout 0.1 must not matter in eval mode: replacing it by identity gives the same bits,
    # while in train mode it does change the output (so the dropout really is on the LoRA path).
    with torch.no_grad():
        model.train()
        torch.manual_seed(0)
        trained = model(input_ids=inputs[-1][None], use_cache=False).logits[0]
        model.eval()
        assert not torch.equal(trained, peft_logits[-1]), f"{case}: dropout had no effect in train mode"
        saved = {}
        for n, m in layers:
            saved[n] = m.lora_dropout["default"]
            m.lora_dropout["default"] = torch.nn.Identity()
        for ids, ref in zip(inputs, peft_logits):
            assert torch.equal(logits_of(model, ids), ref), f"{case}: dropout changed eval logits"
        for n, m in layers:
            m.lora_dropout["default"] = saved[n]

    d = out_root / case
    adir = d / "adapter"
    adir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(adir, safe_serialization=True)
    (adir / "README.md").unlink(missing_ok=True)  # PEFT's model-card template, not needed
    deterministic_config_(adir / "adapter_config.json")
    with safe_open(adir / "adapter_model.safetensors", "pt") as f:
        meta = f.metadata()
    # A single metadata key keeps the safetensors bytes fixed; rewrite if a PEFT version adds more.
    if meta is None or len(meta) > 1:
        tensors = load_file(adir / "adapter_model.safetensors")
        save_file(tensors, adir / "adapter_model.safetensors", metadata={"format": "pt"})

    # Round trip: a fresh base + the saved adapter reproduces the peft logits bit for bit,
    # then merge_and_unload folds W + scaling * B @ A (transposed for fan_in_fan_out) into the weights.
    re = PeftModel.from_pretrained(load_base(base_name), adir).eval()
    for ids, ref in zip(inputs, peft_logits):
        assert torch.equal(logits_of(re, ids), ref), f"{case}: reloaded adapter differs"
    merged = re.merge_and_unload().eval()
    assert not lora_layers(merged)
    merged_logits = [logits_of(merged, ids) for ids in inputs]

    # Independent check of the merge formula dsg will use, on one targeted module.
    adapter = load_file(adir / "adapter_model.safetensors")
    fresh = load_base(base_name).state_dict()
    name_a = sorted(k for k in adapter if k.endswith("lora_A.weight"))[0]
    module = name_a[len("base_model.model."):-len(".lora_A.weight")]
    delta = expect_scaling * adapter[module.join(["base_model.model.", ".lora_B.weight"])] @ adapter[name_a]
    if lcfg.get("fan_in_fan_out"):
        delta = delta.T
    w_expect = fresh[module + ".weight"] + delta
    assert torch.allclose(merged.state_dict()[module + ".weight"], w_expect, atol=1e-6, rtol=0), module

    ref = {}
    info = {"base_vs_tiny_reference": tiny_diff, "max_abs_delta_vs_base": 0.0, "max_abs_peft_vs_merged": 0.0, "max_abs_logit": 0.0,
            "per_input": []}
    for i, ids in enumerate(inputs):
        ref[f"input_ids_{i}"] = ids.contiguous()
        ref[f"logits_base_{i}"] = base_logits[i]
        ref[f"logits_peft_{i}"] = peft_logits[i]
        ref[f"logits_merged_{i}"] = merged_logits[i]
        eff = (peft_logits[i] - base_logits[i]).abs().max().item()
        mer = (peft_logits[i] - merged_logits[i]).abs().max().item()
        info["per_input"].append({"len": len(ids), "max_abs_delta_vs_base": eff, "max_abs_peft_vs_merged": mer})
        info["max_abs_delta_vs_base"] = max(info["max_abs_delta_vs_base"], eff)
        info["max_abs_peft_vs_merged"] = max(info["max_abs_peft_vs_merged"], mer)
        info["max_abs_logit"] = max(info["max_abs_logit"], peft_logits[i].abs().max().item())
    assert info["max_abs_peft_vs_merged"] < MERGE_TOL, f"{case}: merged differs {info['max_abs_peft_vs_merged']}"
    assert info["max_abs_delta_vs_base"] > MIN_EFFECT, f"{case}: adapter barely changes logits"
    save_file(ref, d / "reference.safetensors", metadata={"about": json.dumps({
        "generator": "scripts/make_lora_fixtures.py",
        "note": "each input_ids_i run alone (batch 1, positions 0..L-1); logits_base_i: tiny model without "
                "the adapter; logits_peft_i: transformers + peft, adapter unmerged, eval mode; "
                "logits_merged_i: the same adapter after merge_and_unload",
    }, sort_keys=True)})

    # Re-read what was written and recompute.
    loaded = load_file(d / "reference.safetensors")
    re2 = PeftModel.from_pretrained(load_base(base_name), adir).eval()
    for i in range(len(SEQ_LENS)):
        assert torch.equal(logits_of(re2, loaded[f"input_ids_{i}"]), loaded[f"logits_peft_{i}"])
        assert torch.equal(logits_of(base, loaded[f"input_ids_{i}"]), loaded[f"logits_base_{i}"])
        assert torch.equal(merged_logits[i], loaded[f"logits_merged_{i}"])

    acfg = json.loads((adir / "adapter_config.json").read_text())
    case_json = {
        "base_model": base_name,
        "base_model_dir": str(TINY / base_name),
        "adapter_dir": "adapter",
        "reference": "reference.safetensors",
        "seq_lens": list(SEQ_LENS),
        "lora": {
            "r": acfg["r"],
            "lora_alpha": acfg["lora_alpha"],
            "use_rslora": acfg["use_rslora"],
            "scaling": expect_scaling,
            "target_modules": acfg["target_modules"],
            "fan_in_fan_out": acfg["fan_in_fan_out"],
            "lora_dropout": acfg["lora_dropout"],
            "bias": acfg["bias"],
        },
        "lora_init": {"seed": seed, "std": std,
                      "how": "every lora_A / lora_B re-drawn std * randn from torch.Generator().manual_seed(seed), "
                             "parameters in sorted-name order"},
        "input_seed": seed + 7,
        "tolerance": 1e-4,
        "observed": {"max_abs_delta_vs_base": info["max_abs_delta_vs_base"],
                     "max_abs_peft_vs_merged": info["max_abs_peft_vs_merged"],
                     "max_abs_logit": info["max_abs_logit"]},
        "versions": {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
                     "peft": peft.__version__},
    }
    (d / "case.json").write_text(json.dumps(case_json, indent=2, sort_keys=True) + "\n")

    info["scaling"] = expect_scaling
    info["n_lora_modules"] = len(layers)
    info["adapter_config"] = acfg
    info["adapter_tensors"] = {k: (list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in adapter.items()}
    info["files"] = {str(f.relative_to(d)): f.stat().st_size for f in sorted(d.rglob("*")) if f.is_file()}
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/lora")
    ap.add_argument("--only", nargs="*", help="subset of case names")
    ap.add_argument("--summary", help="write a JSON summary here (used to fill README.md)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one thread: the summation order, and so every bit, is fixed
    out_root = Path(args.out)
    summary = {}
    for case, (base_name, lcfg, seed, std, highlights) in cases().items():
        if args.only and case not in args.only:
            continue
        info = build(case, base_name, lcfg, seed, std, out_root)
        info["highlights"] = highlights
        info["base_model"] = base_name
        summary[case] = info
        print(f"{case} (on {base_name}): {info['n_lora_modules']} LoRA modules, scaling {info['scaling']:.4f}, "
              f"max|Δlogit| vs base {info['max_abs_delta_vs_base']:.3f}, "
              f"max|peft - merged| {info['max_abs_peft_vs_merged']:.3g}, "
              f"base vs tiny reference {info['base_vs_tiny_reference']:.2g}, files {info['files']}", flush=True)
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    sys.exit(main())
