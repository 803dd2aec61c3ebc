#!/usr/bin/env python3
"""Write tests/fixtures/tofu/reference.json: TOFU's metrics on fixed inputs, computed the way
open-unlearning computes them, for tests/tofu_metrics.rs to match to 1e-6.

Sources (locuslab/open-unlearning @ d3d7cf9, src/evals/metrics/):
  * probability:      utils.py evaluate_probability  (avg_loss = summed NLL / answer tokens, prob = exp(-avg_loss))
  * truth ratio:      memorization.py truth_ratio     (exp(-mean wrong avg_loss) / (exp(-correct avg_loss) + 1e-10),
                      aggregators closer_to_1_better, true_better)
  * normalised prob:  memorization.py probability_w_options (correct / (correct + sum wrong + 1e-10))
  * harmonic mean:    utility.py hm_aggregate = scipy.stats.hmean
  * KS p-value:       privacy.py ks_test = scipy.stats.ks_2samp(...).pvalue (defaults: two-sided, method='auto')
  * ROUGE:            utils.py eval_rouge_recall_batch = rouge_score RougeScorer(['rouge1', 'rougeL'], use_stemmer=True),
                      scorer.score(ground_truth, generation)
Also scipy.stats.kstwo.sf and scipy.special.smirnov on a grid (the asymptotic KS branch), and NLTK's
PorterStemmer (rouge-score's stemmer) on words.

Large KS samples are not stored: a sample {"n", "a", "c", "m", "scale", "offset"} is
x_i = ((a*i + c) % m) / m * scale + offset for i in 0..n, computed the same way in Rust.

Usage (from the repository root): /work/pyref/bin/python scripts/make_tofu_reference.py [--tofu DIR]
The real-text cases (ROUGE pairs and stems from TOFU answers) need TOFU's retain_perturbed.json.
"""

import argparse
import json
import os
import sys

import numpy as np
import scipy
import scipy.special
import scipy.stats
import nltk
import rouge_score
from nltk.stem import porter
from rouge_score import rouge_scorer, tokenize

OUT = "tests/fixtures/tofu/reference.json"


# --- open-unlearning's formulas, as written there -------------------------------------------

def aggregate_to_1D(x):  # utils.py
    return np.mean(x, axis=tuple(range(1, x.ndim)))


def closer_to_1_better(arr):  # memorization.py, truth_ratio
    return np.mean(np.minimum(arr, 1 / (arr + 1e-10)))


def true_better(arr):  # memorization.py, truth_ratio
    return np.mean(np.maximum(0, 1 - arr))


def truth_ratios(correct_avg_losses, wrong_avg_losses):  # memorization.py, truth_ratio
    correct_avg_losses = aggregate_to_1D(np.array(correct_avg_losses))
    wrong_avg_losses = aggregate_to_1D(np.array(wrong_avg_losses))
    correct_prob = np.exp(-correct_avg_losses)
    wrong_prob = np.exp(-wrong_avg_losses)
    return wrong_prob / (correct_prob + 1e-10)


def probability_w_options(correct, all_wrong):  # memorization.py
    correct = np.array(correct)
    all_wrong = np.array(all_wrong)
    wrong = np.sum(all_wrong, axis=tuple(range(1, all_wrong.ndim)))
    return correct / (correct + wrong + 1e-10)


def probability(logprobs):  # utils.py, evaluate_probability, for one row
    losses = np.sum(-np.asarray(logprobs, dtype=np.float64))
    avg_loss = losses / len(logprobs)
    return float(np.exp(-avg_loss)), float(avg_loss)


# --- inputs ----------------------------------------------------------------------------------

def gen(spec):
    i = np.arange(spec["n"], dtype=np.int64)
    k = (spec["a"] * i + spec["c"]) % spec["m"]
    return (k / spec["m"]) * spec["scale"] + spec["offset"]


def spec(n, a, c, m, scale=1.0, offset=0.0):
    return {"n": n, "a": a, "c": c, "m": m, "scale": scale, "offset": offset}


def floats(x):
    return [float(v) for v in x]


def ks_cases(rng):
    cases = []

    def add(name, a, b):
        xa = gen(a) if isinstance(a, dict) else np.asarray(a, dtype=np.float64)
        xb = gen(b) if isinstance(b, dict) else np.asarray(b, dtype=np.float64)
        r = scipy.stats.ks_2samp(xa, xb)
        exact = max(len(xa), len(xb)) <= 10000
        case = {"name": name, "statistic": float(r.statistic), "pvalue": float(r.pvalue),
                "method": "exact" if exact else "asymp"}
        case["a"] = a if isinstance(a, dict) else floats(xa)
        case["b"] = b if isinstance(b, dict) else floats(xb)
        cases.append(case)

    add("small equal sizes", rng.normal(size=10), rng.normal(0.8, size=10))
    add("unequal sizes", rng.normal(size=7), rng.normal(0.3, size=13))
    add("ties, integers", rng.integers(0, 5, size=20), rng.integers(0, 6, size=15))
    add("ties across samples, equal sizes", rng.integers(0, 3, size=12), rng.integers(1, 4, size=12))
    same = rng.normal(size=9)
    add("identical samples", same, same[::-1])
    add("disjoint", np.arange(1, 6), np.arange(6, 11))
    add("one value each", [0.5], [0.25])
    add("one against three", [2.0], [1.0, 3.0, 4.0])
    add("sizes 3 and 6 (gcd 3)", rng.normal(size=3), rng.normal(1.0, size=6))
    tr = lambda mu, n: np.exp(rng.normal(mu, 1.0, size=n))
    add("truth ratios, forget10 vs retain model", tr(-0.5, 400), tr(-0.3, 400))
    add("truth ratios, forget01 sizes", tr(-1.0, 40), tr(0.0, 40))
    add("truth ratios, 200 vs 400", tr(-0.2, 200), tr(0.0, 400))
    add("truth ratios, 40 vs 400", tr(-0.7, 40), tr(0.0, 400))
    add("tiny p-value, disjoint 400", tr(0.0, 400) + 100.0, tr(0.0, 400))
    add("tiny p-value, 390 vs 400", tr(3.0, 390), tr(0.0, 400))
    add("exact at the switch, 10000 vs 9000", spec(10000, 7919, 13, 10007), spec(9000, 104729, 7, 9973, 1.02, -0.01))
    add("asymp past the switch, 10001 vs 8000", spec(10001, 7919, 13, 10007), spec(8000, 104729, 7, 9973, 1.05, -0.02))
    add("asymp, same distribution, 10001 vs 10001", spec(10001, 7919, 13, 10007), spec(10001, 104729, 7, 10009))
    add("asymp, shifted, 12000 vs 11000 (smirnov)", spec(12000, 7919, 13, 12007), spec(11000, 104729, 7, 11003, 1.0, 0.03))
    add("asymp, disjoint, 12000 vs 11000 (0)", spec(12000, 7919, 13, 12007), spec(11000, 104729, 7, 11003, 1.0, 2.0))
    for shift, what in [(0.02, "durbin"), (0.15, "pomeranz"), (0.4, "smirnov"), (0.6, "x >= 0.5"), (0.99, "t >= n-1")]:
        add(f"asymp, 10001 vs 50, shift {shift} ({what})", spec(10001, 7919, 13, 10007),
            spec(50, 37, 3, 53, 1.0, shift))
    add("asymp, 10001 vs 3", spec(10001, 7919, 13, 10007), [0.1, 0.5, 0.9])
    return cases


def kstwo_grid():
    out = []
    for n in [1, 2, 3, 5, 10, 50, 100, 140, 141, 500, 4445, 5000, 100000, 200000]:
        xs = {0.5 / n, 0.7 / n, 1.0 / n, 1.5 / n, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.49, 0.5,
              0.7, 0.95, 0.99, 1.0, (n - 1) / n if n > 1 else 0.5, 0.8 / np.sqrt(n), 1.2 / np.sqrt(n),
              2.0 / np.sqrt(n), 4.0 / np.sqrt(n)}
        for x in sorted(float(v) for v in xs):
            if 0.0 < x <= 1.0:
                out.append({"n": n, "x": x, "sf": float(scipy.stats.kstwo.sf(x, n))})
    return out


def smirnov_grid():
    out = []
    for n in [1, 2, 5, 20, 100, 141, 1000, 5000]:
        for x in [0.0, 0.001, 0.01, 0.5 / n, 1.0 / n, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.999, 1.0]:
            out.append({"n": n, "x": float(x), "sf": float(scipy.special.smirnov(n, x))})
    return out


ROUGE_PAIRS = [
    ("The cat sat on the mat.", "the cat is on the mat"),
    ("", "something"),
    ("something", ""),
    ("", ""),
    ("  \n\t  ", "a"),
    ("Hello, world!!!", "hello world"),
    ("Born on 08/09/1956 in Kuwait City.", "born 8 September 1956 in kuwait"),
    ("BASIL MAHFOUZ AL-KUWAITI", "basil mahfouz al kuwaiti"),
    ("running runners ran quickly", "run runner runs quick"),
    ("The Geologist\u2019s guide to Quartz \u2014 caf\u00e9 na\u00efve", "geologists guide quartz cafe naive"),
    ("the the the cat", "the cat cat"),
    ("don't won't it's", "do not will not it is"),
    ("\u0130stanbul Stra\u00dfe \u212aelvin", "istanbul strasse kelvin"),
    ("3rd 21st 1990s 2,000.5", "third 21 st 1990 s 2 000 5"),
    ("generalization relational conditional", "generalize relate condition"),
    ("skies dying lying tying news innings", "sky die lie tie news inning"),
    ("a b c d e f g", "g f e d c b a"),
    ("The author's full name is Hsiao Yun-Hwa.", "Hsiao Yun-Hwa is the complete name of the writer."),
    ("Yes.", "No, the author was born in 1958."),
    ("I can't help with that.", "The author in question is Jaime Vasquez."),
]

STEM_WORDS = """
caresses ponies ties caress cats feed agreed plastered bled motoring sing conflated troubled sized hopping tanned
falling hissing fizzed failing filing happy sky relational conditional rational valenci hesitanci digitizer
conformabli radicalli differentli vileli analogousli vietnamization predication operator feudalism decisiveness
hopefulness callousness formaliti sensitiviti sensibiliti triplicate formative formalize electriciti electrical
hopeful goodness revival allowance inference airliner gyroscopic adjustable defensible irritant replacement
adjustment dependent adoption homologou communism activate angulariti homologous effective bowdlerize probate
rate cease controll roll generalizations oscillators flies dies spied died enjoy spy fly try tried fully
geology theology archaeology philology skies dying lying tying news innings inning outings outing cannings
canning howe proceed exceed succeed yyyy syzygy toy ivy trees troubles private oaten orrery by tr ee y
abilities accessibility alli bli logi fulli eed ied ies ing ed s ss sses 1956 8th 21st 3rd 1990s a0b0
""".split()


def tofu_text(tofu):
    path = os.path.join(tofu, "retain_perturbed.json")
    if not os.path.exists(path):
        sys.exit(f"{path} not found: pass --tofu with TOFU's folder")
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    return path, rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tofu", default=os.environ.get("DSG_SHARED_DATA", "../shared/data") + "/tofu")
    args = ap.parse_args()
    rng = np.random.default_rng(20240611)

    prob_cases = []
    for n in [1, 2, 5, 17, 40]:
        lp = -rng.exponential(1.5, size=n)
        p, l = probability(lp)
        prob_cases.append({"logprobs": floats(lp), "prob": p, "avg_loss": l})
    prob_cases.append({"logprobs": [0.0, 0.0], **dict(zip(["prob", "avg_loss"], probability([0.0, 0.0])))})
    prob_cases.append({"logprobs": [-40.0, -35.5], **dict(zip(["prob", "avg_loss"], probability([-40.0, -35.5])))})

    tr_sets = []
    for name, correct, wrong in [
        ("random", rng.uniform(0, 5, size=12), rng.uniform(0, 6, size=(12, 5))),
        ("utility sets (3 wrong)", rng.uniform(0, 3, size=8), rng.uniform(0, 4, size=(8, 3))),
        ("extremes", np.array([0.0, 30.0, 50.0, 0.0, 25.0]),
         np.array([[0.0] * 5, [30.0] * 5, [0.0, 1.0, 2.0, 3.0, 60.0], [40.0] * 5, [23.0, 24.0, 25.0, 26.0, 27.0]])),
    ]:
        ratios = truth_ratios(correct, wrong)
        pert_probs = np.exp(-wrong)
        tr_sets.append({
            "name": name,
            "correct_avg_loss": floats(correct),
            "wrong_avg_loss": [floats(w) for w in wrong],
            "truth_ratio": floats(ratios),
            "closer_to_1_better": float(closer_to_1_better(ratios)),
            "true_better": float(true_better(ratios)),
            "perturbed_prob_agg": float(np.mean(aggregate_to_1D(pert_probs))),
            "normalised": floats(probability_w_options(np.exp(-correct), pert_probs)),
            "normalised_agg": float(np.mean(probability_w_options(np.exp(-correct), pert_probs))),
        })

    hmean_cases = []
    for values in [rng.uniform(0.05, 1.0, size=9), [0.9, 0.4, 0.6, 0.95, 0.5, 0.7, 0.92, 0.45, 0.66],
                   [0.0, 0.5, 0.7], [1e-8, 1.0, 1.0], [0.3]]:
        hmean_cases.append({"values": floats(values), "hmean": float(scipy.stats.hmean(values))})

    path, rows = tofu_text(args.tofu)
    pairs = list(ROUGE_PAIRS)
    for r in rows[:30]:
        pairs.append((r["answer"], r["paraphrased_answer"]))
        pairs.append((r["answer"], r["perturbed_answer"][0]))
        pairs.append((r["paraphrased_answer"], r["question"]))
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    stemmer = porter.PorterStemmer()
    rouge_cases = []
    for target, prediction in pairs:
        s = scorer.score(target, prediction)
        rouge_cases.append({
            "target": target, "prediction": prediction,
            "target_tokens": tokenize.tokenize(target, stemmer),
            "rouge1": [s["rouge1"].precision, s["rouge1"].recall, s["rouge1"].fmeasure],
            "rougeL": [s["rougeL"].precision, s["rougeL"].recall, s["rougeL"].fmeasure],
        })
    words = set(STEM_WORDS)
    for r in rows[:100]:
        for text in [r["answer"], r["paraphrased_answer"], r["question"], *r["perturbed_answer"]]:
            words.update(tokenize.tokenize(text, None))
    stems = {w: stemmer.stem(w) for w in sorted(words)}

    out = {
        "generated_by": "scripts/make_tofu_reference.py",
        "versions": {"numpy": np.__version__, "scipy": scipy.__version__, "nltk": nltk.__version__,
                     "rouge_score": "0.1.2"},
        "tofu_text": os.path.basename(path),
        "probability": prob_cases,
        "truth_ratio": tr_sets,
        "hmean": hmean_cases,
        "ks_2samp": ks_cases(rng),
        "kstwo_sf": kstwo_grid(),
        "smirnov": smirnov_grid(),
        "rouge": rouge_cases,
        "stems": stems,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:  # one top-level key a line
        f.write("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}"
                                     for k, v in out.items()) + "\n}\n")
    print(f"wrote {OUT}: {len(out['ks_2samp'])} KS cases, {len(out['kstwo_sf'])} kstwo points, "
          f"{len(rouge_cases)} ROUGE pairs, {len(stems)} stems")


if __name__ == "__main__":
    main()
