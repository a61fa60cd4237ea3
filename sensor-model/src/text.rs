//! Outside text (an Elasticsearch error reason, a provider's message, a chat server's `errmsg`)
//! made safe for a log line or an error message: one line, no terminal escapes, no bidirectional
//! overrides, bounded length. A server we talk to, or a proxy in between, chooses this text; left
//! as it is, a newline in it forges a second log line and an escape sequence rewrites the
//! operator's terminal.

/// `s` on one line of at most `max_chars` characters (plus `…` when cut): control characters
/// (newlines, ESC, DEL, C1) and Unicode format characters that reorder or hide text are written
/// as `\u{…}` escapes (`\n`, `\r`, `\t` as themselves escaped); everything else is kept.
pub fn one_line(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars + 8));
    for (n, c) in s.chars().enumerate() {
        if n >= max_chars {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_invisible_format(c) => {
                out.extend(c.escape_unicode());
            }
            c => out.push(c),
        }
    }
    out
}

/// Bidirectional embeddings, overrides and isolates, zero-width characters and the byte-order
/// mark: text that looks different from what it is.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_lines_and_escapes_are_inert() {
        let evil = "bad\nINFO fake line\r\x1b[2J\u{202E}gnp.exe\u{7f}";
        let s = one_line(evil, 200);
        assert!(!s.chars().any(|c| c.is_control()), "{s:?}");
        assert_eq!(
            s,
            "bad\\nINFO fake line\\r\\u{1b}[2J\\u{202e}gnp.exe\\u{7f}"
        );
        // Ordinary text, Chinese included, is kept as it is.
        assert_eq!(
            one_line("权限受限 Invalid API Key", 200),
            "权限受限 Invalid API Key"
        );
    }

    #[test]
    fn long_text_is_cut() {
        assert_eq!(one_line(&"x".repeat(10), 4), "xxxx…");
        assert_eq!(one_line("abcd", 4), "abcd");
    }
}
