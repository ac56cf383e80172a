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

#[cfg(test)]
mod tests {
    use super::key_on_line;
    use crate::config::testing::{base, key_file, problems};

    #[test]
    fn toml_syntax_errors_are_one_line_naming_line_and_key() {
        let key = key_file("org-secret");
        let twice = base(key.path(), "").replace(
            "[upstream]\n",
            "[upstream]\ntimeout_ms = 1\ntimeout_ms = 2\n",
        );
        assert_eq!(
            problems(&twice),
            ["config: line 7: `upstream.timeout_ms`: duplicate key (at `timeout_ms`)"]
        );
        // A bad value names its key and table; an unclosed header names the table.
        for (edit, starts) in [
            (
                "[upstream]\nbase = x\n",
                "config: line 6: `upstream.base`: ",
            ),
            (
                "[upstream]\ntimeout_ms = = 5\n",
                "config: line 6: `upstream.timeout_ms`: ",
            ),
            ("[upstream\n", "config: line 5: `upstream`: "),
        ] {
            let p = problems(&base(key.path(), "").replace("[upstream]\n", edit));
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(p[0].starts_with(starts), "{p:?}");
            assert!(!p[0].contains('\n'), "{p:?}");
        }
    }

    #[test]
    fn the_key_of_a_line_is_dotted_with_its_table() {
        let text = "top = 1\n[teams.billing]\nrate_limit = { per_minute = 6 }\nkey_sha256 = [\n  \"ab\",\n]\norg acme\n";
        assert_eq!(key_on_line(text, 1).as_deref(), Some("top"));
        assert_eq!(key_on_line(text, 2).as_deref(), Some("teams.billing"));
        assert_eq!(
            key_on_line(text, 3).as_deref(),
            Some("teams.billing.rate_limit")
        );
        assert_eq!(key_on_line(text, 5), None);
        assert_eq!(key_on_line(text, 7).as_deref(), Some("teams.billing.org"));
        assert_eq!(key_on_line(text, 99), None);
    }
}
