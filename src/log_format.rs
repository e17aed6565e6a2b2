//! The text log's field formatter and clock: the same lines as `tracing-subscriber`'s own
//! (`2026-12-04T18:56:23.456079Z  INFO inferd::request: request request_id=… status=200 …`),
//! written with fewer steps.
//!
//! Why: a one-row request's log line has sixteen fields, and the subscriber's default visitor
//! wraps every name and value in a styling and formatting layer even when no colours are
//! written; with its calendar arithmetic for each timestamp, that was about 6% of the server's
//! CPU per request. Here integers go through `itoa`, plain strings are quoted without escaping
//! when nothing needs escaping, and the date and time to the second are formatted once a second
//! per thread. Values keep their `Debug` forms (a string quoted, a float as `{:?}` writes it),
//! so the lines are byte for byte what the default formatter writes.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// Formats an event's or a span's fields as `message name=value name="text"`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fields;

impl<'writer> FormatFields<'writer> for Fields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Visitor { writer, first: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    /// Writes the separator and `name=`, then the value through `value`; a `message` is written
    /// bare, and fields the `log` bridge adds (`log.target`, …) are left out, as the default
    /// formatter does.
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if name.starts_with("log.") {
            return;
        }
        self.result = (|| {
            if !self.first {
                self.writer.write_char(' ')?;
            }
            self.first = false;
            if name != "message" {
                let name = name.strip_prefix("r#").unwrap_or(name);
                if self.writer.has_ansi_escapes() {
                    // Italic name, dimmed `=`, as the default formatter paints them.
                    write!(self.writer, "\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m")?;
                } else {
                    self.writer.write_str(name)?;
                    self.writer.write_char('=')?;
                }
            }
            value(&mut self.writer)
        })();
    }

    /// A message, with the terminal control characters the default formatter escapes escaped.
    fn message(&mut self, field: &Field, message: &dyn fmt::Debug, text: Option<&str>) {
        let sanitize = self.writer.sanitizes_ansi_escapes();
        self.field(field, |writer| match text {
            Some(text) if !sanitize || !text.chars().any(is_escaped) => writer.write_str(text),
            _ => write_escaped(writer, format_args!("{message:?}"), sanitize),
        });
    }
}

/// The characters the default formatter escapes in messages: C0 controls a terminal acts on
/// (escape, bell, backspace, form feed), delete, and the C1 controls.
fn is_escaped(c: char) -> bool {
    matches!(c, '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}')
}

/// Writes through to `W`, escaping what [`is_escaped`] names.
struct Escaping<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for c in text.chars() {
            match c {
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' => write!(self.0, "\\x{:02x}", c as u32)?,
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

impl Visit for Visitor<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |writer| writer.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |writer| writer.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |writer| writer.write_str(if value { "true" } else { "false" }));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            return self.message(field, &format_args!("{value}"), Some(value));
        }
        self.field(field, |writer| {
            // `Debug` quotes and escapes; plain ASCII needs only the quotes.
            if value.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\') {
                writer.write_char('"')?;
                writer.write_str(value)?;
                writer.write_char('"')
            } else {
                write!(writer, "{value:?}")
            }
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let sanitize = self.writer.sanitizes_ansi_escapes();
        let name = field.name();
        self.field(field, |writer| {
            write_escaped(writer, format_args!("{value}"), sanitize)?;
            let Some(source) = value.source() else { return Ok(()) };
            let ansi = writer.has_ansi_escapes();
            if ansi {
                write!(writer, " \x1b[3m{name}\x1b[0m\x1b[3m.sources\x1b[0m\x1b[2m=\x1b[0m[")?;
            } else {
                write!(writer, " {name}.sources=[")?;
            }
            let mut next = Some(source);
            let mut first = true;
            while let Some(error) = next {
                if !first {
                    writer.write_str(", ")?;
                }
                first = false;
                write_escaped(writer, format_args!("{error}"), sanitize)?;
                next = error.source();
            }
            writer.write_char(']')
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            return self.message(field, value, None);
        }
        self.field(field, |writer| write!(writer, "{value:?}"));
    }
}

fn write_escaped(writer: &mut Writer<'_>, text: fmt::Arguments<'_>, sanitize: bool) -> fmt::Result {
    if sanitize { write!(Escaping(writer), "{text}") } else { writer.write_fmt(text) }
}

/// The UTC time as `2026-12-04T18:56:23.456079Z`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Clock;

thread_local! {
    /// The second last formatted on this thread, and its text up to the seconds.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for Clock {
    fn format_time(&self, writer: &mut Writer<'_>) -> fmt::Result {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let seconds = since_epoch.as_secs();
        SECOND.with_borrow_mut(|(second, text)| {
            if *second != seconds {
                *second = seconds;
                text.clear();
                write_date_time(text, seconds)?;
            }
            writer.write_str(text)
        })?;
        let micros = since_epoch.subsec_micros();
        write!(writer, ".{micros:06}Z")
    }
}

/// Writes `seconds` since the Unix epoch as `YYYY-MM-DDTHH:MM:SS` (UTC, proleptic Gregorian).
fn write_date_time(out: &mut String, seconds: u64) -> fmt::Result {
    let (year, month, day) = inferd_core::calendar::civil_from_days((seconds / 86_400) as i64);
    let of_day = seconds % 86_400;
    write!(out, "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", of_day / 3_600, of_day / 60 % 60, of_day % 60)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    fn events() {
        let id = "7c37c0b8-c49d";
        let method = "POST";
        tracing::info!(
            target: "inferd::request",
            request_id = %id,
            caller = "anonymous",
            method = %method,
            quoted = "say \"hi\"\n",
            unicode = "naïve",
            status = 200_u16,
            delta = -3_i64,
            duration_ms = 0.006,
            tiny = 1e-7,
            whole = 2.0,
            batch_size = Some(1_usize),
            none = None::<usize>,
            ok = true,
            r#type = "text",
            "request"
        );
        tracing::warn!(model = "m", "the {} failed: {}", "model", "reason");
        tracing::error!("no fields");
        tracing::info!("control \x1b[31m characters {} escaped", "\u{85}\x07");
        tracing::info!(text = "control \x1b and \u{85} in a value", "plain");
        let io = std::io::Error::other("disk full");
        let error = std::io::Error::other(Wrapped(io));
        tracing::warn!(error = &error as &(dyn std::error::Error + 'static), "write failed");
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "cannot write the log")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn lines(fields: impl for<'w> FormatFields<'w> + Send + Sync + 'static, ansi: bool) -> String {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(ansi)
            .without_time()
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, events);
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn lines_are_the_default_formatters_own() {
        for ansi in [true, false] {
            let ours = lines(Fields, ansi);
            let default = lines(tracing_subscriber::fmt::format::DefaultFields::new(), ansi);
            assert_eq!(ours, default, "ansi: {ansi}");
        }
        let ours = lines(Fields, false);
        assert!(ours.contains("\\x1b[31m"), "{ours}");
        assert!(ours.contains(r#"request request_id=7c37c0b8-c49d caller="anonymous" method=POST"#), "{ours}");
        assert!(ours.contains("duration_ms=0.006 tiny=1e-7 whole=2.0 batch_size=1 ok=true type=\"text\""), "{ours}");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_to_the_microsecond() {
        let mut text = String::new();
        write_date_time(&mut text, 0).unwrap();
        assert_eq!(text, "1970-01-01T00:00:00");
        text.clear();
        // 2024-02-29T23:59:59Z, a leap day.
        write_date_time(&mut text, 1_709_251_199).unwrap();
        assert_eq!(text, "2024-02-29T23:59:59");
        text.clear();
        write_date_time(&mut text, 4_102_444_800).unwrap();
        assert_eq!(text, "2100-01-01T00:00:00");

        let mut ours = String::new();
        Clock.format_time(&mut Writer::new(&mut ours)).unwrap();
        let mut default = String::new();
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut default)).unwrap();
        assert_eq!(ours.len(), "2026-12-04T18:56:23.456079Z".len(), "{ours}");
        // The same second, unless the clock ticked over between the two calls.
        assert!(ours[..16] == default[..16], "{ours} against {default}");
    }
}
