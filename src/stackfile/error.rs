//! The one error a Stackfile can be refused with: a stable code, a line, and a message that
//! names the key or value and says what to write instead.

use std::fmt;

/// What is wrong with a Stackfile, as a stable machine-readable code ([`ErrorKind::code`]).
///
/// Every kind is the client's to fix. [`ErrorKind::TooLarge`] maps to HTTP 413, every other
/// kind to 400 (design §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Not well-formed YAML: syntax, encoding, several documents, an unknown anchor or tag.
    InvalidYaml,
    /// Not well-formed JSON.
    InvalidJson,
    /// A key appears twice in one mapping, a service twice (names are case-insensitive), or a
    /// variable twice in a list-form `environment`.
    DuplicateKey,
    /// Over a parse budget: body size, nesting, node or alias count, number of services.
    TooLarge,
    /// A key that is not a Stackfile key.
    UnknownKey,
    /// A Tutum/Compose key that stackdns deliberately does not support (`build`, `env_file`,
    /// `external_links`).
    UnsupportedKey,
    /// A required key (`image`) is missing.
    MissingKey,
    /// A value of the wrong type or outside its range.
    InvalidValue,
    /// A `ports` entry that is not a valid port, or a port published twice.
    InvalidPort,
    /// A service name, link or tag that is not a DNS label.
    InvalidName,
    /// A link to a service that is not in the same Stackfile.
    UnknownLink,
}

impl ErrorKind {
    /// The code carried in the API's `{"error":{"code":…}}`; never changes once released.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidYaml => "invalid_yaml",
            ErrorKind::InvalidJson => "invalid_json",
            ErrorKind::DuplicateKey => "duplicate_key",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::UnknownKey => "unknown_key",
            ErrorKind::UnsupportedKey => "unsupported_key",
            ErrorKind::MissingKey => "missing_key",
            ErrorKind::InvalidValue => "invalid_value",
            ErrorKind::InvalidPort => "invalid_port",
            ErrorKind::InvalidName => "invalid_name",
            ErrorKind::UnknownLink => "unknown_link",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Why a Stackfile was refused. The message starts with `line N:` whenever the line is known
/// (always for YAML, and for JSON through serde_json's position).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StackfileError {
    kind: ErrorKind,
    /// 1-based line of the offending key or value in the body.
    line: Option<u64>,
    message: String,
}

impl StackfileError {
    /// `detail` is the message without its position; `line`/`column` are prefixed to it.
    pub(super) fn new(kind: ErrorKind, line: Option<u64>, column: Option<u64>, detail: &str) -> Self {
        let message = match (line, column) {
            (Some(line), Some(column)) => format!("line {line}, column {column}: {detail}"),
            (Some(line), None) => format!("line {line}: {detail}"),
            _ => detail.to_owned(),
        };
        StackfileError { kind, line, message }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Shorthand for `self.kind().code()`.
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    pub fn line(&self) -> Option<u64> {
        self.line
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}
