//! Notifications: telling the team's chat (a webhook) and mailboxes (`[notify.email]`,
//! see [`super::email`]) what a deployment did.
//!
//! A deployment must never wait for, or fail because of, a chat or mail service. So
//! [`Notifier::send`] is fire-and-forget: it hands each delivery to a background task and
//! returns at once, and a webhook or SMTP server that is down, slow or refusing only costs
//! a warning in the log. The webhook URL usually carries its token in the path or query, so it never
//! appears in a log line or an error: only its scheme and host do
//! ([`NotifyConfig::webhook_redacted`]). Both the host shown and the request come from the
//! one parsed [`url::Url`] of the config, so the host shown is the host connected to.
//!
//! The body is JSON with a Slack-compatible `text` (Mattermost, Rocket.Chat and most chat
//! webhooks read the same field) beside structured fields for anything else.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod email;
mod message;
mod webhook;

use crate::config::NotifyConfig;
pub use email::{EmailError, Mailer};
pub use message::{error_chain, hostname, Event, Notification};
use webhook::Webhook;

/// Why a notification was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The HTTP client could not be built (TLS setup failed).
    #[error("failed to build the webhook http client: {source}")]
    Client {
        #[source]
        source: reqwest::Error,
    },
    /// The request could not be sent or its answer not read (DNS, connection, TLS).
    /// `webhook` is redacted and the source carries no URL.
    #[error("failed to send webhook notification to {webhook}: {reason}")]
    Request {
        webhook: String,
        /// The source's chain in a few words.
        reason: String,
        #[source]
        source: reqwest::Error,
    },
    /// No complete answer within `notify.timeout`.
    #[error(
        "webhook {webhook} did not answer within {}",
        humantime::format_duration(*timeout)
    )]
    TimedOut {
        webhook: String,
        timeout: Duration,
        #[source]
        source: reqwest::Error,
    },
    /// The webhook answered with a non-2xx status; `body` is the start of its answer.
    #[error("webhook {webhook} answered {status}: {body}")]
    Status {
        webhook: String,
        status: reqwest::StatusCode,
        body: String,
    },
    /// Email could not be set up (the SMTP password or the CA file unreadable).
    #[error("{source}")]
    Email {
        #[from]
        source: EmailError,
    },
}

/// Sends each notification to the configured webhook and, with `[notify.email]`, by email.
/// Cheap to clone; clones share the in-flight count that [`Notifier::flush`] waits on.
#[derive(Clone)]
pub struct Notifier {
    webhook: Option<Webhook>,
    email: Option<Mailer>,
    in_flight: Arc<InFlight>,
}

/// The channels, without the webhook's path and query or the SMTP password.
impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("webhook", &self.webhook)
            .field("email", &self.email)
            .finish()
    }
}

impl Notifier {
    /// A notifier for `[notify]`, or `None` when neither a webhook nor email is configured.
    /// A channel that cannot be set up (which [`Notifier::try_new`] reports: a TLS client
    /// that cannot be built, an SMTP password that cannot be read) is logged and left out:
    /// notifications are never worth failing the daemon for.
    pub fn new(cfg: &NotifyConfig) -> Option<Notifier> {
        let webhook = Webhook::new(cfg).unwrap_or_else(|err| {
            tracing::warn!(error = %err, "webhook notifications disabled");
            None
        });
        let email = cfg.email.as_ref().and_then(|email| {
            Mailer::new(email, cfg.timeout)
                .map_err(|err| tracing::warn!(error = %err, "email notifications disabled"))
                .ok()
        });
        Notifier::of(webhook, email)
    }

    /// [`Notifier::new`], reporting a channel that cannot be set up.
    pub fn try_new(cfg: &NotifyConfig) -> Result<Option<Notifier>, NotifyError> {
        let webhook = Webhook::new(cfg)?;
        let email = match &cfg.email {
            None => None,
            Some(email) => Some(Mailer::new(email, cfg.timeout)?),
        };
        Ok(Notifier::of(webhook, email))
    }

    fn of(webhook: Option<Webhook>, email: Option<Mailer>) -> Option<Notifier> {
        if webhook.is_none() && email.is_none() {
            return None;
        }
        Some(Notifier {
            webhook,
            email,
            in_flight: Arc::new(InFlight::default()),
        })
    }

    /// Where notifications go, as it may be shown: the webhook's scheme and host, the SMTP
    /// server. E.g. `webhook https://hooks.example.com/…, email smtp.example.com:587`.
    pub fn targets(&self) -> String {
        let webhook = self
            .webhook
            .as_ref()
            .map(|w| format!("webhook {}", w.redacted));
        let email = self.email.as_ref().map(|m| format!("email {}", m.server()));
        [webhook, email]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The webhook as it may be shown (scheme and host), if one is configured.
    pub fn webhook_redacted(&self) -> Option<&str> {
        self.webhook.as_ref().map(|w| &*w.redacted)
    }

    /// Sends `n` to every channel in the background and returns at once; a failure is
    /// logged as a warning. Email goes only for the events `notify.email.events` lists.
    /// Outside a tokio runtime nothing can run in the background, so the notification is
    /// dropped with a warning.
    pub fn send(&self, n: Notification) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                to = %self.targets(),
                event = n.event.as_str(),
                "notification dropped: no async runtime"
            );
            return;
        };
        if let Some(mailer) = self.email.as_ref().filter(|m| m.wants(&n)) {
            let mailer = mailer.clone();
            let guard = InFlightGuard::new(self.in_flight.clone());
            let n = n.clone();
            runtime.spawn(async move {
                let _guard = guard;
                match mailer.send_now(&n).await {
                    Ok(()) => tracing::debug!(
                        server = mailer.server(),
                        event = n.event.as_str(),
                        "email notification sent"
                    ),
                    Err(err) => tracing::warn!(
                        event = n.event.as_str(),
                        error = %err,
                        "email notification failed"
                    ),
                }
            });
        }
        if let Some(webhook) = &self.webhook {
            let webhook = webhook.clone();
            let guard = InFlightGuard::new(self.in_flight.clone());
            runtime.spawn(async move {
                let _guard = guard;
                let event = n.event;
                match webhook.send_now(n).await {
                    Ok(()) => tracing::debug!(
                        webhook = %webhook.redacted,
                        event = event.as_str(),
                        "webhook notification sent"
                    ),
                    Err(err) => tracing::warn!(
                        event = event.as_str(),
                        error = %err,
                        "webhook notification failed"
                    ),
                }
            });
        }
    }

    /// POSTs `n` to the webhook and waits for a 2xx answer, at most `notify.timeout`;
    /// nothing to do without a webhook.
    pub async fn send_webhook_now(&self, n: Notification) -> Result<(), NotifyError> {
        match &self.webhook {
            Some(webhook) => webhook.send_now(n).await,
            None => Ok(()),
        }
    }

    /// Waits until every notification handed to [`Notifier::send`] (by this notifier or a
    /// clone) is delivered or has failed, at most `within`. For a process about to exit
    /// (`fieldtrack reconcile`, `deploy`): its runtime would drop the tasks unfinished.
    /// Returns whether all were done.
    pub async fn flush(&self, within: Duration) -> bool {
        tokio::time::timeout(within, self.in_flight.idle())
            .await
            .is_ok()
    }
}

/// How many background sends are running, and a wake-up for when none is.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl InFlight {
    async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a send finishing in between still wakes us.
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts one background send for as long as it lives, even if its task is cancelled.
struct InFlightGuard(Arc<InFlight>);

impl InFlightGuard {
    fn new(in_flight: Arc<InFlight>) -> InFlightGuard {
        in_flight.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(in_flight)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Color;
    use crate::notifications::message::sample;
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;
    use std::time::Instant;

    const SECRET_PATH: &str = "/T000/B000/secret";

    fn config(webhook: String, timeout: Duration) -> NotifyConfig {
        NotifyConfig {
            webhook: Some(url::Url::parse(&webhook).unwrap()),
            allow_http: true,
            timeout,
            email: None,
        }
    }

    /// Reads one HTTP request (head and `Content-Length` body) from `stream`.
    fn read_request(stream: &TcpStream) -> (String, Vec<u8>) {
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            head.push_str(&line);
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        (head, body)
    }

    /// A receiver answering one request with `status`; sends what it got on the channel.
    fn receiver(status: &'static str) -> (String, mpsc::Receiver<(String, Vec<u8>)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}{SECRET_PATH}?token=x",
            listener.local_addr().unwrap()
        );
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let request = read_request(&stream);
            let body = "invalid_token";
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tx.send(request);
        });
        (url, rx)
    }

    /// A receiver that accepts and reads but never answers; lives as long as the test.
    fn silent_receiver() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}{SECRET_PATH}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                held.push(stream);
            }
        });
        url
    }

    fn refused_url() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}{SECRET_PATH}")
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
    fn no_webhook_no_notifier() {
        let cfg = NotifyConfig {
            webhook: None,
            allow_http: false,
            timeout: Duration::from_secs(5),
            email: None,
        };
        assert!(Notifier::new(&cfg).is_none());
    }

    #[test]
    fn texts() {
        let n = sample();
        assert_eq!(n.text(), "✅ api deployed v2 (green)");

        let n = Notification {
            message: Some("candidate api-green never became healthy\ndetails".into()),
            ..Notification::new(Event::Failed, "api", "v2")
        };
        assert_eq!(
            n.text(),
            "❌ api: deploy of v2 failed: candidate api-green never became healthy"
        );
        assert_eq!(
            Notification::new(Event::Failed, "api", "v2").text(),
            "❌ api: deploy of v2 failed"
        );

        let n = Notification {
            previous: Some("v1".into()),
            message: Some("3 failed probes during the drain".into()),
            ..Notification::new(Event::AutoRollback, "api", "v2")
        };
        assert_eq!(
            n.text(),
            "↩️ api auto-rolled back from v2 to v1: 3 failed probes during the drain"
        );

        let n = Notification {
            previous: Some("v2".into()),
            color: Some(Color::Blue),
            ..Notification::new(Event::RolledBack, "api", "v1")
        };
        assert_eq!(n.text(), "↩️ api rolled back from v2 to v1 (blue)");

        let long = Notification {
            message: Some("x".repeat(1000)),
            ..Notification::new(Event::Failed, "api", "v2")
        };
        assert!(long.text().ends_with("x…"), "{}", long.text());
        assert!(long.text().chars().count() < 400);
    }

    #[test]
    fn json_has_every_field_and_text() {
        let json = sample().to_json();
        let obj = json.as_object().unwrap();
        for key in [
            "text",
            "event",
            "app",
            "image",
            "previous",
            "color",
            "digest",
            "message",
            "by",
            "note",
            "generation",
            "duration_ms",
            "host",
            "time",
        ] {
            assert!(obj.contains_key(key), "{key} missing in {json}");
        }
        assert_eq!(json["event"], "succeeded");
        assert_eq!(json["color"], "green");
        assert_eq!(json["message"], serde_json::Value::Null);
        assert_eq!(json["duration_ms"], 1234);
        for (event, name) in [
            (Event::Failed, "failed"),
            (Event::RolledBack, "rolled_back"),
            (Event::AutoRollback, "auto_rollback"),
        ] {
            assert_eq!(Notification::new(event, "a", "b").to_json()["event"], name);
            assert_eq!(event.as_str(), name);
        }
    }

    #[tokio::test]
    async fn the_webhook_receives_the_json_body() {
        let (url, rx) = receiver("200 OK");
        let notifier = Notifier::new(&config(url, Duration::from_secs(5))).unwrap();
        notifier.send_webhook_now(sample()).await.unwrap();
        let (head, body) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            head.starts_with(&format!("POST {SECRET_PATH}?token=x HTTP/1.1\r\n")),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["text"], "✅ api deployed v2 (green)");
        assert_eq!(json["event"], "succeeded");
        assert_eq!(json["app"], "api");
        assert_eq!(json["image"], "v2");
        assert_eq!(json["previous"], "v1");
        assert_eq!(json["digest"], "sha256:abc");
        assert_eq!(json["by"], "ci");
        assert_eq!(json["note"], "hotfix login");
        assert_eq!(json["generation"], "g7");
        assert_eq!(json["host"], hostname());
        assert!(json["time"].as_str().unwrap().ends_with('Z'), "{json}");
    }

    /// The host shown in messages is the host the request goes to, for a URL a hand-made
    /// parser reads otherwise (`\` is `/`, so what follows the `@` is path).
    #[tokio::test]
    async fn the_host_shown_is_the_host_connected_to() {
        let (url, rx) = receiver("403 Forbidden");
        let addr = url
            .strip_prefix("http://")
            .and_then(|rest| rest.split('/').next())
            .unwrap()
            .to_owned();
        let tricky = format!(r"http://{addr}\@evil.invalid{SECRET_PATH}");
        let webhook = url::Url::parse(&tricky).unwrap();
        let cfg = NotifyConfig {
            webhook: Some(webhook),
            allow_http: true,
            timeout: Duration::from_secs(5),
            email: None,
        };
        let notifier = Notifier::new(&cfg).unwrap();
        assert_eq!(
            notifier.webhook_redacted().unwrap(),
            format!("http://{addr}/…")
        );
        let err = notifier.send_webhook_now(sample()).await.unwrap_err();
        let (head, _) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            head.starts_with(&format!("POST /@evil.invalid{SECRET_PATH} HTTP/1.1\r\n")),
            "{head}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("webhook http://{addr}/… answered 403")),
            "{msg}"
        );
        assert!(!msg.contains("evil"), "{msg}");
    }

    #[tokio::test]
    async fn send_delivers_in_the_background() {
        let (url, rx) = receiver("200 OK");
        let notifier = Notifier::new(&config(url, Duration::from_secs(5))).unwrap();
        notifier.send(sample());
        assert!(notifier.flush(Duration::from_secs(5)).await);
        let (_, body) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["event"], "succeeded");
    }

    #[tokio::test]
    async fn an_error_status_is_reported_without_the_token() {
        let (url, _rx) = receiver("403 Forbidden");
        let notifier = Notifier::new(&config(url, Duration::from_secs(5))).unwrap();
        let err = notifier.send_webhook_now(sample()).await.unwrap_err();
        assert!(matches!(err, NotifyError::Status { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("webhook http://127.0.0.1:")
                && msg.ends_with("answered 403 Forbidden: invalid_token"),
            "{msg}"
        );
        assert!(!full_chain(&err).contains("secret"), "{}", full_chain(&err));
    }

    #[tokio::test]
    async fn a_webhook_that_never_answers_never_delays_the_caller() {
        let notifier =
            Notifier::new(&config(silent_receiver(), Duration::from_millis(300))).unwrap();

        let start = Instant::now();
        notifier.send(sample());
        assert!(
            start.elapsed() < Duration::from_millis(50),
            "{:?}",
            start.elapsed()
        );

        let start = Instant::now();
        let err = notifier.send_webhook_now(sample()).await.unwrap_err();
        let elapsed = start.elapsed();
        assert!(matches!(err, NotifyError::TimedOut { .. }), "{err:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        assert!(
            err.to_string().ends_with("did not answer within 300ms"),
            "{err}"
        );
        assert!(!full_chain(&err).contains("secret"), "{}", full_chain(&err));

        // The background send gave up by its own timeout too.
        assert!(notifier.flush(Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn a_refused_connection_does_not_reveal_the_url_path() {
        let notifier = Notifier::new(&config(refused_url(), Duration::from_secs(2))).unwrap();
        let err = notifier.send_webhook_now(sample()).await.unwrap_err();
        assert!(matches!(err, NotifyError::Request { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("failed to send webhook notification to http://127.0.0.1:"),
            "{msg}"
        );
        assert!(msg.to_ascii_lowercase().contains("refused"), "{msg}");
        let chain = full_chain(&err);
        assert!(
            !chain.contains(SECRET_PATH) && !chain.contains("secret"),
            "{chain}"
        );
        assert!(!format!("{notifier:?}").contains("secret"));
    }

    #[test]
    fn send_outside_a_runtime_is_dropped_not_a_panic() {
        let notifier = Notifier::new(&config(refused_url(), Duration::from_secs(1))).unwrap();
        notifier.send(sample());
    }
}
