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
        let message = plain_message(&field, &message);
        ConfigError {
            file: file.to_path_buf(),
            problems: vec![Problem { field: if field == "." { String::new() } else { field }, position, message }],
        }
    })
}

/// serde's message as a user should read it: without the field path the problem already
/// names (serde_norway repeats it), and without Rust type names.
fn plain_message(field: &str, message: &str) -> String {
    let mut message = message;
    // "listen: invalid ..." under field "listen", "hosts: data ..." under "hosts.a.test".
    if let Some((prefix, rest)) = message.split_once(": ")
        && !prefix.is_empty()
        && !prefix.contains(' ')
        && field.starts_with(prefix)
    {
        message = rest;
    }
    if message.contains("did not match any variant of untagged enum") {
        return "has the wrong type: see docs/configuration.md for what this field takes".to_string();
    }
    message.to_string()
}

/// Reads and parses a file; a missing or unreadable file is a `ConfigError` too.
pub fn load<T: DeserializeOwned>(file: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError::single(file, "", format!("cannot read: {e}")))?;
    parse(file, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_no_field_twice_and_no_rust_type() {
        assert_eq!(
            plain_message("listen", "listen: invalid IPv4 socket address syntax"),
            "invalid IPv4 socket address syntax"
        );
        assert_eq!(
            plain_message("routes[0].matches", "routes[0].matches: invalid type: integer `5`, expected a sequence"),
            "invalid type: integer `5`, expected a sequence"
        );
        let untagged =
            plain_message("hosts.a.test", "hosts: data did not match any variant of untagged enum OneOrMany");
        assert!(!untagged.contains("enum") && !untagged.contains("hosts"), "{untagged}");
        assert_eq!(plain_message("x", "unknown field `colour`"), "unknown field `colour`");
    }
}
