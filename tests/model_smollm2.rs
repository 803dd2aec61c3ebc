//! The real default model, SmolLM2-135M-Instruct (Q4_1 GGUF, fetched on first use), against
//! transformers loading the same GGUF in f32 (`scripts/make_smollm2_reference.py`) and llama.cpp.
//!
//! On the first 4096 tokens of the WikiText-2 raw test text (no BOS, one pass): identical token ids,
//! top-1 agreement >= 99.5% of positions, perplexity within 1% of llama.cpp's 17.61 (llama-cpp-python
//! 0.3.36) and within 0.2% of transformers'. Chat: the template renders the same ids, greedy decoding
//! answers the same.

mod common;

use candle_core::{Device, IndexOp};
use common::{fixture, ids, load_st, relative_error, shared_data_or_skip, top1_and_nll};
use dsg::generate::{generate, GenerateOptions};
use dsg::model::{
    self, fetch, Batch, Capture, ForwardOptions, HookPoint, Logits, Message, NoHooks,
};

const LLAMA_CPP_PPL: f64 = 17.61;

fn smollm2() -> model::LoadedModel {
    let path = fetch::ensure_default_model().expect("fetch the default model");
    model::load(&path, &Device::Cpu).expect("load the default model")
}

fn reference_json() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("smollm2/wikitext_ref.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn wikitext_parity_with_transformers_and_llama_cpp() {
    let Some(raw) = shared_data_or_skip("wikitext/wikitext-2-raw-v1.test.raw") else {
        return;
    };
    let lm = smollm2();
    let st = load_st(&fixture("smollm2/wikitext_ref.safetensors"));
    let json = reference_json();
    let text = std::fs::read_to_string(raw).unwrap();
    let mut tokens = lm.tokenizer.encode(&text, false).unwrap();
    tokens.truncate(4096);
    assert_eq!(
        tokens,
        ids(&st["input_ids"]),
        "tokenization differs from the reference"
    );

    let batch = Batch::single(tokens.clone(), &Device::Cpu).unwrap();
    let mut cap = Capture::new([HookPoint::resid_post(15)]);
    let opts = ForwardOptions {
        logits: Logits::None,
        ..Default::default()
    };
    let out = lm.model.forward(&batch, &opts, &mut cap, None).unwrap();
    let (top1, nll) = top1_and_nll(&lm.model, &out.residual.squeeze(0).unwrap(), &tokens);
    let ref_top1: Vec<u32> = st["top1"]
        .to_dtype(candle_core::DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect();
    let agree = top1.iter().zip(&ref_top1).filter(|(a, b)| a == b).count() as f64 / 4096.0;
    assert!(
        agree >= 0.995,
        "top-1 agreement with transformers {agree:.4} < 0.995"
    );

    let ppl = (nll.iter().sum::<f64>() / nll.len() as f64).exp();
    let ref_ppl = json["perplexity"].as_f64().unwrap();
    assert!(
        (ppl / ref_ppl - 1.0).abs() < 0.002,
        "perplexity {ppl:.4} vs transformers {ref_ppl:.4}"
    );
    assert!(
        (ppl / LLAMA_CPP_PPL - 1.0).abs() < 0.01,
        "perplexity {ppl:.4} vs llama.cpp {LLAMA_CPP_PPL}"
    );

    // The residual stream at block 15, first 32 positions, relative to its norm.
    let ours = cap
        .get(HookPoint::resid_post(15))
        .unwrap()
        .i((0, 0..32))
        .unwrap();
    let theirs = &st["resid_post_15"];
    let rel = relative_error(&ours, theirs);
    assert!(rel < 1e-4, "blocks.15.hook_resid_post relative error {rel}");
}

#[test]
fn chat_prompt_and_greedy_answer_match_transformers() {
    let lm = smollm2();
    let json = reference_json();
    let chat = &json["chat"];
    let prompt = lm
        .tokenizer
        .encode_chat(
            &[Message::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    let expected: Vec<u32> = chat["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(prompt, expected);
    let greedy: Vec<u32> = chat["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .take(8)
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    for quantized_decode in [false, true] {
        let opts = GenerateOptions {
            max_new_tokens: 8,
            stop_tokens: vec![2],
            quantized_decode,
            ..Default::default()
        };
        let g = generate(&lm.model, &prompt, &opts, &mut NoHooks, |_| {}).unwrap();
        assert_eq!(g.tokens, greedy, "quantized_decode = {quantized_decode}");
        assert_eq!(
            lm.tokenizer.decode(&g.tokens, true).unwrap(),
            "The capital of France is Paris."
        );
    }
}
