//! GGUF loading against independent references (fixtures from `scripts/make_gguf_fixtures.py`):
//! F32/F16/Q8_0/Q4_0/Q4_1 dequantisation, llama.cpp's permuted Q/K layout, the embedded tokenizer and
//! chat template; and clear errors for bad files.
//!
//! Tolerance: f32 forward on dequantised weights within 1e-4 of transformers running the same
//! dequantised weights; the quantised decode path agrees on the argmax at >= 90% of positions.

mod common;

use candle_core::{Device, IndexOp};
use common::{fixture, ids, load_st, max_abs_diff};
use dsg::model::{self, Batch, ForwardOptions, Logits, Message, NoHooks};

const FILES: [&str; 5] = [
    "tiny_f32",
    "tiny_f16",
    "tiny_q8_0",
    "tiny_q4_0",
    "tiny_q4_1",
];

#[test]
fn dequantised_forward_matches_transformers() {
    for name in FILES {
        let lm = model::load(&fixture(&format!("gguf/{name}.gguf")), &Device::Cpu).unwrap();
        let st = load_st(&fixture(&format!("gguf/{name}.gguf.reference.safetensors")));
        let row = ids(&st["input_ids"]);
        let batch = Batch::single(row, &Device::Cpu).unwrap();
        let opts = ForwardOptions {
            logits: Logits::All,
            ..Default::default()
        };
        let out = lm.model.forward(&batch, &opts, &mut NoHooks, None).unwrap();
        let logits = out.logits.unwrap().squeeze(0).unwrap();
        let d = max_abs_diff(&logits, &st["logits"]);
        assert!(d <= 1e-4, "{name}: logits differ by {d}");

        if lm.model.has_quantized() {
            let q = ForwardOptions {
                quantized: true,
                ..opts
            };
            let ql = lm
                .model
                .forward(&batch, &q, &mut NoHooks, None)
                .unwrap()
                .logits
                .unwrap();
            let ql = ql.squeeze(0).unwrap();
            let a = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap();
            let b = ql.argmax(1).unwrap().to_vec1::<u32>().unwrap();
            let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64;
            assert!(
                agree >= 0.9,
                "{name}: quantised path agrees on {agree:.2} of argmaxes"
            );
        }
    }
}

#[test]
fn tokenizer_rebuilt_from_gguf_matches_tokenizers() {
    let lm = model::load(&fixture("gguf/tiny_q4_1.gguf"), &Device::Cpu).unwrap();
    let text = std::fs::read_to_string(fixture("gguf/tokenizer_cases.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    for case in cases["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ours = lm.tokenizer.encode(text, false).unwrap();
        assert_eq!(ours, expected, "encoding {text:?}");
        assert_eq!(
            lm.tokenizer.decode(&ours, false).unwrap(),
            text,
            "round trip of {text:?}"
        );
    }
    assert_eq!(lm.tokenizer.bos_id(), Some(1));
    assert_eq!(lm.tokenizer.eos_id(), Some(2));
}

#[test]
fn chat_template_from_gguf_renders_chatml() {
    let lm = model::load(&fixture("gguf/tiny_q4_1.gguf"), &Device::Cpu).unwrap();
    let text = lm
        .tokenizer
        .apply_chat_template(&[Message::new("user", "hi")], true)
        .unwrap();
    assert!(
        text.starts_with("<|im_start|>system\n"),
        "default system prompt: {text:?}"
    );
    assert!(
        text.ends_with("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
        "{text:?}"
    );
    let with_system = lm
        .tokenizer
        .apply_chat_template(
            &[Message::new("system", "S"), Message::new("user", "hi")],
            false,
        )
        .unwrap();
    assert_eq!(
        with_system,
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    );
}

fn load_err(path: &std::path::Path) -> String {
    match model::load(path, &Device::Cpu) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_files_give_clear_errors() {
    let dir = tempdir();
    // Missing file.
    let e = load_err(&dir.join("nope.gguf"));
    assert!(e.contains("nope.gguf") && e.contains("no such path"), "{e}");
    // Not a GGUF at all.
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"definitely not gguf").unwrap();
    let e = load_err(&junk);
    assert!(e.contains("junk.gguf") && e.contains("GGUF"), "{e}");
    // Truncated: header intact, tensor data cut.
    let bytes = std::fs::read(fixture("gguf/tiny_q8_0.gguf")).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&cut);
    assert!(
        e.contains("cut.gguf") && e.contains(".weight") && e.contains("truncated"),
        "{e}"
    );
    // Unknown architecture in a Hugging Face directory.
    let hf = dir.join("bert");
    std::fs::create_dir_all(&hf).unwrap();
    std::fs::write(hf.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    let e = load_err(&hf);
    assert!(
        e.contains("config.json") && e.contains("model_type") && e.contains("bert"),
        "{e}"
    );
    // A directory without config.json.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = load_err(&empty);
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn shape_mismatch_names_the_tensor() {
    let dir = tempdir().join("llama_wrong");
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("tiny/llama_gqa");
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["intermediate_size"] = 96.into();
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    let cfg = model::ModelConfig::from_hf_json(&dir.join("config.json")).unwrap();
    let ws = model::WeightSource::open_safetensors_dir(&dir).unwrap();
    let e = model::Model::load(cfg, &ws, &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("gate_proj") && e.contains("[96, 64]"),
        "{e}"
    );
    // A corrupt safetensors header.
    std::fs::write(
        dir.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}",
    )
    .unwrap();
    let e = model::WeightSource::open_safetensors_dir(&dir)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("safetensors"),
        "{e}"
    );
}

#[test]
fn out_of_vocabulary_ids_are_rejected() {
    let lm = model::load(&fixture("gguf/tiny_f32.gguf"), &Device::Cpu).unwrap();
    let batch = Batch::single(vec![1, 5000], &Device::Cpu).unwrap();
    let e = lm
        .model
        .forward(&batch, &ForwardOptions::default(), &mut NoHooks, None)
        .err()
        .expect("must fail")
        .to_string();
    assert!(e.contains("5000") && e.contains("vocabulary"), "{e}");
    let ok = Batch::single(vec![1, 5], &Device::Cpu).unwrap();
    let out = lm
        .model
        .forward(&ok, &ForwardOptions::default(), &mut NoHooks, None)
        .unwrap();
    assert_eq!(out.logits.unwrap().i(0).unwrap().dims(), &[288]);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dsg-test-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A Hugging Face directory: tiny Llama weights plus a tokenizer.json/tokenizer_config.json written here,
/// with Gemma's chat template (which forbids a system turn and renders `assistant` as `model`).
#[test]
fn hf_directory_with_tokenizer_and_gemma_template() {
    let dir = tempdir().join("hf_llama");
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("tiny/llama_gqa");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    // 253 byte symbols + 3 specials = the model's 256 ids.
    let bytes: Vec<String> = {
        let tok = model::load(&fixture("gguf/tiny_f32.gguf"), &Device::Cpu)
            .unwrap()
            .tokenizer;
        (3..256u32).map(|i| tok_str_raw(&tok, i)).collect()
    };
    let mut vocab = serde_json::Map::new();
    for (i, b) in bytes.iter().enumerate() {
        vocab.insert(b.clone(), (i as u64).into());
    }
    let specials = ["<bos>", "<start_of_turn>", "<end_of_turn>"];
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            vocab.insert(s.to_string(), (253 + i as u64).into());
            serde_json::json!({"id": 253 + i, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let template = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";
    let cfg = serde_json::json!({"bos_token": "<bos>", "eos_token": "<end_of_turn>", "add_bos_token": true,
        "chat_template": template});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();

    let lm = model::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(lm.tokenizer.bos_id(), Some(253));
    assert!(lm.tokenizer.adds_bos());
    let msgs = [
        Message::new("user", " hi "),
        Message::new("assistant", "yo"),
    ];
    let text = lm.tokenizer.apply_chat_template(&msgs, true).unwrap();
    assert_eq!(
        text,
        "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\nyo<end_of_turn>\n<start_of_turn>model\n"
    );
    let ids = lm.tokenizer.encode_chat(&msgs, true).unwrap();
    assert_eq!(
        ids.iter().filter(|&&t| t == 253).count(),
        1,
        "exactly one BOS"
    );
    assert_eq!(ids[0], 253);
    let e = lm
        .tokenizer
        .apply_chat_template(
            &[Message::new("system", "s"), Message::new("user", "u")],
            true,
        )
        .expect_err("system turn must be refused")
        .to_string();
    assert!(e.contains("System role not supported"), "{e}");
    // The model runs on what the tokenizer produces.
    let batch = Batch::single(ids, &Device::Cpu).unwrap();
    lm.model
        .forward(&batch, &ForwardOptions::default(), &mut NoHooks, None)
        .unwrap();

    // A tokenizer larger than the embedding is refused.
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    v["vocab_size"] = 200.into();
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("embed_tokens") || e.contains("vocab") || e.contains("256"),
        "{e}"
    );
}

/// The raw vocabulary string of a token (byte-level symbols such as `Ġ`).
fn tok_str_raw(tok: &dsg::model::Tokenizer, id: u32) -> String {
    tok.id_to_token(id).unwrap()
}

/// A Gemma 3 GGUF as llama.cpp's converter writes it (`scripts/make_gemma3_gguf_fixture.py`: the
/// transformers tiny fixture `gemma3_local_global` with Gemma's GGUF names, `1 + w` norms, NEOX
/// Q/K, sliding window 4, every 3rd layer global) gives transformers' logits and residuals.
#[test]
fn gemma3_gguf_matches_transformers() {
    let lm = model::load(&fixture("gguf/tiny_gemma3.gguf"), &Device::Cpu).unwrap();
    let cfg = lm.model.config();
    assert_eq!(cfg.arch, dsg::model::Architecture::Gemma3);
    assert_eq!(cfg.layer_windows, [Some(4), Some(4), None, Some(4)]);
    let st = load_st(&fixture("tiny/gemma3_local_global/reference.safetensors"));
    for i in 0..3 {
        let row = ids(&st[&format!("input_ids_{i}")]);
        let batch = Batch::single(row, &Device::Cpu).unwrap();
        let opts = ForwardOptions {
            logits: Logits::All,
            ..Default::default()
        };
        let mut cap = dsg::model::Capture::new([dsg::model::HookPoint::resid_post(1)]);
        let out = lm.model.forward(&batch, &opts, &mut cap, None).unwrap();
        let logits = out.logits.unwrap().squeeze(0).unwrap();
        let d = max_abs_diff(&logits, &st[&format!("logits_{i}")]);
        assert!(d <= 1e-4, "row {i}: logits differ by {d}");
        let resid = cap
            .get(dsg::model::HookPoint::resid_post(1))
            .unwrap()
            .squeeze(0)
            .unwrap();
        let d = max_abs_diff(&resid, &st[&format!("hidden_{i}")].i(2).unwrap());
        assert!(
            d <= 1e-4,
            "row {i}: blocks.1.hook_resid_post differs by {d}"
        );
    }
}

/// The SentencePiece tokenizer rebuilt from a `llama`-model GGUF (scores, byte fallback, a
/// user-defined token, controls) tokenises and decodes as transformers' GGUF conversion does.
#[test]
fn sentencepiece_tokenizer_from_gguf_matches_transformers() {
    let lm = model::load(&fixture("gguf/tiny_gemma3.gguf"), &Device::Cpu).unwrap();
    let text = std::fs::read_to_string(fixture("gguf/tiny_gemma3_tokens.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let as_ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    assert!(lm.tokenizer.adds_bos());
    for case in json["cases"].as_array().unwrap() {
        let t = case["text"].as_str().unwrap();
        let got = lm.tokenizer.encode(t, false).unwrap();
        assert_eq!(got, as_ids(&case["ids"]), "{t:?}");
        assert_eq!(
            lm.tokenizer.encode(t, true).unwrap(),
            as_ids(&case["ids_with_bos"]),
            "{t:?} with BOS"
        );
        assert_eq!(
            lm.tokenizer.decode(&got, false).unwrap(),
            case["decoded"].as_str().unwrap(),
            "{t:?} decoded"
        );
    }
    // SAE training rows of a BOS-adding tokenizer start with BOS, then ctx − 1 stream tokens.
    let docs = vec![
        "the theater in the north".to_string(),
        "which of the chairs".into(),
    ];
    let rows = dsg::data::token_rows(&lm.tokenizer, &docs, 6).unwrap();
    assert!(!rows.is_empty());
    assert!(rows
        .iter()
        .all(|r| r.len() == 6 && r[0] == 2 && !r[1..].contains(&2)));
    // Exact bytes of a byte-fallback token and of a `▁` piece.
    assert_eq!(lm.tokenizer.token_bytes(5), vec![0xC3]);
    assert_eq!(lm.tokenizer.token_bytes(46), b" the".to_vec());
}

/// A model without a chat template (a base model) renders chats as plain text: BOS when the
/// tokenizer adds one, the messages joined by blank lines, a newline for the generation prompt;
/// the user's text is still marked as such.
#[test]
fn base_model_without_template_renders_plain_text() {
    let lm = model::load(&fixture("gguf/tiny_gemma3.gguf"), &Device::Cpu).unwrap();
    assert!(lm.tokenizer.chat_template().is_none());
    let msgs = [
        Message::new("system", "be brief"),
        Message::new("user", "the north"),
    ];
    let text = lm.tokenizer.apply_chat_template(&msgs, true).unwrap();
    assert_eq!(text, "<bos>be brief\n\nthe north\n");
    let enc = lm.tokenizer.encode_chat_sources(&msgs, true).unwrap();
    assert_eq!(enc.ids[0], 2);
    let user: Vec<u32> = enc
        .ids
        .iter()
        .zip(enc.written_by(&msgs, "user"))
        .filter(|(_, u)| *u)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(user, lm.tokenizer.encode("the north", false).unwrap());
}
