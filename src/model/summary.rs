//! What `dsg info` shows about a loaded model: architecture, sizes, tokenizer and hook points.

use std::fmt;

use super::LoadedModel;

/// A loaded model's description; its `Display` is the `dsg info` report.
pub struct ModelSummary<'a>(pub &'a LoadedModel);

impl fmt::Display for ModelSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lm = self.0;
        let c = lm.model.config();
        let tok = &lm.tokenizer;
        writeln!(f, "model        {}", lm.path.display())?;
        writeln!(f, "architecture {:?}", c.arch)?;
        writeln!(f, "layers       {}", c.n_layers)?;
        writeln!(f, "d_model      {}", c.d_model)?;
        writeln!(
            f,
            "heads        {} query, {} key/value, head_dim {}",
            c.n_heads, c.n_kv_heads, c.head_dim
        )?;
        writeln!(f, "d_ff         {}", c.d_ff)?;
        writeln!(
            f,
            "vocab        {} (tokenizer: {})",
            c.vocab_size,
            tok.vocab_size()
        )?;
        writeln!(f, "max position {}", c.max_positions)?;
        writeln!(f, "quantised    {}", lm.model.has_quantized())?;
        let show = |id: Option<u32>| {
            id.map(|i| format!("{i} {:?}", tok.token_str(i)))
                .unwrap_or("-".into())
        };
        writeln!(
            f,
            "bos/eos/pad  {} / {} / {}",
            show(tok.bos_id()),
            show(tok.eos_id()),
            show(tok.pad_id())
        )?;
        writeln!(
            f,
            "chat template {}",
            if tok.chat_template().is_some() {
                "yes"
            } else {
                "no (plain text: the messages joined by blank lines)"
            }
        )?;
        write!(
            f,
            "hook points  blocks.{{0..{}}}.hook_{{resid_pre,attn_out,resid_mid,mlp_out,resid_post}} ({} in all); \
             `model.layers.L` = blocks.L.hook_resid_post",
            c.n_layers.saturating_sub(1),
            lm.model.hook_points().len()
        )
    }
}
