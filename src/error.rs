//! The library's error type: every failure names what was being read and what was wrong with it.

use std::path::PathBuf;

/// Errors from loading, running and fitting; each variant carries enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is not what the format requires.
    #[error("{path}: {field}: expected {expected}, found {found}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The field, key or tensor at fault.
        field: String,
        /// What the format requires.
        expected: String,
        /// What the file holds.
        found: String,
    },
    /// A required file or tensor is absent.
    #[error("{path}: missing {what}")]
    Missing {
        /// Where it was looked for.
        path: PathBuf,
        /// What was looked for.
        what: String,
    },
    /// Inputs that are individually valid but do not fit together (e.g. an SAE for another model).
    #[error("mismatch: {0}")]
    Mismatch(String),
    /// A caller-supplied value is unusable for a reason stated in full by the message.
    #[error("{0}")]
    Invalid(String),
    /// A configuration field or option is out of its allowed range.
    #[error("{field}: {value} is not allowed; expected {allowed}")]
    OutOfRange {
        /// The field, option or key (e.g. `--top-p`, `gate.tau`).
        field: String,
        /// The value given, as written.
        value: String,
        /// What is allowed.
        allowed: String,
    },
    /// An output path that must not be written (it is an input, lies inside one, or exists).
    #[error("{path}: refusing to write: {reason}")]
    Output {
        /// The output path.
        path: PathBuf,
        /// Why it is refused and what to do instead.
        reason: String,
    },
    /// An unsupported architecture, format or option.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Tokenizer failure.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A format error: `field` in `path` should be `expected` but is `found`.
    pub fn format(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        Error::Format {
            path: path.into(),
            field: field.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    /// `field` has `value`, which is outside `allowed`.
    pub fn out_of_range(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        allowed: impl Into<String>,
    ) -> Self {
        Error::OutOfRange {
            field: field.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }

    /// `what` is missing from `path`.
    pub fn missing(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Missing {
            path: path.into(),
            what: what.into(),
        }
    }
}
