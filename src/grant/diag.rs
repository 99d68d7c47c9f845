//! Errors that point at a place in a file, the way a compiler reports them.

use std::fmt;
use std::path::{Path, PathBuf};

/// One finding in a file: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line; 0 when the finding is about the file as a whole.
    pub line: usize,
    /// 1-based column (in characters); 0 when `line` is 0.
    pub column: usize,
    pub message: String,
}

impl Diagnostic {
    pub fn whole_file(message: impl Into<String>) -> Self {
        Diagnostic {
            line: 0,
            column: 0,
            message: message.into(),
        }
    }

    /// A finding at byte offset `offset` of `source`.
    pub fn at(source: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_column(source, offset);
        Diagnostic {
            line,
            column,
            message: message.into(),
        }
    }

    /// Renders as `file:line:column: message`.
    pub fn in_file<'a>(&'a self, file: &'a Path) -> Located<'a> {
        Located { file, diag: self }
    }
}

/// A diagnostic together with the file it is about, for display.
pub struct Located<'a> {
    file: &'a Path,
    diag: &'a Diagnostic,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.diag.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.diag.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.diag.line,
                self.diag.column,
                self.diag.message
            )
        }
    }
}

/// All findings that made a file invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileErrors {
    pub file: PathBuf,
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for FileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", d.in_file(&self.file))?;
        }
        Ok(())
    }
}

impl std::error::Error for FileErrors {}

/// 1-based line and column of a byte offset; offsets past the end point after
/// the last character.
pub fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let src = "ab\ncdé\nf";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, 3), (2, 1));
        assert_eq!(line_column(src, 7), (2, 4));
        assert_eq!(line_column(src, 8), (3, 1));
        assert_eq!(line_column(src, 999), (3, 2));
    }

    #[test]
    fn renders_like_a_compiler() {
        let d = Diagnostic::at("x\ny = 1", 2, "unknown field");
        assert_eq!(
            d.in_file(Path::new("/etc/g.toml")).to_string(),
            "/etc/g.toml:2:1: unknown field"
        );
    }
}
