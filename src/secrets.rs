//! The connection's password, known from the parsed settings, and kept out of every line the
//! process writes: log lines go through [`ScrubbingWriter`], and the final error through
//! [`scrub`]. Messages are built not to contain it in the first place (URLs are shown through
//! `config::redact_url`); this is the net under them, which does not depend on how a URL or
//! a conninfo string spells the password.

use std::io::Write;
use std::sync::RwLock;

/// Shorter secrets are not scrubbed: replacing two letters everywhere would garble every
/// line, and a password that short protects nothing anyway.
const MIN_SECRET_LEN: usize = 4;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Remembers `secret`, and the forms a URL may spell it in, to scrub from output.
pub fn register(secret: &str) {
    let mut forms = vec![secret.to_owned(), url_encoded(secret)];
    forms.retain(|f| f.chars().count() >= MIN_SECRET_LEN);
    if let Ok(mut secrets) = SECRETS.write() {
        for form in forms {
            if !secrets.contains(&form) {
                secrets.push(form);
            }
        }
        // Longest first, so that a secret containing another goes whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// `text` with every registered secret replaced by `***`.
pub fn scrub(text: &str) -> String {
    let Ok(secrets) = SECRETS.read() else {
        return text.to_owned();
    };
    let mut out = text.to_owned();
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

/// `text` percent-encoded for a URL's query or userinfo.
pub fn url_encoded(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Standard error, with registered secrets scrubbed from what is written (the log formatter
/// writes one event per call).
pub struct ScrubbingWriter;

impl Write for ScrubbingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_are_scrubbed_in_every_spelling() {
        register("pa/ss?w#rd x");
        register("ab");
        let line = "url postgres://u:pa%2Fss%3Fw%23rd%20x@h/db and pa/ss?w#rd x, ab";
        assert_eq!(
            scrub(line),
            "url postgres://u:***@h/db and ***, ab",
            "short secrets stay"
        );
    }
}
