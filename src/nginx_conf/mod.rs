//! Reading and writing nginx's configuration, pure: the upstream file fieldtrack owns
//! ([`upstream`]) and the whole configuration as `nginx -T` dumps it ([`dump`]), both read
//! with one tokenizer (`tokens`). Nothing here touches a file or runs nginx: the nginx
//! adapter (`crate::apply::nginx`) and the commands do that and hand the text over.

pub mod dump;
pub mod upstream;

/// One token of nginx's config syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    /// A word, quotes removed: `server`, `127.0.0.1:3001`, `"a b"` as `a b`.
    Word(String),
    /// `{`: a block opens.
    Open,
    /// `}`: a block closes.
    Close,
    /// `;`: a statement ends.
    End,
}

/// Splits nginx config text into tokens, loose as nginx's own lexer: a comment runs from a
/// `#` that starts a word to the line's end; a quoted string (single or double, `\` escaping
/// its quote) is one word and may hold blanks, `;`, braces and `#`; the braces of `${name}`
/// inside a word are the word's.
pub(crate) fn tokens(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut chars = text.chars();
    // A word that began, even as an empty quoted string.
    let mut started = false;
    // Inside `${name}` of an unquoted word: its braces are not a block's.
    let mut variable = false;
    while let Some(c) = chars.next() {
        match c {
            '{' if word.ends_with('$') => {
                variable = true;
                word.push(c);
            }
            '}' if variable => {
                variable = false;
                word.push(c);
            }
            '"' | '\'' => {
                started = true;
                while let Some(q) = chars.next() {
                    match q {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                if escaped != c {
                                    word.push('\\');
                                }
                                word.push(escaped);
                            }
                        }
                        q if q == c => break,
                        q => word.push(q),
                    }
                }
            }
            '#' if !started => {
                for skipped in chars.by_ref() {
                    if skipped == '\n' {
                        break;
                    }
                }
            }
            c if c.is_whitespace() || c == ';' || c == '{' || c == '}' => {
                variable = false;
                if started {
                    out.push(Token::Word(std::mem::take(&mut word)));
                    started = false;
                }
                match c {
                    ';' => out.push(Token::End),
                    '{' => out.push(Token::Open),
                    '}' => out.push(Token::Close),
                    _ => {}
                }
            }
            c => {
                started = true;
                word.push(c);
            }
        }
    }
    if started {
        out.push(Token::Word(word));
    }
    out
}

/// The simple statements of nginx config text (`name arg ...;`), each as its words, quotes
/// removed; comments and blocks' names skipped.
pub(crate) fn statements(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut words = Vec::new();
    for token in tokens(text) {
        match token {
            Token::Word(w) => words.push(w),
            Token::End => out.push(std::mem::take(&mut words)),
            Token::Open | Token::Close => words.clear(),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_follow_nginx_quotes_comments_and_variables() {
        use Token::{Close, End, Open, Word};
        let w = |s: &str| Word(s.to_string());
        assert_eq!(
            tokens("upstream a { server \"1 }\" 'x;\\'y'; } # gone {\nset $v ${x}y#z;"),
            vec![
                w("upstream"),
                w("a"),
                Open,
                w("server"),
                w("1 }"),
                w("x;'y"),
                End,
                Close,
                w("set"),
                w("$v"),
                w("${x}y#z"),
                End,
            ]
        );
    }

    #[test]
    fn statements_keep_quoted_text_whole_and_skip_comments_and_blocks() {
        let s = statements(
            "http { # a comment; with a semicolon\n  log_format x '{\"a\":\"$a\"} # not a comment';\n               server { listen 80; access_log /l/${host}.log x; }\n}\n",
        );
        assert_eq!(
            s,
            [
                vec!["log_format", "x", "{\"a\":\"$a\"} # not a comment"],
                vec!["listen", "80"],
                vec!["access_log", "/l/${host}.log", "x"],
            ]
        );
    }
}
