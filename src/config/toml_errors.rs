//! TOML syntax errors as one operator-readable line: the line number, the key (dotted, with its
//! table) and the token at fault, instead of the parser's multi-line source excerpt.

use super::ConfigError;

/// The TOML syntax, checked before `config` reads the text: its error for a duplicate key or a
/// typo spans several lines (a source excerpt under a caret); an operator gets one line with the
pub(super) fn check_syntax(text: &str, origin: &str) -> Result<(), ConfigError> {
    let Err(e) = toml::de::DeTable::parse(text) else {
        return Ok(());
    };
    let message = one_line(e.message());
    let Some(span) = e.span() else {
        return Err(ConfigError::one(format!("{origin}: {message}")));
    };
    let line = text
        .get(..span.start)
        .map_or(0, |t| t.matches('\n').count())
        + 1;
    let mut problem = format!("{origin}: line {line}: ");
    if let Some(key) = key_on_line(text, line) {
        problem.push_str(&format!("`{key}`: "));
    }
    problem.push_str(&message);
    let token = text
        .get(span)
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 64 && !t.contains(|c: char| c.is_control()));
    if let Some(token) = token {
        problem.push_str(&format!(" (at `{token}`)"));
    }
    Err(ConfigError::one(problem))
}

/// The dotted key that line `line` (1-based) of a TOML text sets or opens, found by reading the
/// text as lines: the error it serves is that the text does not parse. `None` when the line is not
/// `key = value`, `key value` or a table header (say, the middle of a multi-line array).
pub(super) fn key_on_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line.checked_sub(1)?)?.trim();
    let header = |l: &str| {
        l.starts_with('[').then(|| {
            l.trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
    };
    if let Some(table) = header(here) {
        return (!table.is_empty()).then_some(table);
    }
    let key = match here.split_once('=') {
        Some((key, _)) => key.trim(),
        None => here.split_whitespace().next()?,
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-.\"'".contains(c);
    if key.is_empty() || !key.chars().all(plain) {
        return None;
    }
    let table = lines[..line - 1]
        .iter()
        .rev()
        .find_map(|l| header(l.trim()))
        .filter(|t| !t.is_empty());
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_owned(),
    })
}

/// Joins a multi-line message into one line.
pub(super) fn one_line(text: &str) -> String {
    text.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
