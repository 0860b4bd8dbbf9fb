//! The nginx upstream file's format, pure: the block fieldtrack writes ([`render`],
//! [`render_servers`]) and the servers any block holds ([`parse_ports`] on loopback,
//! [`parse_servers`] on any address). The nginx adapter writes it, observe and the commands
//! read it; none of this touches a file or nginx.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::{tokens, Token};

/// The text of the upstream file sending traffic to `127.0.0.1:port`, with `keepalive N;`
/// when `keepalive` is not 0.
pub fn render(upstream_name: &str, port: u16, comment: &str, keepalive: u32) -> String {
    render_servers(
        upstream_name,
        &[SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)],
        comment,
        keepalive,
    )
}

/// The text of the upstream file sending traffic to `servers` (one `server` line each, in
/// the order given: a Swarm color's tasks on their nodes), with `keepalive N;` when
/// `keepalive` is not 0.
///
/// `comment` is what follows "live: " in the header line; control characters (newlines
/// above all) are replaced by spaces so it cannot break out of the comment.
pub fn render_servers(
    upstream_name: &str,
    servers: &[SocketAddr],
    comment: &str,
    keepalive: u32,
) -> String {
    let lines: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
    render_block(upstream_name, &lines, comment, keepalive)
}

/// The file around `server` statements (each an address and its parameters).
fn render_block(upstream_name: &str, servers: &[String], comment: &str, keepalive: u32) -> String {
    format!(
        "# managed by fieldtrack: do not edit (live: {})\n{}",
        one_line(comment),
        block(upstream_name, servers, keepalive)
    )
}

/// `comment` on one line: control characters (newlines above all) become spaces.
fn one_line(comment: &str) -> String {
    let comment: String = comment
        .chars()
        .map(|c| {
            if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
                ' '
            } else {
                c
            }
        })
        .collect();
    comment.trim().to_string()
}

/// One `upstream NAME { ... }` block.
fn block(upstream_name: &str, servers: &[String], keepalive: u32) -> String {
    let keepalive = match keepalive {
        0 => String::new(),
        n => format!("    keepalive {n};\n"),
    };
    let servers: String = servers
        .iter()
        .map(|s| format!("    server {s};\n"))
        .collect();
    format!("upstream {upstream_name} {{\n{servers}{keepalive}}}\n")
}

/// The name of the preview block beside the `upstream_name` block
/// (`rollout.promotion = "manual"`).
pub fn preview_name(upstream_name: &str) -> String {
    format!("{upstream_name}_preview")
}

/// The `{upstream_name}_preview` block that follows the main one in the file when
/// `rollout.promotion = "manual"`: the previewed candidate's `servers`, or the live color's
/// when no preview runs (the operator's server block proxies to it, and `nginx -t` fails on
/// an upstream that is not defined). `comment` follows "preview: " in its header line.
pub fn render_preview(
    upstream_name: &str,
    servers: &[SocketAddr],
    comment: &str,
    keepalive: u32,
) -> String {
    let lines: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
    format!(
        "# preview: {}\n{}",
        one_line(comment),
        block(&preview_name(upstream_name), &lines, keepalive)
    )
}

/// The text of the upstream file sharing traffic by weight (a canary step): one `server ADDR
/// weight=W;` line per server, in the order given, stable color first (the first server's
/// port is the one the live color is read from). A weight of 0 writes `down`: nginx takes no
/// weight below 1.
pub fn render_weighted(
    upstream_name: &str,
    servers: &[(SocketAddr, u32)],
    comment: &str,
    keepalive: u32,
) -> String {
    let lines: Vec<String> = servers
        .iter()
        .map(|(addr, weight)| match weight {
            0 => format!("{addr} down"),
            w => format!("{addr} weight={w}"),
        })
        .collect();
    render_block(upstream_name, &lines, comment, keepalive)
}

/// The port of the first loopback `server` (`127.0.0.1:PORT`, `localhost:PORT` or
/// `[::1]:PORT`, with any parameters after it) inside the `upstream NAME { ... }` block.
///
/// Reads nginx syntax loosely: comments (`#` to end of line) are ignored and whitespace,
/// newlines and line breaks inside a statement are free, so the operator's hand-written
/// placeholder reads as well as [`render`]'s output. None when there is no such block or no
/// such server in it.
pub fn parse_port(text: &str, upstream_name: &str) -> Option<u16> {
    parse_ports(text, upstream_name).first().copied()
}

/// The ports of every loopback `server` of the `upstream NAME { ... }` block, in the order
/// written: everything nginx may send traffic to on this host.
pub fn parse_ports(text: &str, upstream_name: &str) -> Vec<u16> {
    server_addresses(text, upstream_name)
        .iter()
        .filter_map(|a| loopback_port(a))
        .collect()
}

/// Every `server ADDRESS:PORT` of the `upstream NAME { ... }` block whose address is an IP
/// address (or `localhost`, read as 127.0.0.1), in the order written: where nginx may send
/// traffic, on this host or others. Servers named by a DNS name are left out.
pub fn parse_servers(text: &str, upstream_name: &str) -> Vec<SocketAddr> {
    parse_weighted(text, upstream_name)
        .into_iter()
        .map(|(addr, _)| addr)
        .collect()
}

/// As [`parse_servers`], each server with its weight as nginx reads it: `weight=N`, 1 when
/// none is written, 0 for a server marked `down`.
pub fn parse_weighted(text: &str, upstream_name: &str) -> Vec<(SocketAddr, u32)> {
    server_statements(text, upstream_name)
        .iter()
        .filter_map(|statement| {
            let address = statement.first()?;
            let addr = match address.strip_prefix("localhost:") {
                Some(port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port.parse().ok()?),
                None => address.parse().ok()?,
            };
            let params = &statement[1..];
            let weight = if params.iter().any(|p| p == "down") {
                0
            } else {
                params
                    .iter()
                    .find_map(|p| p.strip_prefix("weight=")?.parse().ok())
                    .unwrap_or(1)
            };
            Some((addr, weight))
        })
        .collect()
}

/// The address word of every `server` statement of the block, in order.
fn server_addresses(text: &str, upstream_name: &str) -> Vec<String> {
    server_statements(text, upstream_name)
        .into_iter()
        .filter_map(|statement| statement.into_iter().next())
        .collect()
}

/// The words after `server` of every `server` statement of the block, in order.
fn server_statements(text: &str, upstream_name: &str) -> Vec<Vec<String>> {
    let tokens = tokens(text);
    let word = |t: &Token, w: &str| matches!(t, Token::Word(t) if t == w);
    tokens
        .windows(3)
        .position(|t| word(&t[0], "upstream") && word(&t[1], upstream_name) && t[2] == Token::Open)
        .map(|i| servers_in_block(&tokens[i + 3..]))
        .unwrap_or_default()
}

/// Scans the statements of an upstream block (the tokens after its `{`) for servers.
fn servers_in_block(tokens: &[Token]) -> Vec<Vec<String>> {
    let mut servers = Vec::new();
    let mut depth = 0usize;
    let mut statement: Vec<&str> = Vec::new();
    for token in tokens {
        match token {
            Token::Open => {
                depth += 1;
                statement.clear();
            }
            Token::Close if depth == 0 => return servers,
            Token::Close => {
                depth -= 1;
                statement.clear();
            }
            Token::End => {
                if depth == 0 && statement.first() == Some(&"server") && statement.len() > 1 {
                    servers.push(statement[1..].iter().map(|w| w.to_string()).collect());
                }
                statement.clear();
            }
            Token::Word(w) => statement.push(w),
        }
    }
    servers
}

/// The port of a loopback `host:port` address, None for any other address.
fn loopback_port(address: &str) -> Option<u16> {
    let port = ["127.0.0.1:", "localhost:", "[::1]:"]
        .iter()
        .find_map(|prefix| address.strip_prefix(prefix))?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "fieldtrack_api";

    #[test]
    fn each_block_is_read_by_its_name_exactly_whichever_comes_first() {
        let preview = render_preview(
            NAME,
            &["127.0.0.1:3002".parse().unwrap()],
            "green api:v2",
            0,
        );
        let main = render(NAME, 3001, "blue api:v1", 0);
        for text in [format!("{main}{preview}"), format!("{preview}{main}")] {
            assert_eq!(parse_ports(&text, NAME), vec![3001], "{text}");
            assert_eq!(
                parse_ports(&text, &preview_name(NAME)),
                vec![3002],
                "{text}"
            );
            assert_eq!(
                parse_servers(&text, "fieldtrack"),
                Vec::<SocketAddr>::new(),
                "a prefix of a name is no name: {text}"
            );
        }
        assert!(preview.starts_with("# preview: green api:v2\nupstream fieldtrack_api_preview {\n"));
    }

    #[test]
    fn keepalive_is_a_line_of_the_block_and_the_port_still_parses() {
        let text = render(NAME, 3002, "green", 16);
        assert_eq!(
            text,
            "# managed by fieldtrack: do not edit (live: green)\n\
             upstream fieldtrack_api {\n    server 127.0.0.1:3002;\n    keepalive 16;\n}\n"
        );
        assert_eq!(parse_port(&text, NAME), Some(3002));
    }

    #[test]
    fn render_matches_the_contract_and_parses_back() {
        let text = render(NAME, 3002, "green api:a4f91c2", 0);
        assert_eq!(
            text,
            "# managed by fieldtrack: do not edit (live: green api:a4f91c2)\n\
             upstream fieldtrack_api {\n    server 127.0.0.1:3002;\n}\n"
        );
        for port in [1, 3001, 3002, 65535] {
            assert_eq!(parse_port(&render(NAME, port, "x", 0), NAME), Some(port));
        }
    }

    #[test]
    fn render_keeps_a_hostile_comment_on_its_line() {
        let text = render(
            NAME,
            3001,
            "blue\n}\nupstream evil {\r server 10.0.0.1:80;",
            0,
        );
        assert_eq!(text.lines().count(), 4);
        assert!(text.starts_with("# managed by fieldtrack: do not edit (live: blue } upstream"));
        assert_eq!(parse_port(&text, NAME), Some(3001));
        assert_eq!(parse_port(&text, "evil"), None);
    }

    #[test]
    fn parse_reads_the_contract_example() {
        let text = "# managed by fieldtrack: do not edit (live: green api:a4f91c2)\n\
                    upstream fieldtrack_api {\n    server 127.0.0.1:3002;\n}\n";
        assert_eq!(parse_port(text, NAME), Some(3002));
    }

    #[test]
    fn parse_reads_a_hand_written_placeholder() {
        let text = "# placeholder until the first deploy\n\
                    upstream   fieldtrack_api{ # blue for now\n\
                    \tkeepalive 16;\n\
                    \t# server 127.0.0.1:9999;\n\
                    \tserver\n\t\tlocalhost:3001   max_fails=3\n fail_timeout=10s ;server 127.0.0.1:3002;\n\
                    }";
        assert_eq!(parse_port(text, NAME), Some(3001));
        assert_eq!(
            parse_port(
                "upstream fieldtrack_api {server [::1]:3002 weight=2;}",
                NAME
            ),
            Some(3002)
        );
        assert_eq!(
            parse_port(
                "upstream fieldtrack_api {\n server 10.0.0.9:80;\n server 127.0.0.1:3001;\n}",
                NAME
            ),
            Some(3001)
        );
    }

    #[test]
    fn parse_without_block_or_server_is_none() {
        assert_eq!(parse_port("", NAME), None);
        assert_eq!(
            parse_port("# upstream fieldtrack_api { server 127.0.0.1:3001; }", NAME),
            None
        );
        assert_eq!(parse_port("upstream fieldtrack_api {\n}\n", NAME), None);
        assert_eq!(
            parse_port("upstream fieldtrack_api { server 127.0.0.1; }", NAME),
            None
        );
        assert_eq!(
            parse_port("upstream fieldtrack_api { server 127.0.0.1:99999; }", NAME),
            None
        );
        // A server after the block is not in it.
        assert_eq!(
            parse_port("upstream fieldtrack_api { } server 127.0.0.1:3001;", NAME),
            None
        );
    }

    #[test]
    fn servers_on_nodes_render_one_line_each_and_parse_back() {
        let servers: Vec<SocketAddr> = ["10.231.0.11:3001", "10.231.0.12:3001", "10.231.0.13:3001"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let text = render_servers(NAME, &servers, "blue api:v1", 0);
        assert_eq!(
            text,
            "# managed by fieldtrack: do not edit (live: blue api:v1)\n\
             upstream fieldtrack_api {\n    server 10.231.0.11:3001;\n    server 10.231.0.12:3001;\n    server 10.231.0.13:3001;\n}\n"
        );
        assert_eq!(parse_servers(&text, NAME), servers);
        // Not on loopback: not a local container's port.
        assert_eq!(parse_ports(&text, NAME), Vec::<u16>::new());
        assert_eq!(
            parse_servers(
                "upstream fieldtrack_api { server localhost:3001; server app.internal:80; server [::1]:3002 weight=2; }",
                NAME
            ),
            vec![
                "127.0.0.1:3001".parse::<SocketAddr>().unwrap(),
                "[::1]:3002".parse().unwrap()
            ]
        );
    }

    #[test]
    fn weighted_servers_render_with_their_weights_and_parse_back() {
        let stable: SocketAddr = "127.0.0.1:3101".parse().unwrap();
        let canary: SocketAddr = "127.0.0.1:3102".parse().unwrap();
        let text = render_weighted(NAME, &[(stable, 90), (canary, 10)], "canary 10%", 0);
        assert_eq!(
            text,
            "# managed by fieldtrack: do not edit (live: canary 10%)\n\
             upstream fieldtrack_api {\n    server 127.0.0.1:3101 weight=90;\n    server 127.0.0.1:3102 weight=10;\n}\n"
        );
        assert_eq!(parse_servers(&text, NAME), vec![stable, canary]);
        assert_eq!(parse_ports(&text, NAME), vec![3101, 3102]);
        assert_eq!(
            parse_weighted(&text, NAME),
            vec![(stable, 90), (canary, 10)]
        );
        let off = render_weighted(NAME, &[(stable, 100), (canary, 0)], "x", 0);
        assert!(off.contains("server 127.0.0.1:3102 down;"), "{off}");
        assert_eq!(parse_weighted(&off, NAME), vec![(stable, 100), (canary, 0)]);
        // A server without a weight counts once, as nginx counts it.
        let plain = render(NAME, 3101, "x", 0);
        assert_eq!(parse_weighted(&plain, NAME), vec![(stable, 1)]);
    }

    #[test]
    fn a_quoted_brace_is_a_word_and_the_block_goes_on_to_its_real_end() {
        let text = "upstream fieldtrack_api {\n    server 127.0.0.1:3001 \"}\";\n    server 127.0.0.1:3002;\n}\n";
        assert_eq!(parse_ports(text, NAME), vec![3001, 3002]);
    }

    #[test]
    fn parse_ignores_another_upstream_name() {
        let text = render("other_api", 3002, "green", 0);
        assert_eq!(parse_port(&text, NAME), None);
        assert_eq!(parse_port(&text, "fieldtrack"), None);
        let both = format!("{text}{}", render(NAME, 3001, "blue", 0));
        assert_eq!(parse_port(&both, NAME), Some(3001));
    }
}
