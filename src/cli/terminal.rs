//! Text from outside fieldtrack on the operator's terminal.
//!
//! Status messages quote a container's log tail and a hook's output: bytes chosen by the
//! app, the image's author, or whoever can make the app log a request. Printed raw, an
//! escape sequence there could retitle the terminal, hide lines, fake a "converged" or, on
//! some terminals, write to the clipboard or answer back as if typed. [`printable`] is what
//! the CLI puts through every such text before printing it; the state files keep the raw
//! text (JSON escapes it).

use crate::desired::{is_bidi_control, is_line_separator};

/// `text` without terminal escape sequences (CSI, OSC, DCS and the like, whole, with their
/// parameters), control characters other than `\n` and `\t` (so no `\r` to overwrite a line,
/// no C1 controls), and the bidi controls and line separators that reorder or break what is
/// shown.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' => out.push(c),
            '\x1b' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte in @..~.
                Some('[') => skip_csi(&mut chars),
                // OSC, DCS, SOS, PM, APC: a string up to its terminator.
                Some(']' | 'P' | 'X' | '^' | '_') => skip_string(&mut chars),
                // A two-character sequence (ESC c, ESC 7, ...), or an ESC at the end.
                Some(next) if next != '\n' => {}
                Some(_) => out.push('\n'),
                None => {}
            },
            // The same introducers as single C1 characters.
            '\u{9b}' => skip_csi(&mut chars),
            '\u{9d}' | '\u{90}' | '\u{98}' | '\u{9e}' | '\u{9f}' => skip_string(&mut chars),
            c if c.is_control() || is_bidi_control(c) || is_line_separator(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// Skips a CSI sequence's parameters, intermediates and final byte. A newline ends it early
/// (and is kept), so that a broken sequence cannot swallow the following lines.
fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(&c) = chars.peek() {
        if c == '\n' {
            return;
        }
        chars.next();
        if ('\u{40}'..='\u{7e}').contains(&c) {
            return;
        }
    }
}

/// Skips a control string up to BEL or ST (`ESC \` or U+009C); a newline ends it early
/// and is kept.
fn skip_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => return,
            '\x07' | '\u{9c}' => {
                chars.next();
                return;
            }
            '\x1b' => {
                chars.next();
                if chars.peek() == Some(&'\\') {
                    chars.next();
                }
                return;
            }
            _ => {
                chars.next();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_newlines_and_tabs_are_kept() {
        let text = "candidate api-green exited; last log lines:\n\tpanic: boom ✓ é";
        assert_eq!(printable(text), text);
    }

    #[test]
    fn escape_sequences_go_whole() {
        assert_eq!(printable("\x1b]0;pwned\x07\x1b[31mred\x1b[0m"), "red");
        assert_eq!(
            printable("a\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\b"),
            "alinkb"
        );
        assert_eq!(printable("a\x1b[2J\x1b[1;1Hb"), "ab");
        assert_eq!(printable("a\x1bPq#0;2;0;0;0\x1b\\b"), "ab");
        assert_eq!(printable("a\x1bcb\x1b7c"), "abc");
        assert_eq!(printable("a\u{9b}31mb\u{9d}0;t\u{9c}c"), "abc");
        assert_eq!(printable("end\x1b"), "end");
    }

    #[test]
    fn an_unterminated_sequence_stops_at_the_line_end() {
        assert_eq!(printable("a\x1b]0;title\nnext line"), "a\nnext line");
        assert_eq!(printable("a\x1b[12\nb"), "a\nb");
        assert_eq!(printable("a\x1b\nb"), "a\nb");
    }

    #[test]
    fn other_controls_and_bidi_go() {
        assert_eq!(printable("ok\r\nfake\x08\x7f\x00\x07"), "ok\nfake");
        assert_eq!(
            printable("x\u{85}y\u{202e}z\u{2066}w\u{2028}v\u{2029}"),
            "xyzwv"
        );
    }
}
