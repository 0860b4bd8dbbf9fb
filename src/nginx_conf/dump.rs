//! The configuration nginx runs, as `nginx -T` prints it: each file it read, whole, after a
//! `# configuration file PATH:` line. `fieldtrack check` asks it what a deployment relies
//! on (the upstream file included, a site proxying to its upstream, the access log a canary
//! is judged from, a bound on the life of old workers); this module only reads the text.

use std::path::PathBuf;

use super::statements;

/// What a `nginx -T` dump says, read once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dump {
    /// The files nginx read, in the order it printed them.
    pub files: Vec<PathBuf>,
    /// The simple statements of every file, each file read on its own: nginx includes whole
    /// files, so a statement never runs from one into the next, and what precedes the first
    /// file (nginx's own words, when stderr is in the text) is no part of any.
    statements: Vec<Vec<String>>,
}

/// A `log_format` declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFormat {
    /// Whether it escapes values for JSON (`escape=json`).
    pub escape_json: bool,
    /// The format's strings joined as nginx joins them, parameters left out.
    pub text: String,
}

/// An `access_log` statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessLog<'a> {
    /// The file it writes, as written (a variable in it is not expanded).
    pub path: &'a str,
    /// The format it writes with: `combined`, nginx's own, when none is named.
    pub format: &'a str,
}

/// The line `nginx -T` prints before each file.
const FILE_HEADER: &str = "# configuration file ";

impl Dump {
    /// Reads the dump `nginx -T` printed.
    pub fn parse(text: &str) -> Dump {
        let mut files = Vec::new();
        let mut parts = vec![String::new()];
        for line in text.lines() {
            match line
                .strip_prefix(FILE_HEADER)
                .and_then(|l| l.strip_suffix(':'))
            {
                Some(file) => {
                    files.push(PathBuf::from(file));
                    parts.push(String::new());
                }
                None => {
                    let part = parts.last_mut().expect("parts starts with one");
                    part.push_str(line);
                    part.push('\n');
                }
            }
        }
        Dump {
            files,
            statements: parts.iter().flat_map(|part| statements(part)).collect(),
        }
    }

    /// Whether a `proxy_pass` sends requests to the upstream `upstream_name` (`http://NAME`,
    /// with or without a URI after it).
    pub fn proxies_to(&self, upstream_name: &str) -> bool {
        let upstream = format!("http://{upstream_name}");
        self.with_name("proxy_pass").any(|s| {
            s.get(1).is_some_and(|target| {
                *target == upstream || target.starts_with(&format!("{upstream}/"))
            })
        })
    }

    /// The value of `worker_shutdown_timeout`, when nginx's config sets one.
    pub fn worker_shutdown_timeout(&self) -> Option<String> {
        self.with_name("worker_shutdown_timeout")
            .next()
            .map(|s| s[1..].join(" "))
    }

    /// The first `log_format` named `name`.
    pub fn log_format(&self, name: &str) -> Option<LogFormat> {
        let declared = self
            .with_name("log_format")
            .find(|s| s.len() >= 3 && s[1] == name)?;
        Some(LogFormat {
            escape_json: declared[2..].iter().any(|p| p == "escape=json"),
            text: declared[2..]
                .iter()
                .filter(|p| !p.starts_with("escape="))
                .map(String::as_str)
                .collect(),
        })
    }

    /// Every `access_log` that names a file (`access_log off;` too, as the file `off`).
    pub fn access_logs(&self) -> impl Iterator<Item = AccessLog<'_>> {
        self.with_name("access_log")
            .filter(|s| s.len() >= 2)
            .map(|s| AccessLog {
                path: &s[1],
                format: s.get(2).map_or("combined", String::as_str),
            })
    }

    fn with_name<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Vec<String>> {
        self.statements
            .iter()
            .filter(move |s| s.first().is_some_and(|first| first == name))
    }
}

impl LogFormat {
    /// Whether the format writes `"key":"$key"` (or `${key}`), a JSON string, with any blanks
    /// around the colon.
    pub fn writes_string(&self, key: &str) -> bool {
        let format = &self.text;
        let name = format!("\"{key}\"");
        format.match_indices(&name).any(|(at, _)| {
            let rest = format[at + name.len()..].trim_start();
            let Some(value) = rest.strip_prefix(':').map(str::trim_start) else {
                return false;
            };
            value.starts_with(&format!("\"${key}\""))
                || value.starts_with(&format!("\"${{{key}}}\""))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_the_headers_nginx_prints_and_statements_stay_in_their_file() {
        // nginx's own words before the first file, and a file whose last statement lacks
        // nothing: neither runs into the next file's first statement.
        let d = Dump::parse(
            "nginx: the configuration file /x/nginx.conf syntax is ok\n\
             # configuration file /x/nginx.conf:\nworker_processes 2;\n\n\
             # configuration file /x/site.conf:\nproxy_pass http://fieldtrack_api;\n",
        );
        assert_eq!(
            d.files,
            [
                PathBuf::from("/x/nginx.conf"),
                PathBuf::from("/x/site.conf")
            ]
        );
        assert!(d.proxies_to("fieldtrack_api"));
        assert!(Dump::parse("").files.is_empty());
    }

    #[test]
    fn proxy_pass_counts_with_a_uri_and_not_for_another_upstream_or_in_a_comment() {
        let d = |body: &str| Dump::parse(&format!("# configuration file /x/a.conf:\n{body}\n"));
        assert!(
            d("location / { proxy_pass http://fieldtrack_api/v1/; }").proxies_to("fieldtrack_api")
        );
        assert!(d("proxy_pass \"http://fieldtrack_api\"; # quoted").proxies_to("fieldtrack_api"));
        assert!(!d("proxy_pass http://fieldtrack_api2;").proxies_to("fieldtrack_api"));
        assert!(!d("# proxy_pass http://fieldtrack_api;").proxies_to("fieldtrack_api"));
        assert!(!d("proxy_set_header X http://fieldtrack_api;").proxies_to("fieldtrack_api"));
    }

    #[test]
    fn worker_shutdown_timeout_is_its_first_value_outside_comments() {
        let d = Dump::parse("# worker_shutdown_timeout 5s;\nworker_shutdown_timeout 30s; # why\n");
        assert_eq!(d.worker_shutdown_timeout().as_deref(), Some("30s"));
        assert_eq!(Dump::parse("events {}\n").worker_shutdown_timeout(), None);
    }

    #[test]
    fn a_log_format_joins_its_strings_and_knows_its_escaping() {
        let d = Dump::parse(
            "log_format other '{\"x\":\"$x\"}';\n\
             log_format fieldtrack escape=json\n  '{\"status\": \"$status\", '\n  '\"a\":\"${a}\"}';\n",
        );
        let format = d.log_format("fieldtrack").unwrap();
        assert!(format.escape_json);
        assert_eq!(format.text, "{\"status\": \"$status\", \"a\":\"${a}\"}");
        assert!(format.writes_string("status"));
        assert!(format.writes_string("a"));
        assert!(!format.writes_string("x"));
        assert!(!d.log_format("other").unwrap().escape_json);
        assert_eq!(d.log_format("missing"), None);
        let numeric = Dump::parse("log_format n '{\"status\":$status}';");
        assert!(!numeric.log_format("n").unwrap().writes_string("status"));
    }

    #[test]
    fn an_access_log_without_a_format_writes_combined() {
        let d = Dump::parse(
            "access_log /l/a.log fieldtrack buffer=32k;\naccess_log \"/l/b.log\";\naccess_log;\n",
        );
        assert_eq!(
            d.access_logs().collect::<Vec<_>>(),
            [
                AccessLog {
                    path: "/l/a.log",
                    format: "fieldtrack"
                },
                AccessLog {
                    path: "/l/b.log",
                    format: "combined"
                },
            ]
        );
    }
}
