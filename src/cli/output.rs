//! What the CLI prints, shared by its commands: JSON (and its format
//! version), plain tables, and times for people (UTC, ISO 8601, no time
//! zone database needed).

use std::io::{self, Write};
use std::process::ExitCode;

use serde::Serialize;

/// Version of the JSON printed by `sessions --json`.
pub const SESSIONS_FORMAT: u32 = 1;
/// Version of the JSON printed by `status --json`. 2: each guest's
/// `expires`, `expires_in`, `expired`, `from` and `forwarding`; `access`
/// is false once the guest's deadline has passed.
pub const STATUS_FORMAT: u32 = 3;

/// Prints `value` as pretty JSON and a newline.
pub fn print_json<T: Serialize>(value: &T) -> ExitCode {
    match serde_json::to_vec_pretty(value) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            print_bytes(&bytes)
        }
        Err(e) => {
            eprintln!("vmshare: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `bytes` to stdout; a write error (a closed pipe) is a failure,
/// not a panic.
pub fn print_bytes(bytes: &[u8]) -> ExitCode {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmshare: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Left-aligned columns, two spaces apart.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < N {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub use crate::grant::civil::utc;
