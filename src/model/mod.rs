//! The hookable decoder: configuration, weights, forward pass, tokenizer.

pub mod hooks;

pub use hooks::{Capture, FnHook, HookContext, HookList, HookPoint, Hooks, NoHooks, Site};
