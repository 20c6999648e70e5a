//! YAML (and therefore JSON) deserialisation with the field path and position of errors.
use std::path::Path;

use serde::de::DeserializeOwned;

use super::error::{ConfigError, Problem};

/// Parses `text` (the contents of `file`) into `T`; unknown fields and bad values come
/// back with the field path and the line and column.
pub fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    // An empty document is an empty mapping, so an empty file means "all defaults".
    let text = if text.trim().is_empty() { "{}" } else { text };
    let de = serde_norway::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let field = err.path().to_string();
        let inner = err.into_inner();
        let position = inner.location().map(|l| (l.line(), l.column()));
        // serde_norway appends " at line L column C" to its message; the position is
        // reported separately, so strip it.
        let mut message = inner.to_string();
        if let Some(idx) = message.find(" at line ") {
            message.truncate(idx);
        }
        ConfigError {
            file: file.to_path_buf(),
            problems: vec![Problem { field: if field == "." { String::new() } else { field }, position, message }],
        }
    })
}

/// Reads and parses a file; a missing or unreadable file is a `ConfigError` too.
pub fn load<T: DeserializeOwned>(file: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError::single(file, "", format!("cannot read: {e}")))?;
    parse(file, &text)
}
