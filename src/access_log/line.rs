//! One access line, in the layout `tracing`'s formatter gives the other log
//! lines (text or JSON), so a log reader sees one format whichever wrote it.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::time::SystemTime;

use http::{Method, Version};

use crate::config::LogFormat;

/// What an access line says; never a header, never the query string.
pub(crate) struct Line<'a> {
    pub client: IpAddr,
    pub method: &'a Method,
    pub path: &'a str,
    pub version: Version,
    pub status: u16,
    pub bytes: u64,
    pub listener: &'static str,
    /// Shown in milliseconds (`duration_ms`, three decimals).
    pub duration_us: u64,
    pub outcome: &'static str,
}

impl Line<'_> {
    /// Appends the line, ended by `\n`, to `out`. Made by hand rather than with
    /// `write!`: this runs once per request, and the formatting machinery cost
    /// more than the cached answer itself.
    pub(crate) fn write(&self, format: LogFormat, now: SystemTime, out: &mut Vec<u8>) {
        match format {
            LogFormat::Text => self.text(now, out),
            LogFormat::Json => self.json(now, out),
        }
    }

    fn text(&self, now: SystemTime, out: &mut Vec<u8>) {
        timestamp(now, out);
        // A path is visible ASCII without spaces (hyper refuses anything else):
        // shown as it is, like tracing shows a Display field.
        out.extend_from_slice(b"  INFO access: request client=");
        client(self.client, out);
        for (name, value) in [(" method=", self.method.as_str()), (" path=", self.path)] {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(b" version=");
        out.extend_from_slice(version(self.version));
        out.extend_from_slice(b" status=");
        number(u64::from(self.status), out);
        out.extend_from_slice(b" bytes=");
        number(self.bytes, out);
        out.extend_from_slice(b" listener=\"");
        out.extend_from_slice(self.listener.as_bytes());
        out.extend_from_slice(b"\" duration_ms=");
        millis(self.duration_us, out);
        out.extend_from_slice(b" outcome=\"");
        out.extend_from_slice(self.outcome.as_bytes());
        out.extend_from_slice(b"\"\n");
    }

    fn json(&self, now: SystemTime, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"timestamp":""#);
        timestamp(now, out);
        out.extend_from_slice(br#"","level":"INFO","message":"request","client":""#);
        client(self.client, out);
        out.extend_from_slice(br#"","method":"#);
        // serde_json escapes what a string needs; an extension method or a path
        // may hold `"` or `\`. (Writing to a Vec cannot fail.)
        let _ = serde_json::to_writer(&mut *out, self.method.as_str());
        out.extend_from_slice(br#","path":"#);
        let _ = serde_json::to_writer(&mut *out, self.path);
        out.extend_from_slice(br#","version":""#);
        out.extend_from_slice(version(self.version));
        out.extend_from_slice(br#"","status":"#);
        number(u64::from(self.status), out);
        out.extend_from_slice(br#","bytes":"#);
        number(self.bytes, out);
        out.extend_from_slice(br#","listener":""#);
        out.extend_from_slice(self.listener.as_bytes());
        out.extend_from_slice(br#"","duration_ms":"#);
        millis(self.duration_us, out);
        out.extend_from_slice(br#","outcome":""#);
        out.extend_from_slice(self.outcome.as_bytes());
        out.extend_from_slice(b"\",\"target\":\"access\"}\n");
    }
}

fn number(n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Microseconds as milliseconds with three decimals: `12.345`.
fn millis(us: u64, out: &mut Vec<u8>) {
    number(us / 1000, out);
    let frac = us % 1000;
    out.push(b'.');
    out.extend_from_slice(&[
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

fn version(v: Version) -> &'static [u8] {
    match v {
        Version::HTTP_09 => b"HTTP/0.9",
        Version::HTTP_10 => b"HTTP/1.0",
        Version::HTTP_2 => b"HTTP/2.0",
        Version::HTTP_3 => b"HTTP/3.0",
        _ => b"HTTP/1.1",
    }
}

thread_local! {
    /// The last second formatted on this thread (`2026-12-02T12:00:00`): the
    /// date changes once a second, the lines many times.
    static SECOND: Cell<(u64, [u8; SECOND_LEN])> = const { Cell::new((u64::MAX, [0; SECOND_LEN])) };
    /// The last client address formatted on this thread: a keep-alive client
    /// sends many requests.
    static CLIENT: RefCell<Option<(IpAddr, String)>> = const { RefCell::new(None) };
}

/// `2026-12-02T12:00:00`: four-digit years, as in any time a log line is written.
const SECOND_LEN: usize = 19;

/// RFC 3339 in UTC with microseconds, as `tracing` writes its timestamps.
fn timestamp(now: SystemTime, out: &mut Vec<u8>) {
    let since = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let (secs, mut text) = SECOND.get();
    if secs != since.as_secs() {
        let formatted = humantime::format_rfc3339_seconds(now).to_string();
        match formatted.as_bytes().get(..SECOND_LEN) {
            Some(date) if formatted.len() == SECOND_LEN + 1 => {
                text.copy_from_slice(date);
                SECOND.set((since.as_secs(), text));
            }
            // Past the year 9999 (or a clock set far off): as it comes, uncached.
            _ => {
                out.extend_from_slice(formatted.trim_end_matches('Z').as_bytes());
                return fraction(since.subsec_micros(), out);
            }
        }
    }
    out.extend_from_slice(&text);
    fraction(since.subsec_micros(), out);
}

/// `.123456Z`: six digits always, made without a formatter.
fn fraction(micros: u32, out: &mut Vec<u8>) {
    let mut text = *b".000000Z";
    let mut rest = micros;
    for digit in text[1..7].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&text);
}

fn client(addr: IpAddr, out: &mut Vec<u8>) {
    CLIENT.with_borrow_mut(|last| {
        if last.as_ref().is_none_or(|(held, _)| *held != addr) {
            *last = Some((addr, addr.to_string()));
        }
        if let Some((_, text)) = last {
            out.extend_from_slice(text.as_bytes());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn line(method: &Method, path: &'static str) -> Line<'static> {
        let method: &'static Method = Box::leak(Box::new(method.clone()));
        Line {
            client: "2001:db8::1".parse().unwrap(),
            method,
            path,
            version: Version::HTTP_11,
            status: 200,
            bytes: 1234,
            listener: "main",
            duration_us: 1000,
            outcome: "complete",
        }
    }

    const AT: Duration = Duration::from_micros(1_796_212_800_123_456);

    fn written(l: &Line<'_>, format: LogFormat) -> String {
        let mut out = Vec::new();
        l.write(format, SystemTime::UNIX_EPOCH + AT, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_reads_like_the_other_log_lines() {
        assert_eq!(
            written(&line(&Method::GET, "/-/jwks"), LogFormat::Text),
            "2026-12-02T12:00:00.123456Z  INFO access: request client=2001:db8::1 method=GET path=/-/jwks \
             version=HTTP/1.1 status=200 bytes=1234 listener=\"main\" duration_ms=1.000 outcome=\"complete\"\n"
        );
    }

    #[test]
    fn a_short_fraction_of_a_second_is_padded() {
        let mut out = Vec::new();
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_212_800_000_005);
        line(&Method::GET, "/").write(LogFormat::Text, at, &mut out);
        assert!(
            out.starts_with(b"2026-12-02T12:00:00.000005Z  INFO"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn each_second_is_shown_as_its_own() {
        // The formatted second is kept per thread: a new second, or an earlier
        // one (a clock set back), is formatted again.
        for (micros, shown) in [
            (1_796_212_800_999_999, "2026-12-02T12:00:00.999999Z"),
            (1_796_212_801_000_000, "2026-12-02T12:00:01.000000Z"),
            (1_796_212_800_000_000, "2026-12-02T12:00:00.000000Z"),
            (1_796_299_199_000_042, "2026-12-03T11:59:59.000042Z"),
        ] {
            let mut out = Vec::new();
            line(&Method::GET, "/").write(
                LogFormat::Text,
                SystemTime::UNIX_EPOCH + Duration::from_micros(micros),
                &mut out,
            );
            assert!(
                out.starts_with(format!("{shown}  INFO").as_bytes()),
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    #[test]
    fn json_is_one_object_per_line_with_every_field() {
        let out = written(&line(&Method::GET, "/a"), LogFormat::Json);
        assert!(out.ends_with("}\n") && out.matches('\n').count() == 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let expected = serde_json::json!({
            "timestamp": "2026-12-02T12:00:00.123456Z", "level": "INFO", "message": "request",
            "client": "2001:db8::1", "method": "GET", "path": "/a", "version": "HTTP/1.1",
            "status": 200, "bytes": 1234, "listener": "main", "duration_ms": 1.0,
            "outcome": "complete", "target": "access",
        });
        assert_eq!(v, expected);
    }

    #[test]
    fn json_escapes_what_a_path_or_method_may_hold() {
        let method = Method::from_bytes(b"X\"Y").unwrap_or(Method::GET);
        let out = written(&line(&method, "/a\"b\\c"), LogFormat::Json);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["path"], "/a\"b\\c");
        assert_eq!(v["method"], method.as_str());
    }
}
