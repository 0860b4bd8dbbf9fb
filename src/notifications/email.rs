//! Email notifications: the webhook's [`Notification`]s, mailed over SMTP to people who
//! have no chat webhook, or want a record in their mailbox.
//!
//! This module builds the message and delivers one; [`super::Notifier`] decides
//! when and runs the delivery in the background, so a mail server that is down or slow
//! never delays a deployment. One delivery (connect, TLS, AUTH, the message) is bounded as a
//! whole by `notify.timeout`: lettre itself bounds only the connect, and a server that
//! accepts the connection and then says nothing would otherwise hold the task forever.
//!
//! The password is read from its source (`password_file` or `password_env`) once, when the
//! [`Mailer`] is built, and then lives only in lettre's `Credentials`, whose `Debug` hides
//! it. No error of this module carries it: they name the file or the variable, and an SMTP
//! server's answer never repeats a password.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::message::{error_chain, hostname, Event, Notification};
use crate::config::{EmailConfig, EmailSecurity, PasswordSource};

/// Why an email notification was not built or not delivered.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    /// `notify.email.password_file` could not be read (it passed the trust rule at load).
    #[error("cannot read notify.email.password_file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The environment variable `notify.email.password_env` names is unset or empty in
    /// this process.
    #[error("notify.email.password_env: the environment variable {name} is not set or empty")]
    PasswordEnv { name: String },
    /// `notify.email.tls_ca` could not be read, or holds no PEM certificate.
    #[error("cannot use notify.email.tls_ca {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    /// The TLS settings were refused (the host is no valid TLS name, a CA is unusable).
    #[error("cannot set up TLS for {server}: {source}")]
    Tls {
        server: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    /// The message could not be assembled from the notification.
    #[error("cannot build the email: {source}")]
    Message {
        #[source]
        source: lettre::error::Error,
    },
    /// The connection failed, or the server refused the login, a recipient or the message.
    #[error("failed to send email notification through {server}: {reason}")]
    Send {
        server: String,
        /// The source's chain in a few words.
        reason: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    /// The delivery did not finish within `notify.timeout`.
    #[error(
        "smtp server {server} did not take the email within {}",
        humantime::format_duration(*timeout)
    )]
    TimedOut { server: String, timeout: Duration },
}

/// Delivers notifications to `[notify.email]`. Cheap to clone.
#[derive(Clone)]
pub struct Mailer(Arc<Inner>);

struct Inner {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// `host:port`, for messages.
    server: String,
    from: Mailbox,
    to: Vec<Mailbox>,
    events: Option<Vec<String>>,
    timeout: Duration,
}

/// The server and the recipients; never the password.
impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("server", &self.0.server)
            .field("to", &self.0.to)
            .field("events", &self.0.events)
            .finish()
    }
}

impl Mailer {
    /// A mailer for `cfg`, each delivery bounded by `timeout`. Reads the password and the
    /// CA file now.
    pub fn new(cfg: &EmailConfig, timeout: Duration) -> Result<Mailer, EmailError> {
        let server = match cfg.host.contains(':') {
            true => format!("[{}]:{}", cfg.host, cfg.port),
            false => format!("{}:{}", cfg.host, cfg.port),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host)
            .port(cfg.port)
            .timeout(Some(timeout))
            .hello_name(ClientId::Domain(hostname()));
        builder = match cfg.security {
            EmailSecurity::None => builder.tls(Tls::None),
            EmailSecurity::StartTls => builder.tls(Tls::Required(tls_parameters(cfg, &server)?)),
            EmailSecurity::Tls => builder.tls(Tls::Wrapper(tls_parameters(cfg, &server)?)),
        };
        if let Some(auth) = &cfg.auth {
            let password = read_password(&auth.password)?;
            builder = builder.credentials(Credentials::new(auth.user.clone(), password));
        }
        Ok(Mailer(Arc::new(Inner {
            transport: builder.build(),
            server,
            from: cfg.from.clone(),
            to: cfg.to.clone(),
            events: cfg.events.clone(),
            timeout,
        })))
    }

    /// `host:port` of the SMTP server.
    pub fn server(&self) -> &str {
        &self.0.server
    }

    /// Whether `notify.email.events` asks for `n`'s event; unset: every event but
    /// `canary_step` (a mail per step is asked for by name).
    pub fn wants(&self, n: &Notification) -> bool {
        match &self.0.events {
            Some(events) => events.iter().any(|e| e == n.event.as_str()),
            None => n.event != Event::CanaryStep,
        }
    }

    /// The email for `n`: from `notify.email.from` to every `notify.email.to`, plain text.
    pub fn message(&self, n: &Notification) -> Result<Message, EmailError> {
        let mut builder = Message::builder()
            .from(self.0.from.clone())
            .subject(subject(n))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.0.to {
            builder = builder.to(to.clone());
        }
        builder
            .body(body(n))
            .map_err(|source| EmailError::Message { source })
    }

    /// Delivers `n` now, waiting at most `notify.timeout` for the whole exchange.
    pub async fn send_now(&self, n: &Notification) -> Result<(), EmailError> {
        let message = self.message(n)?;
        let server = self.0.server.clone();
        match tokio::time::timeout(self.0.timeout, self.0.transport.send(message)).await {
            Err(_) => Err(EmailError::TimedOut {
                server,
                timeout: self.0.timeout,
            }),
            Ok(Err(source)) if source.is_timeout() => Err(EmailError::TimedOut {
                server,
                timeout: self.0.timeout,
            }),
            Ok(Err(source)) => Err(EmailError::Send {
                server,
                reason: error_chain(&source),
                source,
            }),
            Ok(Ok(_)) => Ok(()),
        }
    }
}

/// The certificates to trust: the public ones, plus `tls_ca`'s.
fn tls_parameters(cfg: &EmailConfig, server: &str) -> Result<TlsParameters, EmailError> {
    let mut builder = TlsParameters::builder(cfg.host.clone());
    if let Some(path) = &cfg.tls_ca {
        let ca_error = |reason: String| EmailError::CaFile {
            path: path.clone(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certs = pem_blocks(&pem);
        if certs.is_empty() {
            return Err(ca_error("holds no PEM certificate".into()));
        }
        for cert in certs {
            let cert = Certificate::from_pem(cert.as_bytes())
                .map_err(|e| ca_error(format!("a certificate is not valid: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build_rustls().map_err(|source| EmailError::Tls {
        server: server.to_owned(),
        source,
    })
}

/// Each `-----BEGIN CERTIFICATE-----` block of `pem` (lettre takes one certificate at a
/// time; a CA file often holds a chain).
fn pem_blocks(pem: &[u8]) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = String::from_utf8_lossy(pem);
    let mut blocks = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        blocks.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    blocks
}

/// The password from its source, without the line break an editor leaves at the end.
fn read_password(source: &PasswordSource) -> Result<String, EmailError> {
    let password = match source {
        PasswordSource::File(path) => {
            crate::config::safety::read_small_file(path).map_err(|source| {
                EmailError::PasswordFile {
                    path: path.clone(),
                    source,
                }
            })?
        }
        PasswordSource::Env(name) => std::env::var(name).unwrap_or_default(),
    };
    let password = password.strip_suffix('\n').unwrap_or(&password);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return match source {
            PasswordSource::File(path) => Err(EmailError::PasswordFile {
                path: path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, "the file is empty"),
            }),
            PasswordSource::Env(name) => Err(EmailError::PasswordEnv { name: name.clone() }),
        };
    }
    Ok(password.to_owned())
}

/// `[fieldtrack] ✅ api deployed v2 (green) on web-1`: the webhook's text without the
/// failure's reason (the body has it whole), and the host, since one mailbox often hears
/// from several servers.
pub fn subject(n: &Notification) -> String {
    let headline = Notification {
        message: None,
        ..n.clone()
    }
    .text();
    format!("[fieldtrack] {headline} on {}", n.host)
}

/// The plain-text body: the headline, then one `field: value` line per field (the names
/// of the webhook's JSON), then the whole message.
pub fn body(n: &Notification) -> String {
    let none = "(none)";
    let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| none.to_owned());
    let mut lines = vec![
        n.text(),
        String::new(),
        format!("event:      {}", n.event.as_str()),
        format!("app:        {}", n.app),
        format!("image:      {}", n.image),
        format!("previous:   {}", or_none(&n.previous)),
        format!(
            "color:      {}",
            n.color.map_or_else(|| none.to_owned(), |c| c.to_string())
        ),
        format!("digest:     {}", or_none(&n.digest)),
        format!("by:         {}", or_none(&n.by)),
        format!("note:       {}", or_none(&n.note)),
        format!("host:       {}", n.host),
        format!("time:       {}", n.time),
        format!("generation: {}", or_none(&n.generation)),
        format!(
            "duration:   {}",
            n.duration_ms.map_or_else(
                || none.to_owned(),
                |ms| humantime::format_duration(Duration::from_millis(ms)).to_string()
            )
        ),
    ];
    if let Some(message) = n
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        lines.push(String::new());
        lines.push("message:".to_owned());
        lines.push(message.to_owned());
    }
    lines.push(String::new());
    lines.push(format!("-- \nfieldtrack on {}", n.host));
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EmailAuth;
    use crate::notifications::message::sample;
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::net::TcpListener;
    use std::time::Instant;

    const PASSWORD: &str = "hunter2-s3cret";

    fn config(port: u16) -> EmailConfig {
        EmailConfig {
            host: "127.0.0.1".into(),
            port,
            security: EmailSecurity::None,
            tls_ca: None,
            auth: None,
            from: "fieldtrack <deploys@example.com>".parse().unwrap(),
            to: vec![
                "ops@example.com".parse().unwrap(),
                "Dev <dev@example.com>".parse().unwrap(),
            ],
            events: None,
        }
    }

    fn full_chain(err: &dyn std::error::Error) -> String {
        let mut text = format!("{err} / {err:?}");
        let mut source = err.source();
        while let Some(e) = source {
            text.push_str(&format!(" / {e} / {e:?}"));
            source = e.source();
        }
        text
    }

    #[test]
    fn the_body_names_every_field_and_the_whole_message() {
        let n = Notification {
            message: Some("candidate api-green never became healthy\nlast log: boom".into()),
            ..Notification {
                event: Event::Failed,
                ..sample()
            }
        };
        let body = body(&n);
        for line in [
            "❌ api: deploy of v2 failed: candidate api-green never became healthy",
            "event:      failed",
            "app:        api",
            "image:      v2",
            "previous:   v1",
            "color:      green",
            "digest:     sha256:abc",
            "by:         ci",
            "note:       hotfix login",
            "generation: g7",
            "duration:   1s 234ms",
            "message:\ncandidate api-green never became healthy\nlast log: boom",
        ] {
            assert!(body.contains(line), "{line:?} missing in\n{body}");
        }
        assert!(body.contains(&format!("host:       {}", n.host)), "{body}");
        assert!(body.contains(&format!("time:       {}", n.time)), "{body}");

        let bare = super::body(&Notification::new(Event::Succeeded, "api", "v1"));
        assert!(bare.contains("previous:   (none)"), "{bare}");
        assert!(!bare.contains("message:"), "{bare}");
    }

    #[test]
    fn the_subject_is_the_headline_and_the_host() {
        let n = Notification {
            message: Some("a long reason".into()),
            ..Notification {
                event: Event::Failed,
                ..sample()
            }
        };
        assert_eq!(
            subject(&n),
            format!("[fieldtrack] ❌ api: deploy of v2 failed on {}", n.host)
        );
        assert_eq!(
            subject(&sample()),
            format!(
                "[fieldtrack] ✅ api deployed v2 (green) on {}",
                sample().host
            )
        );
    }

    #[test]
    fn events_filter_what_is_mailed() {
        let all = Mailer::new(&config(25), Duration::from_secs(1)).unwrap();
        let failed_only = Mailer::new(
            &EmailConfig {
                events: Some(vec!["failed".into(), "auto_rollback".into()]),
                ..config(25)
            },
            Duration::from_secs(1),
        )
        .unwrap();
        for event in [
            Event::Succeeded,
            Event::Failed,
            Event::RolledBack,
            Event::AutoRollback,
            Event::CanaryStep,
        ] {
            let n = Notification::new(event, "api", "v2");
            // Unset: everything but a mail per canary step.
            assert_eq!(all.wants(&n), event != Event::CanaryStep, "{event:?}");
            assert_eq!(
                failed_only.wants(&n),
                matches!(event, Event::Failed | Event::AutoRollback),
                "{event:?}"
            );
            assert!(
                crate::config::NOTIFY_EVENTS.contains(&event.as_str()),
                "notify.email.events must accept {event:?}"
            );
        }
    }

    #[test]
    fn the_message_goes_from_from_to_every_to() {
        let mailer = Mailer::new(&config(25), Duration::from_secs(1)).unwrap();
        let message = mailer.message(&sample()).unwrap();
        let envelope = message.envelope();
        assert_eq!(
            envelope.from().map(|a| a.to_string()).as_deref(),
            Some("deploys@example.com")
        );
        let to: Vec<String> = envelope.to().iter().map(|a| a.to_string()).collect();
        assert_eq!(to, ["ops@example.com", "dev@example.com"]);
        let raw = String::from_utf8(message.formatted()).unwrap();
        assert!(
            raw.contains("Content-Type: text/plain; charset=utf-8"),
            "{raw}"
        );
    }

    #[test]
    fn the_password_comes_from_its_file_or_variable_without_the_line_break() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
        assert_eq!(
            read_password(&PasswordSource::File(file.clone())).unwrap(),
            PASSWORD
        );
        std::fs::write(&file, "").unwrap();
        let err = read_password(&PasswordSource::File(file.clone())).unwrap_err();
        assert!(err.to_string().contains("password_file"), "{err}");
        let err = read_password(&PasswordSource::File(dir.path().join("missing"))).unwrap_err();
        assert!(matches!(err, EmailError::PasswordFile { .. }), "{err:?}");
        let err = read_password(&PasswordSource::Env(
            "FIELDTRACK_TEST_SURELY_UNSET_VARIABLE".into(),
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "notify.email.password_env: the environment variable \
             FIELDTRACK_TEST_SURELY_UNSET_VARIABLE is not set or empty"
        );
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let cfg = EmailConfig {
            host: "smtp.example.com".into(),
            security: EmailSecurity::StartTls,
            tls_ca: Some(ca),
            ..config(587)
        };
        let err = Mailer::new(&cfg, Duration::from_secs(1)).unwrap_err();
        assert!(
            err.to_string().contains("notify.email.tls_ca")
                && err.to_string().contains("no PEM certificate"),
            "{err}"
        );
        assert_eq!(
            pem_blocks(b"x\n-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nBB\n-----END CERTIFICATE-----\n").len(),
            2
        );
    }

    /// A server that greets and then never answers EHLO: the delivery gives up by
    /// `notify.timeout`, and nothing says the password.
    #[tokio::test]
    async fn a_server_that_stops_answering_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for mut stream in listener.incoming().flatten() {
                let _ = stream.write_all(b"220 silent ESMTP\r\n");
                held.push(stream);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, PASSWORD).unwrap();
        let cfg = EmailConfig {
            auth: Some(EmailAuth {
                user: "deploy".into(),
                password: PasswordSource::File(file),
            }),
            ..config(port)
        };
        let mailer = Mailer::new(&cfg, Duration::from_millis(300)).unwrap();
        assert!(!format!("{mailer:?}").contains(PASSWORD));
        let start = Instant::now();
        let err = mailer.send_now(&sample()).await.unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert!(matches!(err, EmailError::TimedOut { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("smtp server 127.0.0.1:{port} did not take the email within 300ms")
        );
        assert!(!full_chain(&err).contains(PASSWORD));
    }

    /// A refused connection says so and names the server.
    #[tokio::test]
    async fn a_refused_connection_names_the_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mailer = Mailer::new(&config(port), Duration::from_secs(2)).unwrap();
        let err = mailer.send_now(&sample()).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "failed to send email notification through 127.0.0.1:{port}: "
            )),
            "{msg}"
        );
        assert!(msg.to_ascii_lowercase().contains("refused"), "{msg}");
    }

    /// A minimal SMTP dialogue on loopback: the server receives one message, for both
    /// recipients, with its headers (the real server's test is tests/integration/email.rs).
    #[tokio::test]
    async fn the_dialogue_carries_the_envelope_and_the_body() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut out = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            let mut seen = Vec::new();
            out.write_all(b"220 test ESMTP\r\n").unwrap();
            let mut in_data = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                seen.push(line.clone());
                let reply: &[u8] = if in_data {
                    if line == ".\r\n" {
                        in_data = false;
                        b"250 queued\r\n"
                    } else {
                        continue;
                    }
                } else if line.starts_with("EHLO") {
                    b"250-test\r\n250 8BITMIME\r\n"
                } else if line.starts_with("DATA") {
                    in_data = true;
                    b"354 go\r\n"
                } else if line.starts_with("QUIT") {
                    out.write_all(b"221 bye\r\n").unwrap();
                    break;
                } else {
                    b"250 ok\r\n"
                };
                out.write_all(reply).unwrap();
            }
            let _ = tx.send(seen.concat());
        });
        let mailer = Mailer::new(&config(port), Duration::from_secs(5)).unwrap();
        mailer.send_now(&sample()).await.unwrap();
        let seen = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        for part in [
            "MAIL FROM:<deploys@example.com>",
            "RCPT TO:<ops@example.com>",
            "RCPT TO:<dev@example.com>",
            "Subject: ",
            "To: ops@example.com, Dev <dev@example.com>",
            "Content-Type: text/plain; charset=utf-8",
        ] {
            assert!(seen.contains(part), "{part:?} missing in\n{seen}");
        }
        assert!(!seen.contains(PASSWORD));
    }
}
