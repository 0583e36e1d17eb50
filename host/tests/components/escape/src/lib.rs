//! A stage that tries to reach the host's resources, as the event's `act` field says:
//! `read-file` (the host's /etc/hostname), `list-root` (the host's /), `env` (environment
//! variables), `clock` (the time), `connect` (a TCP connection to the local broker). It returns
//! the event with `escape` set to what it got, so a test can check that it got nothing.
#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({ path: "../../../../wit", world: "topping", generate_all });

struct Escape;

impl Guest for Escape {
    fn transform(event: String) -> Result<String, StageError> {
        let got = match act(&event).as_deref() {
            Some("read-file") => match std::fs::read_to_string("/etc/hostname") {
                Ok(text) => format!("read {} bytes", text.len()),
                Err(err) => format!("refused: {err}"),
            },
            Some("list-root") => match std::fs::read_dir("/") {
                Ok(entries) => format!("listed {} entries", entries.count()),
                Err(err) => format!("refused: {err}"),
            },
            Some("env") => format!(
                "{} variables, HOME={:?}",
                std::env::vars().count(),
                std::env::var("HOME").ok()
            ),
            Some("clock") => format!(
                "{} s since the epoch",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default()
            ),
            Some("connect") => match std::net::TcpStream::connect("127.0.0.1:9092") {
                Ok(_) => "connected".into(),
                Err(err) => format!("refused: {err}"),
            },
            _ => "nothing tried".into(),
        };
        let got = got.replace('"', "'");
        Ok(format!(
            "{},\"escape\":\"{got}\"}}",
            event.trim_end().trim_end_matches('}')
        ))
    }
}

/// The value of `"act":"…"` in the event, found without a JSON parser to keep this tiny.
fn act(event: &str) -> Option<String> {
    let start = event.find("\"act\":\"")? + 7;
    let end = event[start..].find('"')? + start;
    Some(event[start..end].to_owned())
}

export!(Escape);
