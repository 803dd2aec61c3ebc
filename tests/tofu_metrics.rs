//! TOFU: every metric of `dsg::eval::tofu::metrics` against the Python reference
//! (`scripts/make_tofu_reference.py`: open-unlearning's formulas, SciPy, rouge-score, NLTK) to
//! 1e-6, the TOFU readers on the shared data, `encode_qa`, and the evaluation end to end on the
//! tiny GGUF model, unguarded and guarded.

mod common;

use serde_json::Value;

use dsg::eval::tofu::metrics::{
    closer_to_1_better, harmonic_mean, ks_2samp, kstwo_sf, normalised_probability, porter_stem,
    probability, rouge, rouge_tokens, smirnov_sf, true_better, truth_ratio, KsMethod,
};

fn reference() -> Value {
    let path = common::fixture("tofu/reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// `|got − want| ≤ 1e-6`, and for values under 1e-6 also relative agreement to 1e-6.
#[track_caller]
fn close(got: f64, want: f64, what: &str) {
    let abs = (got - want).abs();
    let ok = if want.abs() < 1e-6 && want != 0.0 {
        abs <= 1e-6 * want.abs()
    } else {
        abs <= 1e-6
    };
    assert!(ok, "{what}: got {got:e}, want {want:e}");
}

/// A stored sample: a list, or a generator `{n, a, c, m, scale, offset}`.
fn sample(v: &Value) -> Vec<f64> {
    if v.is_array() {
        return f64s(v);
    }
    let g = |k: &str| v[k].as_u64().unwrap() as i64;
    let (scale, offset) = (v["scale"].as_f64().unwrap(), v["offset"].as_f64().unwrap());
    (0..g("n"))
        .map(|i| ((g("a") * i + g("c")) % g("m")) as f64 / g("m") as f64 * scale + offset)
        .collect()
}

#[test]
fn probability_matches_open_unlearning() {
    for case in reference()["probability"].as_array().unwrap() {
        let p = probability(&f64s(&case["logprobs"]));
        close(p.prob, case["prob"].as_f64().unwrap(), "prob");
        close(p.avg_loss, case["avg_loss"].as_f64().unwrap(), "avg_loss");
    }
}

#[test]
fn truth_ratio_and_aggregates_match_open_unlearning() {
    for set in reference()["truth_ratio"].as_array().unwrap() {
        let name = set["name"].as_str().unwrap();
        let correct = f64s(&set["correct_avg_loss"]);
        let wrong: Vec<Vec<f64>> = set["wrong_avg_loss"]
            .as_array()
            .unwrap()
            .iter()
            .map(f64s)
            .collect();
        let ratios: Vec<f64> = correct
            .iter()
            .zip(&wrong)
            .map(|(&c, w)| truth_ratio(c, w))
            .collect();
        for (got, want) in ratios.iter().zip(f64s(&set["truth_ratio"])) {
            close(*got, want, &format!("{name}: truth ratio"));
        }
        close(
            closer_to_1_better(&ratios),
            set["closer_to_1_better"].as_f64().unwrap(),
            name,
        );
        close(
            true_better(&ratios),
            set["true_better"].as_f64().unwrap(),
            name,
        );
        let pert: Vec<Vec<f64>> = wrong
            .iter()
            .map(|w| w.iter().map(|l| (-l).exp()).collect())
            .collect();
        let per_sample: Vec<f64> = pert
            .iter()
            .map(|p| p.iter().sum::<f64>() / p.len() as f64)
            .collect();
        close(
            per_sample.iter().sum::<f64>() / per_sample.len() as f64,
            set["perturbed_prob_agg"].as_f64().unwrap(),
            name,
        );
        let norm: Vec<f64> = correct
            .iter()
            .zip(&pert)
            .map(|(c, p)| normalised_probability((-c).exp(), p))
            .collect();
        for (got, want) in norm.iter().zip(f64s(&set["normalised"])) {
            close(*got, want, &format!("{name}: normalised"));
        }
    }
}

#[test]
fn harmonic_mean_matches_scipy() {
    for case in reference()["hmean"].as_array().unwrap() {
        close(
            harmonic_mean(&f64s(&case["values"])),
            case["hmean"].as_f64().unwrap(),
            "hmean",
        );
    }
}

#[test]
fn ks_2samp_matches_scipy() {
    for case in reference()["ks_2samp"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let r = ks_2samp(&sample(&case["a"]), &sample(&case["b"])).unwrap();
        let method = match case["method"].as_str().unwrap() {
            "exact" => KsMethod::Exact,
            _ => KsMethod::Asymp,
        };
        assert_eq!(r.method, method, "{name}");
        close(r.statistic, case["statistic"].as_f64().unwrap(), name);
        close(r.pvalue, case["pvalue"].as_f64().unwrap(), name);
    }
}

#[test]
fn kstwo_and_smirnov_match_scipy() {
    let reference = reference();
    for case in reference["kstwo_sf"].as_array().unwrap() {
        let (n, x) = (case["n"].as_u64().unwrap(), case["x"].as_f64().unwrap());
        close(
            kstwo_sf(x, n),
            case["sf"].as_f64().unwrap(),
            &format!("kstwo.sf({x}, {n})"),
        );
    }
    for case in reference["smirnov"].as_array().unwrap() {
        let (n, x) = (case["n"].as_u64().unwrap(), case["x"].as_f64().unwrap());
        close(
            smirnov_sf(n, x),
            case["sf"].as_f64().unwrap(),
            &format!("smirnov({n}, {x})"),
        );
    }
}

#[test]
fn rouge_matches_rouge_score() {
    for case in reference()["rouge"].as_array().unwrap() {
        let (t, p) = (
            case["target"].as_str().unwrap(),
            case["prediction"].as_str().unwrap(),
        );
        let want_tokens: Vec<String> = case["target_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        assert_eq!(rouge_tokens(t), want_tokens, "tokens of {t:?}");
        let r = rouge(t, p);
        let what = format!("{t:?} vs {p:?}");
        for (got, want) in [
            (r.rouge1.precision, &case["rouge1"][0]),
            (r.rouge1.recall, &case["rouge1"][1]),
            (r.rouge1.fmeasure, &case["rouge1"][2]),
            (r.rouge_l.precision, &case["rougeL"][0]),
            (r.rouge_l.recall, &case["rougeL"][1]),
            (r.rouge_l.fmeasure, &case["rougeL"][2]),
        ] {
            close(got, want.as_f64().unwrap(), &what);
        }
    }
}

#[test]
fn porter_stems_match_nltk() {
    let reference = reference();
    let stems = reference["stems"].as_object().unwrap();
    let wrong: Vec<String> = stems
        .iter()
        .filter(|(w, s)| porter_stem(w) != s.as_str().unwrap())
        .map(|(w, s)| format!("{w}: got {}, want {s}", porter_stem(w)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} stems differ: {wrong:?}",
        wrong.len(),
        stems.len()
    );
}
