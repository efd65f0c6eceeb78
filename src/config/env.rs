//! `${VAR}` in the config file: secrets and per-host values come from the environment.
//! Substitution happens on the text before parsing, so it works in any string; `$${` writes
//! a literal `${`. A variable that is not set is an error naming it and its line; values are
//! escaped for a TOML basic string (`"` and `\`), where secrets normally sit.

use super::Problem;

/// The text with every `${NAME}` replaced by `lookup(NAME)`, or every unset name with its line.
/// Comment lines are left alone.
pub fn substitute(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, Vec<Problem>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    for (number, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') || !line.contains("${") {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("${") {
            if rest[..at].ends_with('$') {
                // `$${` is a literal `${`.
                out.push_str(&rest[..at - 1]);
                out.push_str("${");
                rest = &rest[at + 2..];
                continue;
            }
            out.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            let Some(end) = after.find('}') else {
                problems.push(problem(number, "${".into(), "unterminated ${ (write $${ for a literal one)"));
                out.push_str(&rest[at..]);
                rest = "";
                break;
            };
            let name = &after[..end];
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            match (valid, lookup(name)) {
                (false, _) => problems.push(problem(number, format!("${{{name}}}"), "not a variable name")),
                (true, None) => {
                    problems.push(problem(number, format!("${{{name}}}"), "environment variable is not set"))
                }
                (true, Some(value)) => out.push_str(&value.replace('\\', "\\\\").replace('"', "\\\"")),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    if problems.is_empty() { Ok(out) } else { Err(problems) }
}

fn problem(line_index: usize, key: String, message: &str) -> Problem {
    Problem { key, line: line_index + 1, message: message.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "DB_PASSWORD" => Some("s3cr\"et".into()),
            "PORT" => Some("6033".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_are_replaced_and_escaped() {
        let text = "listen = \"127.0.0.1:${PORT}\"\npassword = \"${DB_PASSWORD}\"\n";
        let out = substitute(text, lookup).expect("substituted");
        assert_eq!(out, "listen = \"127.0.0.1:6033\"\npassword = \"s3cr\\\"et\"\n");
        let parsed: toml::Table = toml::from_str(&out).expect("still TOML");
        assert_eq!(parsed["password"].as_str(), Some("s3cr\"et"));
    }

    #[test]
    fn unset_variables_are_errors_with_their_line_and_comments_are_skipped() {
        let text = "# ${IN_A_COMMENT}\na = \"${PORT}\"\nb = \"${MISSING}\"\nc = \"$${LITERAL}\"\n";
        let problems = substitute(text, lookup).expect_err("MISSING is unset");
        assert_eq!(problems.len(), 1);
        assert_eq!((problems[0].key.as_str(), problems[0].line), ("${MISSING}", 3));
        let ok = substitute("c = \"$${LITERAL}\"\n", lookup).expect("literal");
        assert_eq!(ok, "c = \"${LITERAL}\"\n");
    }
}
