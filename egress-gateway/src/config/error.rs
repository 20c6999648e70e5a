//! Configuration errors that say what is wrong and where: file, line:column, field path.
use std::{fmt, path::PathBuf};

/// One problem in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path such as `bottles[1].cgroup`; empty for whole-file problems.
    pub field: String,
    /// 1-based line and column, when the YAML parser knows them.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

/// Everything wrong with one file (validation collects all problems before failing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub fn single(file: impl Into<PathBuf>, field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.into(),
            problems: vec![Problem { field: field.into(), position: None, message: message.into() }],
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, col)) = self.position {
            write!(f, "line {line}, column {col}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match self.problems.as_slice() {
            [one] => write!(f, "{file}: {one}"),
            many => {
                write!(f, "{file}: {} problems", many.len())?;
                for p in many {
                    write!(f, "\n  {file}: {p}")?;
                }
                Ok(())
            }
        }
    }
}

/// Collects validation problems for one file, so every error is reported at once.
#[derive(Debug)]
pub struct Problems {
    file: PathBuf,
    list: Vec<Problem>,
}

impl Problems {
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Problems { file: file.into(), list: Vec::new() }
    }

    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem { field: field.into(), position: None, message: message.into() });
    }

    pub fn file(&self) -> &std::path::Path {
        &self.file
    }

    /// `Ok(value)` when nothing was pushed, else every problem.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.list.is_empty() { Ok(value) } else { Err(ConfigError { file: self.file, problems: self.list }) }
    }
}
