#!/usr/bin/env python3
"""Writes the Qwen-Scope fixtures under tests/fixtures/sae/qwen-scope/ with real `torch.save`.

Qwen-Scope checkpoints (`Qwen/SAE-Res-<model>-W<width>-L0_<k>/layer{n}.sae.pt`) are a dict of
`W_enc` (d_sae, d_model), `W_dec` (d_model, d_sae), `b_enc` (d_sae,), `b_dec` (d_model,). The model
card's encode is `pre = x @ W_enc.T + b_enc`, keep the top k of `pre` as they are (no ReLU), and
decode `f @ W_dec.T + b_dec`; the numpy maths below follows it in float64 and is saved, as f32, in
`reference.safetensors` beside each file (`x`, `pre`, `f`, `decode`, `reconstruct`, as for the
other SAE fixtures). Encoder biases are shifted down so that some kept values are negative (which
a ReLU would zero), and draws are re-seeded until every top-k cut has a gap of at least MARGIN.

* `SAE-Res-Tiny-W64-L0_6/layer3.sae.pt`: f32; `k` from the folder name; `W_dec` saved as a
  transposed view (strides (1, d_sae)) and `b_enc` as a slice at offset 3 of a longer storage.
* `bf16/layer2.sae.pt`: bfloat16 weights, with `k` and `hook_name` entries in the dict.
* `malicious/layer0.sae.pt`: a checkpoint whose pickle would call `os.system` (via `__reduce__`)
  to create SIDE_EFFECT; dsg must refuse it without running anything.
* `variants/{state-dict-p4,parameters}/layer3.sae.pt`: the f32 SAE as a module's state dict
  (OrderedDict with `_metadata`, pickle protocol 4) and as `nn.Parameter`s; `k` from config.json.
* `broken/*/layer0.sae.pt`: the f32 checkpoint with a truncated pickle, an unknown opcode, and a
  storage member cut short; and a `W_enc` whose shape fits neither orientation.
* `neuronpedia/*.jsonl`: Neuronpedia explanation exports for the label importer.

Run from the repository root:  /work/venvs/gemma3/bin/python scripts/make_qwen_scope_fixtures.py
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file as save_np

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "sae" / "qwen-scope"
MARGIN = 1e-3
SIDE_EFFECT = "/tmp/dsg-qwen-scope-pickle-side-effect"


def np_topk_signed(pre: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=-1, kind="stable")[..., :k]
    np.put_along_axis(out, idx, np.take_along_axis(pre, idx, -1), -1)
    return out


def reference(p: dict, x: np.ndarray, k: int) -> dict:
    w_enc, b_enc, w_dec, b_dec = (p[n].astype(np.float64) for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    pre = x @ w_enc.T + b_enc
    f = np_topk_signed(pre, k)
    dec = f @ w_dec.T + b_dec
    return {"x": x, "pre": pre, "f": f, "decode": dec, "reconstruct": dec}


def draw(d_model: int, d_sae: int, k: int, dtype: torch.dtype, seed: int):
    """Parameters (as torch tensors of `dtype`), inputs and reference outputs with clear margins."""
    while True:
        rng = np.random.default_rng(seed)
        seed += 1000
        t = {
            "W_enc": rng.normal(0, 1 / np.sqrt(d_model), (d_sae, d_model)),
            "b_enc": rng.normal(-1.0, 0.3, d_sae),
            "W_dec": rng.normal(0, 1 / np.sqrt(d_model), (d_model, d_sae)),
            "b_dec": rng.normal(0, 0.2, d_model),
        }
        t = {n: torch.tensor(v, dtype=torch.float32).to(dtype) for n, v in t.items()}
        p = {n: v.float().numpy() for n, v in t.items()}
        x = rng.normal(0, 1.0, (3, 4, d_model))
        x[0, 0] = 0.0  # pre = b_enc: every kept value is negative
        x = x.astype(np.float32).astype(np.float64)
        out = reference(p, x, k)
        s = -np.sort(-out["pre"], axis=-1)
        kept = out["f"][out["f"] != 0]
        if np.min(s[..., k - 1] - s[..., k]) > MARGIN and (kept < 0).any() and (kept > 0).any():
            return t, out


def write_reference(dir_: Path, out: dict) -> None:
    arrays = {n: np.ascontiguousarray(v, dtype=np.float32) for n, v in out.items()}
    save_np(arrays, str(dir_ / "reference.safetensors"), metadata={"source": "numpy (Qwen-Scope model card maths)"})


def f32_fixture() -> tuple[Path, dict, dict]:
    d_model, d_sae, k = 16, 64, 6
    t, out = draw(d_model, d_sae, k, torch.float32, seed=1)
    dir_ = ROOT / "SAE-Res-Tiny-W64-L0_6"
    dir_.mkdir(parents=True)
    # A transposed view and an offset slice, so that strides and offsets must be honoured.
    w_dec = t["W_dec"].t().contiguous().t()
    b_enc = torch.cat([torch.zeros(3), t["b_enc"], torch.zeros(2)])[3 : 3 + d_sae]
    assert not w_dec.is_contiguous() and b_enc.storage_offset() == 3
    torch.save({"W_enc": t["W_enc"], "W_dec": w_dec, "b_enc": b_enc, "b_dec": t["b_dec"]}, dir_ / "layer3.sae.pt")
    write_reference(dir_, out)
    return dir_ / "layer3.sae.pt", t, out


class Tiny(torch.nn.Module):
    """The four tensors as parameters of a module."""

    def __init__(self, t: dict):
        super().__init__()
        for name, v in t.items():
            setattr(self, name, torch.nn.Parameter(v.clone()))


def variant_fixtures(t: dict, out: dict) -> None:
    """The f32 SAE saved two other ways torch users save weights; k from a config.json."""
    module = Tiny(t)
    saves = {
        # An OrderedDict with `_metadata` (BUILD), pickle protocol 4 (FRAME, MEMOIZE, STACK_GLOBAL).
        "state-dict-p4": lambda f: torch.save(module.state_dict(), f, pickle_protocol=4),
        # nn.Parameter objects (torch._utils._rebuild_parameter).
        "parameters": lambda f: torch.save(dict(module.named_parameters()), f),
    }
    for name, save in saves.items():
        dir_ = ROOT / "variants" / name
        dir_.mkdir(parents=True)
        save(dir_ / "layer3.sae.pt")
        (dir_ / "config.json").write_text(json.dumps({"k": 6}) + "\n")
        write_reference(dir_, out)


def bf16_fixture() -> None:
    d_model, d_sae, k = 16, 48, 5
    t, out = draw(d_model, d_sae, k, torch.bfloat16, seed=2)
    dir_ = ROOT / "bf16"
    dir_.mkdir(parents=True)
    torch.save({**t, "k": k, "hook_name": "blocks.4.hook_resid_post"}, dir_ / "layer2.sae.pt")
    write_reference(dir_, out)


class SystemCall:
    """Pickles as a call of os.system: what a malicious checkpoint looks like."""

    def __reduce__(self):
        return (os.system, (f"touch {SIDE_EFFECT}",))


def malicious_fixture() -> None:
    dir_ = ROOT / "malicious"
    dir_.mkdir(parents=True)
    torch.save({"W_enc": torch.zeros(4, 2), "payload": SystemCall()}, dir_ / "layer0.sae.pt")


def rewrite(src: Path, dst: Path, edit) -> None:
    """Copies the zip `src` to `dst`, passing each member's (name, bytes) through `edit`."""
    dst.parent.mkdir(parents=True)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, edit(info.filename, zin.read(info.filename)))


def broken_fixtures(good: Path) -> None:
    base = ROOT / "broken"
    rewrite(good, base / "truncated-pickle" / "layer0.sae.pt",
            lambda n, b: b[: len(b) // 2] if n.endswith("data.pkl") else b)
    rewrite(good, base / "bad-opcode" / "layer0.sae.pt",
            lambda n, b: b[:2] + b"\xfe" + b[3:] if n.endswith("data.pkl") else b)
    rewrite(good, base / "short-storage" / "layer0.sae.pt",
            lambda n, b: b[:-4] if n.endswith("data/0") else b)
    # W_enc one column short: neither orientation fits d_model 16 and d_sae 64.
    torch.save({"W_enc": torch.zeros(64, 15), "W_dec": torch.zeros(16, 64), "b_enc": torch.zeros(64),
                "b_dec": torch.zeros(16), "k": 6}, _mkdir(base / "wrong-shape") / "layer0.sae.pt")


def _mkdir(d: Path) -> Path:
    d.mkdir(parents=True)
    return d


def neuronpedia_fixtures() -> None:
    """A Neuronpedia explanations export (JSONL) for gemma-2-2b / 3-gemmascope-res-16k."""
    dir_ = ROOT.parent / "neuronpedia"
    dir_.mkdir(parents=True, exist_ok=True)
    rows = [
        {"modelId": "gemma-2-2b", "layer": "3-gemmascope-res-16k", "index": "0",
         "description": " references to viruses and infection", "explanationModelName": "gpt-4o-mini",
         "typeName": "oai_token-act-pair"},
        {"modelId": "gemma-2-2b", "layer": "3-gemmascope-res-16k", "index": "0",
         "description": "virus names", "explanationModelName": "claude-3-5-haiku",
         "typeName": "np_max-act-logits", "scores": [0.4]},
        {"modelId": "gemma-2-2b", "layer": "3-gemmascope-res-16k", "index": "5",
         "description": "laboratory equipment", "explanationModelName": "gpt-4o-mini",
         "scores": [0.9]},
        {"modelId": "gemma-2-2b", "layer": "3-gemmascope-res-16k", "index": 7,
         "description": "the word \"pathogen\"", "explanationModelName": "gpt-4o-mini"},
    ]
    with open(dir_ / "explanations.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with open(dir_ / "malformed.jsonl", "w") as f:
        f.write(json.dumps(rows[0]) + "\n")
        f.write('{"modelId": "gemma-2-2b", "layer": "3-gemmascope-res-16k", "index": \n')


def main() -> None:
    if ROOT.exists():  # everything but the hand-written README
        for p in ROOT.iterdir():
            if p.name != "README.md":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    good, t, out = f32_fixture()
    variant_fixtures(t, out)
    bf16_fixture()
    malicious_fixture()
    broken_fixtures(good)
    neuronpedia_fixtures()
    print(f"wrote {ROOT}")


if __name__ == "__main__":
    main()
