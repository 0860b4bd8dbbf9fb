//! A real SMTP server on loopback for the email tests: Debian's `python3-aiosmtpd`, one per
//! test, writing every message it accepts into a Maildir.
//!
//! aiosmtpd's own command line (`python3 -m aiosmtpd -c aiosmtpd.handlers.Mailbox DIR`) has
//! no way to ask for AUTH, so a few lines of Python drive the same `SMTP` class and
//! `Mailbox` handler with an authenticator; with [`SmtpTls`] it also offers STARTTLS or
//! speaks TLS from the first byte, with a certificate for 127.0.0.1 signed by a CA made for
//! the test (openssl), which the test hands to fieldtrack as `notify.email.tls_ca`.
//! The server binds port 0 and writes the port it got, so two tests never race for one.
//! Messages are read back with Python's `email` package, an independent MIME parser: a
//! test sees the subject and body decoded, as a mail client would.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::{self, err, BedError, Result};

/// Debian's Python, which the `python3-aiosmtpd` package installs into (a `python3` first on
/// PATH may be another one).
const PYTHON: &str = "/usr/bin/python3";

/// How the server encrypts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmtpTls {
    /// Plain SMTP.
    #[default]
    None,
    /// Plain, upgraded by STARTTLS, which the server requires before anything else.
    StartTls,
    /// TLS from the first byte (SMTPS).
    Implicit,
}

/// How an [`SmtpServer`] is started.
#[derive(Debug, Clone, Default)]
pub struct SmtpOptions {
    /// Require AUTH (PLAIN or LOGIN) with this user and password.
    pub auth: Option<(String, String)>,
    pub tls: SmtpTls,
}

/// One message as the server received it, decoded.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The `From` header.
    pub from: String,
    /// The `To` header's addresses.
    pub to: Vec<String>,
    pub subject: String,
    pub body: String,
}

/// A running aiosmtpd; stopped when dropped.
#[derive(Debug)]
pub struct SmtpServer {
    /// The port on 127.0.0.1.
    pub port: u16,
    /// Where the server keeps its Maildir, script, log and certificates.
    pub dir: PathBuf,
    /// The CA that signed the server's certificate, with [`SmtpTls::StartTls`] or
    /// [`SmtpTls::Implicit`].
    pub ca: Option<PathBuf>,
    child: Child,
}

const SERVER: &str = r#"
import asyncio, os, ssl, sys
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

folder, mode = sys.argv[1], sys.argv[2]
user = os.environ.get("SMTP_USER", "").encode()
password = os.environ.get("SMTP_PASSWORD", "").encode()

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == user and auth_data.password == password
    return AuthResult(success=ok, handled=False)

context = None
if mode != "none":
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(os.path.join(folder, "server.pem"), os.path.join(folder, "server.key"))

def factory():
    options = {}
    if user:
        # aiosmtpd knows of TLS only when it did the STARTTLS itself: over implicit TLS it
        # would hide AUTH unless told TLS is not required.
        options.update(authenticator=authenticator, auth_required=True, auth_require_tls=(mode == "starttls"))
    if mode == "starttls":
        options.update(tls_context=context, require_starttls=True)
    return SMTP(Mailbox(os.path.join(folder, "maildir")), **options)

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=context if mode == "implicit" else None)
    port = server.sockets[0].getsockname()[1]
    with open(os.path.join(folder, "port.tmp"), "w") as f:
        f.write(str(port))
    os.rename(os.path.join(folder, "port.tmp"), os.path.join(folder, "port"))
    print("listening on 127.0.0.1:%d (%s)" % (port, mode), flush=True)
    await server.serve_forever()

asyncio.run(main())
"#;

const READER: &str = r#"
import email, email.policy, mailbox, sys
def arrival(item):
    # A Maildir name starts SECONDS.MMICROSECONDSP...: in the order received.
    seconds, rest = item[0].split(".", 2)[:2]
    return (int(seconds), int(rest[1:].split("P")[0]))
for key, message in sorted(mailbox.Maildir(sys.argv[1], create=False).items(), key=arrival):
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    to = ",".join(a.addr_spec for a in parsed["to"].addresses)
    body = parsed.get_content()
    sys.stdout.write("\x1e" + "\x1f".join([str(parsed["from"]), to, str(parsed["subject"]), body]))
"#;

impl SmtpServer {
    /// Starts a server in `dir` (created), waits until it listens.
    pub fn start(dir: &Path, options: SmtpOptions) -> Result<SmtpServer> {
        // Not the Maildir itself: aiosmtpd makes it (with cur/, new/, tmp/) only when absent.
        fs::create_dir_all(dir)
            .map_err(|e| BedError(format!("cannot create {}: {e}", dir.display())))?;
        if !Path::new(PYTHON).exists() {
            return err(format!("{PYTHON} is missing (Debian's python3-aiosmtpd)"));
        }
        let mode = match options.tls {
            SmtpTls::None => "none",
            SmtpTls::StartTls => "starttls",
            SmtpTls::Implicit => "implicit",
        };
        let ca = match options.tls {
            SmtpTls::None => None,
            _ => Some(certificates(dir)?),
        };
        let script = dir.join("smtp-server.py");
        fs::write(&script, SERVER)
            .map_err(|e| BedError(format!("cannot write {}: {e}", script.display())))?;
        let _ = fs::remove_file(dir.join("port"));
        let log = dir.join("smtp.log");
        let out = fs::File::create(&log)
            .map_err(|e| BedError(format!("cannot create {}: {e}", log.display())))?;
        let err_out = out
            .try_clone()
            .map_err(|e| BedError(format!("cannot open {}: {e}", log.display())))?;
        let mut cmd = Command::new(PYTHON);
        cmd.arg(&script).arg(dir).arg(mode);
        if let Some((user, password)) = &options.auth {
            cmd.env("SMTP_USER", user).env("SMTP_PASSWORD", password);
        }
        // SAFETY: prctl is async-signal-safe. The server dies with the thread that started
        // it (the test's), so a test killed before its drop leaves no server behind.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err_out)
            .spawn()
            .map_err(|e| BedError(format!("cannot start {PYTHON}: {e}")))?;
        let port_file = dir.join("port");
        let started = util::wait_until(Duration::from_secs(20), || {
            port_file.exists() || matches!(child.try_wait(), Ok(Some(_)))
        });
        let port = fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse().ok());
        match port {
            Some(port) if started => Ok(SmtpServer {
                port,
                dir: dir.to_path_buf(),
                ca,
                child,
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                err(format!(
                    "the SMTP server (aiosmtpd) did not start; {}:\n{}",
                    log.display(),
                    util::tail_file(&log, 30)
                ))
            }
        }
    }

    /// Every message received so far, oldest first.
    pub fn messages(&self) -> Result<Vec<Mail>> {
        let out = util::run(
            Command::new(PYTHON)
                .args(["-c", READER])
                .arg(self.dir.join("maildir")),
        )?;
        Ok(out
            .split('\x1e')
            .filter(|record| !record.is_empty())
            .map(|record| {
                let mut fields = record.split('\x1f').map(str::to_owned);
                let mut next = || fields.next().unwrap_or_default();
                Mail {
                    from: next(),
                    to: next().split(',').map(str::to_owned).collect(),
                    subject: next(),
                    body: next(),
                }
            })
            .collect())
    }

    /// What the server printed (its errors, e.g. a refused login).
    pub fn log(&self) -> String {
        util::tail_file(&self.dir.join("smtp.log"), 50)
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes a CA and a certificate for 127.0.0.1 signed by it (`server.pem`, `server.key`);
/// returns the CA's file.
fn certificates(dir: &Path) -> Result<PathBuf> {
    let path = |name: &str| dir.join(name);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    util::run(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=fieldtrack test SMTP CA",
            ])
            .args(ec)
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(path("ca.key"))
            .arg("-out")
            .arg(path("ca.pem")),
    )?;
    util::run(
        Command::new("openssl")
            .args(["req", "-subj", "/CN=127.0.0.1"])
            .args(ec)
            .arg("-keyout")
            .arg(path("server.key"))
            .arg("-out")
            .arg(path("server.csr")),
    )?;
    fs::write(
        path("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| {
        BedError(format!(
            "cannot write {}: {e}",
            path("server.ext").display()
        ))
    })?;
    util::run(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(path("server.csr"))
            .arg("-CA")
            .arg(path("ca.pem"))
            .arg("-CAkey")
            .arg(path("ca.key"))
            .arg("-extfile")
            .arg(path("server.ext"))
            .arg("-out")
            .arg(path("server.pem")),
    )?;
    Ok(path("ca.pem"))
}
