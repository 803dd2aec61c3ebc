#!/usr/bin/env python3
"""Writes the small SAE fixtures under tests/fixtures/sae/ and their reference outputs.

Each fixture is a tiny random SAE (d_in 16-32, d_sae 48-64) written the way the reference tool
writes it, plus a `reference.safetensors` beside it holding:

* `x`            inputs, shape (3, 4, d_in), f32
* `pre`          pre-activations (before the activation function)
* `f`            latent activations, encode(x)
* `decode`       f @ W_dec + b_dec in the SAE's (normalised) output space (= decode(f) in dsg)
* `reconstruct`  the full reconstruction of x, de-normalised (SAELens forward / sparsify decode)

Where the reference library is installed (sae-lens >= 6, eai-sparsify) it produces the outputs and
an independent numpy implementation of the documented maths must agree with it; otherwise the
numpy maths alone is the reference (the legacy SAELens fixture always is, since SAELens 6 no longer
applies `finetuning_scaling_factor`). Random draws are re-seeded until every JumpReLU pre-activation
is at least MARGIN away from its threshold and every top-k cut has a gap of at least MARGIN, so
that f32 rounding differences cannot flip which latents fire.

Run from the repository root:  /work/pyref/bin/python scripts/make_sae_fixtures.py
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file as save_np
from safetensors.torch import save_file as save_pt

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "sae"
MARGIN = 1e-3
X_SHAPE = (3, 4)

try:  # The reference libraries are optional.
    import sae_lens
    from sae_lens import SAE
    from sae_lens.saes import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    HAVE_SAELENS = True
except ImportError:  # pragma: no cover
    HAVE_SAELENS = False
try:
    import os

    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    from sparsify import SparseCoder, SparseCoderConfig

    HAVE_SPARSIFY = True
except ImportError:  # pragma: no cover
    HAVE_SPARSIFY = False

MANIFEST: dict[str, dict] = {}


# ----------------------------------------------------------------------------------------------
# numpy reference maths (SAELens order: normalise, subtract b_dec, encode, activate, decode, undo)
# ----------------------------------------------------------------------------------------------


def np_normalise(x: np.ndarray, kind: str):
    d = x.shape[-1]
    if kind == "none":
        return x, lambda y: y
    if kind == "constant_norm_rescale":
        coeff = np.sqrt(d) / np.linalg.norm(x, axis=-1, keepdims=True)
        return x * coeff, lambda y: y / coeff
    if kind == "layer_norm":
        mu = x.mean(-1, keepdims=True)
        xc = x - mu
        std = xc.std(-1, ddof=1, keepdims=True)  # torch.std is unbiased
        return xc / (std + 1e-5), lambda y: y * std + mu
    raise ValueError(kind)


def np_topk(pre: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=-1, kind="stable")[..., :k]
    vals = np.take_along_axis(pre, idx, -1)
    np.put_along_axis(out, idx, np.maximum(vals, 0), -1)
    return out


def np_sae(p: dict, x: np.ndarray, *, act: str, apply_b_dec: bool, norm: str = "none", k: int = 0,
           latent_scale=None, rescale_by_dec_norm: bool = False) -> dict:
    """Reference forward pass in float64."""
    x = x.astype(np.float64)
    w_enc, b_enc, w_dec, b_dec = (p[n].astype(np.float64) for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    xn, undo = np_normalise(x, norm)
    xin = xn - b_dec if apply_b_dec else xn
    pre = xin @ w_enc + b_enc
    dec_norm = np.linalg.norm(w_dec, axis=-1)
    if rescale_by_dec_norm:
        pre = pre * dec_norm
    if act == "relu":
        f = np.maximum(pre, 0)
    elif act == "jumprelu":
        th = p["threshold"].astype(np.float64)
        f = np.maximum(pre, 0) * (pre > th)
    elif act == "topk":
        f = np_topk(pre, k)
    else:
        raise ValueError(act)
    g = f / dec_norm if rescale_by_dec_norm else f
    if latent_scale is not None:
        g = g * latent_scale
    dec = g @ w_dec + b_dec
    return {"x": x, "pre": pre, "f": f, "decode": dec, "reconstruct": undo(dec)}


def check_margins(out: dict, *, act: str, k: int = 0, threshold=None) -> bool:
    pre = out["pre"]
    if act == "jumprelu":
        return bool(np.min(np.abs(pre - threshold)) > MARGIN)
    if act == "topk":
        s = -np.sort(-pre, axis=-1)
        # The k-th/k+1-th gap decides membership; the k-th value's sign decides its ReLU.
        return bool(np.min(s[..., k - 1] - s[..., k]) > MARGIN)
    return bool(np.min(np.abs(pre)) > MARGIN)


def random_params(rng, d_in: int, d_sae: int, *, act: str, pre_scale: float = 1.0) -> dict:
    p = {
        "W_enc": rng.normal(0, pre_scale / np.sqrt(d_in), (d_in, d_sae)),
        "b_enc": rng.normal(0, 0.1, d_sae),
        # Decoder rows with uneven norms, so that decoder-norm folding matters.
        "W_dec": rng.normal(0, 1 / np.sqrt(d_in), (d_sae, d_in)) * rng.uniform(0.5, 2.0, (d_sae, 1)),
        "b_dec": rng.normal(0, 0.2, d_in),
    }
    if act == "jumprelu":
        p["threshold"] = rng.uniform(0.05, 0.6, d_sae)
    return {k: v.astype(np.float32) for k, v in p.items()}


def draw(seed: int, d_in: int, d_sae: int, *, act: str, x_scale: float = 1.0, x_shift: float = 0.0,
         **maths):
    """Re-seeds until the numpy reference has safe margins; returns (params, x, numpy outputs)."""
    for s in range(seed, seed + 1000):
        rng = np.random.default_rng(s)
        p = random_params(rng, d_in, d_sae, act=act)
        x = (rng.normal(0, x_scale, X_SHAPE + (d_in,)) + x_shift).astype(np.float32)
        if maths.get("latent_scale") is not None:
            maths["latent_scale"] = rng.uniform(0.5, 1.5, d_sae).astype(np.float32)
        out = np_sae(p, x, act=act, **maths)
        if check_margins(out, act=act, k=maths.get("k", 0), threshold=p.get("threshold")):
            return p, x, out, maths
    raise RuntimeError("no seed with safe margins")


def agree(name: str, ours: dict, lib: dict, tol: float = 2e-5):
    for key, val in lib.items():
        ref = np.asarray(ours[key], dtype=np.float64)
        diff = np.max(np.abs(np.asarray(val, dtype=np.float64) - ref)) if ref.size else 0.0
        if diff > tol * max(1.0, np.max(np.abs(ref))):
            raise AssertionError(f"{name}: library and numpy disagree on {key}: max |diff| {diff}")


def write_reference(dir_: Path, out: dict, *, source: str, **extra):
    arrays = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in out.items()}
    save_np(arrays, str(dir_ / "reference.safetensors"), metadata={"source": source})
    MANIFEST[str(dir_.relative_to(ROOT))] = {"reference": source, **extra}


def fresh(rel: str) -> Path:
    d = ROOT / rel
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def t(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


def saelens_lib_outputs(sae, x: np.ndarray) -> dict:
    """encode / decode / forward of a loaded SAELens SAE, with the pre-activations from its hook."""
    with torch.no_grad():
        _, cache = sae.run_with_cache(t(x))
        f = sae.encode(t(x))
        rec = sae(t(x))
    return {"pre": cache["hook_sae_acts_pre"].numpy(), "f": f.numpy(), "reconstruct": rec.numpy()}


def gemma_scope_npz():
    d_in, d_sae = 16, 48
    p, x, out, _ = draw(100, d_in, d_sae, act="jumprelu", apply_b_dec=False)
    d = fresh("gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_71")
    np.savez(d / "params.npz", **p)  # np.savez stores members uncompressed, like the release
    source = "numpy"
    if HAVE_SAELENS:
        cfg = JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False,
                                metadata=SAEMetadata(hook_name="blocks.3.hook_resid_post"))
        sae = JumpReLUSAE(cfg)
        with np.load(d / "params.npz") as data:  # as SAELens's gemma_2 loader reads it
            sae.load_state_dict({k: t(data[k]) for k in data})
        agree("gemma_scope_npz", out, saelens_lib_outputs(sae, x))
        source = f"sae_lens {sae_lens.__version__} JumpReLUSAE (gemma_2 loader conventions)"
    write_reference(d, out, source=source, hook="blocks.3.hook_resid_post")


def gemma_scope_2():
    d_in, d_sae = 24, 64
    p, x, out, _ = draw(200, d_in, d_sae, act="jumprelu", apply_b_dec=False)
    d = fresh("gemma-scope-2-1b-pt/resid_post_all/layer_7_width_16k_l0_small")
    save_np({k.lower(): v for k, v in p.items()}, str(d / "params.safetensors"))
    (d / "config.json").write_text(json.dumps({
        "architecture": "jump_relu", "model_name": "gemma-v3-1b-pt",
        "hf_hook_point_in": "model.layers.7.output", "width": d_sae,
    }, indent=1))
    source = "numpy"
    if HAVE_SAELENS:
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False))
        sae.load_state_dict({k: t(v) for k, v in p.items()})
        agree("gemma_scope_2", out, saelens_lib_outputs(sae, x))
        source = f"sae_lens {sae_lens.__version__} JumpReLUSAE (gemma_3 loader conventions)"
    write_reference(d, out, source=source, hook="blocks.7.hook_resid_post")


def saelens_v6(rel: str, cls, cfg_cls, *, seed: int, d_in: int, d_sae: int, act: str,
               cfg_extra: dict, maths: dict, hook: str, x_scale=1.0, x_shift=0.0):
    p, x, out, maths = draw(seed, d_in, d_sae, act=act, x_scale=x_scale, x_shift=x_shift, **maths)
    d = fresh(rel)
    source = "numpy"
    if HAVE_SAELENS:  # main() only calls this with sae-lens installed
        cfg = cfg_cls(d_in=d_in, d_sae=d_sae, **cfg_extra,
                      metadata=SAEMetadata(hook_name=hook, model_name="gpt2-small",
                                           dataset_path="Skylion007/openwebtext"))
        sae = cls(cfg)
        sae.load_state_dict({k: t(v) for k, v in p.items()})
        sae.save_model(d)  # real v6 cfg.json + sae_weights.safetensors
        loaded = SAE.load_from_disk(d)
        lib = saelens_lib_outputs(loaded, x)
        if maths.get("rescale_by_dec_norm"):
            # SAELens's pre-activation hook fires before the decoder-norm rescale.
            lib["pre"] = lib["pre"] * np.linalg.norm(p["W_dec"].astype(np.float64), axis=-1)
        agree(rel, out, lib)
        source = f"sae_lens {sae_lens.__version__} {cls.__name__}.load_from_disk"
    write_reference(d, out, source=source, hook=hook)


def saelens_legacy_standard():
    """SAELens <= 5 flat config with a non-trivial finetuning scaling factor."""
    d_in, d_sae = 20, 56
    p, x, out, maths = draw(400, d_in, d_sae, act="relu", apply_b_dec=True, latent_scale=True)
    d = fresh("saelens/legacy_standard_scaled")
    cfg = {
        "model_name": "gpt2-small", "hook_point": "blocks.4.hook_resid_pre", "hook_point_layer": 4,
        "hook_point_head_index": None, "d_in": d_in, "d_sae": d_sae, "dtype": "torch.float32",
        "device": "cpu", "activation_fn_str": "relu", "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": True, "normalize_activations": False, "context_size": 128,
        "dataset_path": "Skylion007/openwebtext", "prepend_bos": True,
        "sae_lens_training_version": "3.5.0",
    }
    (d / "cfg.json").write_text(json.dumps(cfg))
    save_np({**p, "scaling_factor": maths["latent_scale"]}, str(d / "sae_weights.safetensors"))
    # SAELens <= 5 decode: (f * scaling_factor) @ W_dec + b_dec. SAELens 6 no longer applies the
    # factor (it refuses the key), so the documented maths is the reference; SAELens 6 still checks
    # the legacy-config conversion (encode) and the decode of the scaled latents on a copy without it.
    source = "numpy (SAELens <= 5 maths: decode uses f * scaling_factor)"
    if HAVE_SAELENS:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(d / "cfg.json", tmp)
            save_np(p, str(Path(tmp) / "sae_weights.safetensors"))
            sae = SAE.load_from_disk(tmp)
            lib = saelens_lib_outputs(sae, x)
            with torch.no_grad():
                rec = sae.decode(t(lib["f"]) * t(maths["latent_scale"])).numpy()
        agree("legacy_standard_scaled", out, {"pre": lib["pre"], "f": lib["f"], "reconstruct": rec})
        source += f"; encode and decode(f * scaling_factor) checked against sae_lens {sae_lens.__version__}"
    write_reference(d, out, source=source, hook="blocks.4.hook_resid_pre")


def sparsify_fixture(rel: str, *, seed: int, d_in: int, expansion: int, k: int, activation: str,
                     dtype: torch.dtype):
    d = fresh(rel)
    d_sae = d_in * expansion
    for s in range(seed, seed + 1000):
        rng = np.random.default_rng(s)
        p = random_params(rng, d_in, d_sae, act="relu")
        # Round the weights to the stored dtype first: the reference computes with what is stored.
        p = {n: torch.tensor(v).to(dtype).to(torch.float32).numpy() for n, v in p.items()}
        x = rng.normal(0, 1, X_SHAPE + (d_in,)).astype(np.float32)
        ref = np_sae(p, x, act="relu", apply_b_dec=True)
        pre = ref["pre"]
        relu = np.maximum(pre, 0)
        if activation == "topk":
            # sparsify takes the top k of relu(pre); as a dense vector that equals SAELens's
            # relu(top-k of pre), so the margin that matters is the pre-activation gap at k.
            srt = -np.sort(-pre, axis=-1)
            ok = np.min(srt[..., k - 1] - srt[..., k]) > MARGIN and np.min(np.abs(pre)) > MARGIN
            f = np_topk(pre, k)
        else:
            groups = relu.reshape(relu.shape[:-1] + (k, -1))
            srt = -np.sort(-groups, axis=-1)
            gap = srt[..., 0] - srt[..., 1]
            ok = bool(np.all((gap > MARGIN) | (srt[..., 0] == 0))) and np.min(np.abs(pre)) > MARGIN
            f = np.zeros_like(relu).reshape(groups.shape)
            idx = groups.argmax(-1)[..., None]
            np.put_along_axis(f, idx, np.take_along_axis(groups, idx, -1), -1)
            f = f.reshape(relu.shape)
        if ok:
            break
    dec = f @ p["W_dec"].astype(np.float64) + p["b_dec"]
    out = {"x": x, "pre": pre, "f": f, "decode": dec, "reconstruct": dec}
    source = "numpy"
    if HAVE_SPARSIFY:
        cfg = SparseCoderConfig(activation=activation, expansion_factor=expansion, num_latents=0,
                                k=k, normalize_decoder=False)
        sc = SparseCoder(d_in, cfg, dtype=dtype)
        with torch.no_grad():
            sc.encoder.weight.copy_(torch.tensor(p["W_enc"].T).to(dtype))
            sc.encoder.bias.copy_(torch.tensor(p["b_enc"]).to(dtype))
            sc.W_dec.copy_(torch.tensor(p["W_dec"]).to(dtype))
            sc.b_dec.copy_(torch.tensor(p["b_dec"]).to(dtype))
        sc.save_to_disk(d)
        # f32 maths on the stored weights, through sparsify's own encode/decode.
        loaded = SparseCoder.load_from_disk(d).to(torch.float32)
        with torch.no_grad():
            xf = t(x).reshape(-1, d_in)
            enc = loaded.encode(xf)
            dense = torch.zeros(xf.shape[0], d_sae).scatter_(-1, enc.top_indices, enc.top_acts)
            rec = loaded.decode(enc.top_acts, enc.top_indices)
        lib = {"f": dense.reshape(X_SHAPE + (d_sae,)).numpy(),
               "reconstruct": rec.reshape(X_SHAPE + (d_in,)).numpy()}
        agree(rel, out, lib)
        source = f"sparsify SparseCoder.load_from_disk (f32 on the {dtype} weights)"
    else:  # pragma: no cover
        (d / "cfg.json").write_text(json.dumps({"activation": activation, "expansion_factor": expansion,
                                               "normalize_decoder": False, "num_latents": 0, "k": k,
                                               "multi_topk": False, "skip_connection": False,
                                               "transcode": False, "d_in": d_in}))
        save_pt({"encoder.weight": torch.tensor(p["W_enc"].T.copy()).to(dtype),
                 "encoder.bias": torch.tensor(p["b_enc"]).to(dtype),
                 "W_dec": torch.tensor(p["W_dec"]).to(dtype), "b_dec": torch.tensor(p["b_dec"]).to(dtype)},
                str(d / "sae.safetensors"))
    (d.parent / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-70m",
                                                      "dataset": "EleutherAI/SmolLM2-135M-10B"}))
    write_reference(d, out, source=source, hook="blocks.2.hook_resid_post")


def dsg_fixture():
    """dsg's own format, written from its specification (not by dsg), f16 weights."""
    d_in, d_sae = 16, 48
    for s in range(700, 1700):
        rng = np.random.default_rng(s)
        p = random_params(rng, d_in, d_sae, act="jumprelu")
        p = {n: v.astype(np.float16).astype(np.float32) for n, v in p.items()}
        x = rng.normal(0, 1, X_SHAPE + (d_in,)).astype(np.float32)
        out = np_sae(p, x, act="jumprelu", apply_b_dec=True)
        if check_margins(out, act="jumprelu", threshold=p["threshold"]):
            break
    d = fresh("dsg/jumprelu_f16")
    save_np({n: v.astype(np.float16) for n, v in p.items()}, str(d / "sae.safetensors"),
            metadata={"format": "dsg-sae"})
    (d / "sae.json").write_text(json.dumps({
        "format": "dsg-sae", "format_version": 1, "d_in": d_in, "d_sae": d_sae,
        "activation": "jumprelu", "apply_b_dec_to_input": True, "normalization": "none",
        "hook": "blocks.1.hook_resid_post", "dtype": "f16",
        "model": {"name": "HuggingFaceTB/SmolLM2-135M", "sha256": "ab" * 32},
        "training_data": "fixture: random weights", "metrics": {"fvu": 0.125, "l0": 12.5, "custom": 2.0},
        "notes": "written by scripts/make_sae_fixtures.py",
    }, indent=1))
    write_reference(d, out, source="numpy", hook="blocks.1.hook_resid_post")


def main():
    if "--require-libs" in sys.argv and not (HAVE_SAELENS and HAVE_SPARSIFY):
        sys.exit("sae-lens and eai-sparsify are required")
    torch.manual_seed(0)
    gemma_scope_npz()
    gemma_scope_2()
    if HAVE_SAELENS:
        common = dict(apply_b_dec_to_input=True, normalize_activations="none")
        saelens_v6("saelens/v6_jumprelu", JumpReLUSAE, JumpReLUSAEConfig, seed=300, d_in=32, d_sae=64,
                   act="jumprelu", cfg_extra=common, maths=dict(apply_b_dec=True),
                   hook="blocks.5.hook_resid_post")
        saelens_v6("saelens/v6_topk", TopKSAE, TopKSAEConfig, seed=310, d_in=24, d_sae=48, act="topk",
                   cfg_extra=dict(common, k=6, rescale_acts_by_decoder_norm=True),
                   maths=dict(apply_b_dec=True, k=6, rescale_by_dec_norm=True),
                   hook="blocks.2.hook_resid_post")
        saelens_v6("saelens/v6_constant_norm_rescale", StandardSAE, StandardSAEConfig, seed=320,
                   d_in=16, d_sae=48, act="relu",
                   cfg_extra=dict(apply_b_dec_to_input=True, normalize_activations="constant_norm_rescale"),
                   maths=dict(apply_b_dec=True, norm="constant_norm_rescale"),
                   hook="blocks.0.hook_resid_post", x_scale=40.0)
        saelens_v6("saelens/v6_layer_norm", JumpReLUSAE, JumpReLUSAEConfig, seed=330, d_in=20, d_sae=60,
                   act="jumprelu",
                   cfg_extra=dict(apply_b_dec_to_input=False, normalize_activations="layer_norm"),
                   maths=dict(apply_b_dec=False, norm="layer_norm"),
                   hook="blocks.1.hook_resid_post", x_scale=7.0, x_shift=3.0)
    else:  # pragma: no cover
        print("sae-lens not installed: SAELens v6 fixtures keep their committed versions", file=sys.stderr)
    saelens_legacy_standard()
    sparsify_fixture("sparsify/topk_bf16/layers.2", seed=500, d_in=24, expansion=2, k=5,
                     activation="topk", dtype=torch.bfloat16)
    sparsify_fixture("sparsify/groupmax_f32/layers.2", seed=600, d_in=16, expansion=3, k=8,
                     activation="groupmax", dtype=torch.float32)
    dsg_fixture()
    (ROOT / "MANIFEST.json").write_text(json.dumps(MANIFEST, indent=1, sort_keys=True) + "\n")
    total = sum(f.stat().st_size for f in ROOT.rglob("*") if f.is_file())
    print(f"wrote {len(MANIFEST)} fixtures, {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
