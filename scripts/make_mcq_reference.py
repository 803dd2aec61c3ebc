#!/usr/bin/env python3
"""Reference MCQ scores of SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to f32 by transformers) for `dsg eval mcq`.

Why: dsg's three MCQ protocols (paper §5.1, lm-eval, cloze) are checked against an independent implementation.
This script builds each prompt with its own templates (lm-eval's MMLU `description` + `doc_to_text`, the paper's
chat prompt through the GGUF's chat template, `Question: …\\nAnswer:`), tokenises it with the reference tokenizer
built from the GGUF vocabulary (the one tests/model_smollm2.rs checks dsg's tokenizer against), runs transformers,
and scores as each protocol says. The Rust test checks that dsg builds the same texts and ids, then compares
scores and predictions.

Sample (fixed rule): the held-out questions (first hex digit of sha256(question) 8-f) of every
`mmlu/test/*_test.csv`, ordered by that sha256, the first 40; and of `wmdp/bio_questions.json`, the first 20.

Run from the repository root (about a minute on 2 cores):
    /work/pyref/bin/python scripts/make_mcq_reference.py
Output: tests/fixtures/mcq/reference.json
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import gguf
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_smollm2_reference import GGUF_SHA256, sha256, tokenizer_from_gguf_metadata  # noqa: E402

N_MMLU, N_WMDP = 40, 20
LETTERS = "ABCDEFGHIJ"


def qhash(q: str) -> str:
    return hashlib.sha256(q.encode("utf-8")).hexdigest()


def heldout_first(items: list[dict], n: int) -> list[dict]:
    held = [it for it in items if qhash(it["question"])[0] in "89abcdef"]
    return sorted(held, key=lambda it: qhash(it["question"]))[:n]


def read_mmlu(dir_: Path) -> list[dict]:
    items = []
    for path in sorted(dir_.glob("*_test.csv")):
        subject = path.stem[: -len("_test")]
        with open(path, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                q, a, b, c, d, key = row
                items.append({"id": f"{path.name}:{i}", "subject": subject, "question": q,
                              "choices": [a, b, c, d], "answer": "ABCD".index(key.strip())})
    return items


def read_wmdp(path: Path) -> list[dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [{"id": f"{path.name}:{i}", "subject": "biology", "question": r["question"], "choices": r["choices"],
             "answer": r["answer"]} for i, r in enumerate(data)]


def lm_eval_text(it: dict) -> str:
    body = it["question"].strip() + "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(it["choices"]))
    return f"The following are multiple choice questions (with answers) about {it['subject'].replace('_', ' ')}.\n\n" \
           f"{body}\nAnswer:"


def paper_text(hf_tok, template: str, it: dict) -> str:
    body = it["question"] + "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(it["choices"]))
    user = f"The following are multiple choice questions (with answers) about {it['subject'].replace('_', ' ')}.\n{body}"
    text = hf_tok.apply_chat_template([{"role": "user", "content": user}], chat_template=template, tokenize=False,
                                      add_generation_prompt=True)
    return text + "Answer: ("


@torch.no_grad()
def logsoftmax_rows(model, rows: list[list[int]]) -> list[torch.Tensor]:
    return [torch.log_softmax(model(input_ids=torch.tensor([r]), use_cache=False).logits[0].double(), -1)
            for r in rows]


def continuation_pairs(enc, text: str, conts: list[str]) -> tuple[list[int], list[list[int]]]:
    ctx = enc(text)
    return ctx, [enc(text + c)[len(ctx):] for c in conts]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=os.path.expanduser("~/.cache/dsg/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--data", default=os.environ.get("DSG_SHARED_DATA", "../shared/data"))
    ap.add_argument("--out", default="tests/fixtures/mcq/reference.json")
    args = ap.parse_args()
    gguf_path, data = Path(args.gguf), Path(args.data)
    assert sha256(gguf_path) == GGUF_SHA256, "unexpected GGUF"
    template = gguf.GGUFReader(str(gguf_path)).fields["tokenizer.chat_template"].contents()
    with tempfile.TemporaryDirectory() as td:
        os.symlink(gguf_path.resolve(), Path(td) / gguf_path.name)
        hf_tok = AutoTokenizer.from_pretrained(td, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(td, gguf_file=gguf_path.name, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
    ref_tok = tokenizer_from_gguf_metadata(gguf_path)

    def enc(t: str) -> list[int]:
        return ref_tok.encode(t, add_special_tokens=False).ids

    items = heldout_first(read_mmlu(data / "mmlu/test"), N_MMLU) + \
        heldout_first(read_wmdp(data / "wmdp/bio_questions.json"), N_WMDP)
    out = []
    for it in items:
        n = len(it["choices"])
        rec = dict(it)
        # paper: max over the letter and space-letter probabilities at the last prompt position
        text = paper_text(hf_tok, template, it)
        ids = enc(text)
        lp = logsoftmax_rows(model, [ids])[0][-1]
        cands = [[enc(LETTERS[i])[0], enc(" " + LETTERS[i])[0]] for i in range(n)]
        probs = [max(float(lp[a].exp()), float(lp[b].exp())) for a, b in cands]
        rec["paper"] = {"text": text, "ids": ids, "scores": probs, "prediction": max(range(n), key=probs.__getitem__)}
        # lm-eval and cloze: summed log-likelihood of each continuation, one pass over context + continuation
        for name, text, conts in [("lm_eval", lm_eval_text(it), [f" {LETTERS[i]}" for i in range(n)]),
                                  ("cloze", f"Question: {it['question']}\nAnswer:", [f" {c}" for c in it["choices"]])]:
            ctx, cont_ids = continuation_pairs(enc, text, conts)
            lps = logsoftmax_rows(model, [ctx + c for c in cont_ids])
            ll = [float(sum(lp[len(ctx) - 1 + k, t] for k, t in enumerate(c))) for lp, c in zip(lps, cont_ids)]
            r = {"text": text, "ids": ctx, "continuations": cont_ids, "scores": ll,
                 "prediction": max(range(n), key=ll.__getitem__)}
            if name == "cloze":
                norm = [v / len(c.encode("utf-8")) for v, c in zip(ll, conts)]
                r["norm_scores"], r["norm_prediction"] = norm, max(range(n), key=norm.__getitem__)
            rec[name] = r
        out.append(rec)
        print(it["id"], rec["paper"]["prediction"], rec["lm_eval"]["prediction"], rec["cloze"]["prediction"],
              it["answer"], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    acc = {p: sum(r[p]["prediction"] == r["answer"] for r in out) for p in ["paper", "lm_eval", "cloze"]}
    acc["cloze_norm"] = sum(r["cloze"]["norm_prediction"] == r["answer"] for r in out)
    meta = {"gguf_sha256": GGUF_SHA256, "transformers": __import__("transformers").__version__,
            "torch": torch.__version__, "dtype": "float32", "questions": len(out), "correct": acc,
            "rule": "held-out (sha256 first hex 8-f), ordered by sha256: first 40 of mmlu/test/*_test.csv, "
                    "first 20 of wmdp/bio_questions.json"}
    Path(args.out).write_text(json.dumps({"meta": meta, "questions": out}, ensure_ascii=False) + "\n")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
