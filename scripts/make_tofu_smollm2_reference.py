#!/usr/bin/env python3
"""Write tests/fixtures/tofu/smollm2.json: open-unlearning's TOFU pipeline on SmolLM2-135M-Instruct
for a few real TOFU rows, so tests/tofu_metrics.rs can check dsg's encoding, scoring and greedy
answers against it (not only the metric formulas).

The code path is open-unlearning's (locuslab/open-unlearning @ d3d7cf9), copied below:
  * src/data/utils.py preprocess_chat_instance (apply_chat_template=True, no system prompt): the
    chat ids, the prompt ids with the generation prompt, EOS appended when missing, labels = ids
    after the prompt;
  * src/evals/metrics/utils.py evaluate_probability: CrossEntropyLoss over the shifted labels,
    avg_loss = summed loss / labelled tokens, prob = exp(-avg_loss);
  * src/evals/metrics/memorization.py truth_ratio and probability_w_options;
  * src/evals/metrics/utils.py eval_text_similarity: greedy generate (do_sample=False), decode with
    skip_special_tokens, strip, rouge_score with the stemmer against the ground truth.
The model is transformers loading the same GGUF in float32 (eager attention, CPU). Its GGUF
tokenizer omits llama.cpp's individual-digit split (see scripts/README.md), so the script puts the
`Digits(individual_digits=True)` pre-tokenizer back before ByteLevel, as dsg's tokenizer has it.

Usage (from the repository root, about 30 s):
  /work/pyref/bin/python scripts/make_tofu_smollm2_reference.py \
      [--gguf ~/.cache/dsg/models/SmolLM2-135M-Instruct.Q4_1.gguf] [--tofu ../shared/data/tofu]
"""

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from rouge_score import rouge_scorer
from tokenizers import pre_tokenizers
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

IGNORE_INDEX = -100
OUT = "tests/fixtures/tofu/smollm2.json"
FORGET_ROWS = 4
RA_ROWS = 3
MAX_NEW_TOKENS = 24


def ids_of(x):
    return list(x["input_ids"]) if isinstance(x, dict) or hasattr(x, "keys") else list(x)


def preprocess_chat_instance(tokenizer, prompt, response):  # src/data/utils.py, chat path
    chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    chat_ids = ids_of(tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=False))
    prompt_ids = ids_of(tokenizer.apply_chat_template(chat[:-1], tokenize=True, add_generation_prompt=True))
    if chat_ids[-1] != tokenizer.eos_token_id:
        chat_ids += [tokenizer.eos_token_id]
    len_matched = len(prompt_ids)
    labels = [IGNORE_INDEX] * len_matched + chat_ids[len_matched:]
    return chat_ids, labels, prompt_ids


def evaluate_probability(model, input_ids, labels):  # src/evals/metrics/utils.py, one row
    input_ids = torch.tensor([input_ids])
    labels = torch.tensor([labels])
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
    shifted_labels = labels[..., 1:].contiguous()
    logits = logits[..., :-1, :].contiguous()
    loss_function = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="none")
    losses = loss_function(logits.transpose(-1, -2), shifted_labels).sum(dim=-1)
    num_token_gt = (labels != IGNORE_INDEX).sum(-1)
    avg_losses = losses / num_token_gt
    return float(torch.exp(-avg_losses)[0]), float(avg_losses[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.expanduser("~/.cache/dsg/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--tofu", default=os.environ.get("DSG_SHARED_DATA", "../shared/data") + "/tofu")
    args = ap.parse_args()
    torch.manual_seed(0)
    gguf_path = Path(args.gguf)
    with tempfile.TemporaryDirectory() as td:
        os.symlink(gguf_path.resolve(), Path(td) / gguf_path.name)
        tok = AutoTokenizer.from_pretrained(td, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(td, gguf_file=gguf_path.name, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)

    def rows(name, n):
        path = Path(args.tofu) / name
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:n]

    out = {"generated_by": "scripts/make_tofu_smollm2_reference.py", "max_new_tokens": MAX_NEW_TOKENS, "sets": {}}
    for key, name, n, para in [("forget", "forget01_perturbed.json", FORGET_ROWS, True),
                               ("ra", "real_authors_perturbed.json", RA_ROWS, False)]:
        samples = []
        for index, r in enumerate(rows(name, n)):
            answers = [r["answer"]] + ([r["paraphrased_answer"]] if para else []) + r["perturbed_answer"]
            scored = []
            for a in answers:
                ids, labels, prompt_ids = preprocess_chat_instance(tok, r["question"], a)
                prob, avg_loss = evaluate_probability(model, ids, labels)
                scored.append({"ids": ids, "answer_start": len(prompt_ids), "prob": prob, "avg_loss": avg_loss})
            correct = scored[1] if para else scored[0]
            wrong = scored[2:] if para else scored[1:]
            wrong_prob = np.exp(-np.mean([w["avg_loss"] for w in wrong]))
            truth_ratio = wrong_prob / (np.exp(-correct["avg_loss"]) + 1e-10)
            normalised = scored[0]["prob"] / (scored[0]["prob"] + sum(w["prob"] for w in wrong) + 1e-10)
            prompt_ids = torch.tensor([scored[0]["ids"][:scored[0]["answer_start"]]])
            with torch.no_grad():
                gen = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), do_sample=False,
                                     top_p=None, temperature=None, max_new_tokens=MAX_NEW_TOKENS,
                                     pad_token_id=tok.eos_token_id)
            text = tok.decode(gen[0, prompt_ids.shape[-1]:], skip_special_tokens=True,
                              clean_up_tokenization_spaces=True).strip()
            rouge = scorer.score(r["answer"], text)
            samples.append({"index": index, "question": r["question"], "answers": answers, "scored": scored,
                            "truth_ratio": float(truth_ratio), "normalised": float(normalised),
                            "generation": text, "rougeL_recall": rouge["rougeL"].recall,
                            "rouge1_recall": rouge["rouge1"].recall})
            print(key, index, f"prob {scored[0]['prob']:.4f} tr {truth_ratio:.4f} gen {text!r}", flush=True)
        out["sets"][key] = samples
    Path(OUT).parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
