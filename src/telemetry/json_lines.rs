//! JSON log lines: one object per event, in the shape of tracing-subscriber's
//! `json().flatten_event(true).with_current_span(true)` format:
//!
//! ```text
//! {"timestamp":"2026-12-01T07:06:32.468424Z","level":"INFO","target":"comments::http::middleware","message":"request","method":"GET",...,"span":{"name":"request","request_id":"..."}}
//! ```
//!
//! A layer of our own because the log line is on every request's path: tracing-subscriber's JSON
//! formatter (and json-subscriber, tried too) cost a quarter of all the instructions of a cached
//! GET (callgrind), building a serde map per line and re-checking UTF-8 on every write. Here a
//! line is appended to one reused buffer and handed to the writer in one `write_all`.
//!
//! `otel.*` fields are left out: they are instructions to tracing-opentelemetry (span name and
//! kind), not data.
//!
//! Lines logged while a request is handled (inside [`in_request`]) carry its `request_id`,
//! `trace_id` and `span_id`, from a task-local rather than a `tracing` span: a span per request
//! only for that cost 8% of the requests per second of a cached GET.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderValue;
use tokio::task::futures::TaskLocalFuture;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The request a task is handling, as its log lines name it.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub request_id: Option<HeaderValue>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// Runs `handling` with `context` attached to every line it logs (in this task). The context
/// comes back from the future's `take_value` once it is done.
pub fn in_request<F: Future>(
    context: RequestContext,
    handling: F,
) -> TaskLocalFuture<RequestContext, F> {
    REQUEST.scope(context, handling)
}

/// The layer; `make_writer` gets each finished line (newline included) in one `write_all`.
pub struct JsonLines<W> {
    make_writer: W,
}

impl<W> JsonLines<W> {
    pub fn new(make_writer: W) -> Self {
        Self { make_writer }
    }
}

/// A span's fields as (name, JSON value), kept in its extensions for the lines logged inside it.
/// A field recorded again replaces its value.
#[derive(Default)]
struct SpanFields(Vec<(&'static str, String)>);

impl Visit for SpanFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set(field, json_string(&format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, json_string(value));
    }
}

impl SpanFields {
    fn set(&mut self, field: &Field, json: String) {
        let name = field.name();
        if is_instruction(name) {
            return;
        }
        match self.0.iter_mut().find(|(known, _)| *known == name) {
            Some((_, value)) => *value = json,
            None => self.0.push((name, json)),
        }
    }
}

/// What each thread reuses from line to line.
#[derive(Default)]
struct Buffers {
    line: Vec<u8>,
    /// Where `Debug` and `Display` values are formatted before they are escaped into the line.
    text: String,
    second: Second,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::default();
}

/// A buffer grown past this by one huge line is replaced afterwards, so it does not pin memory.
const KEPT_CAPACITY: usize = 16 * 1024;

impl<S, W> Layer<S> for JsonLines<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = SpanFields::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if let Some(fields) = span.extensions_mut().get_mut::<SpanFields>() {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let write = |buffers: &mut Buffers| {
            buffers.line.clear();
            format_line(buffers, event, &ctx);
            let _ = self
                .make_writer
                .make_writer_for(event.metadata())
                .write_all(&buffers.line);
        };
        BUFFERS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buffers) => {
                write(&mut buffers);
                if buffers.line.capacity() > KEPT_CAPACITY
                    || buffers.text.capacity() > KEPT_CAPACITY
                {
                    *buffers = Buffers::default();
                }
            }
            // An event logged while formatting another (a Debug impl that logs): own buffers.
            Err(_) => write(&mut Buffers::default()),
        });
    }
}

fn format_line<S>(buffers: &mut Buffers, event: &Event<'_>, ctx: &Context<'_, S>)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let Buffers { line, text, second } = buffers;
    let meta = event.metadata();
    line.extend_from_slice(b"{\"timestamp\":\"");
    push_timestamp(line, second, SystemTime::now());
    line.extend_from_slice(b"\",\"level\":\"");
    line.extend_from_slice(meta.level().as_str().as_bytes());
    line.extend_from_slice(b"\",\"target\":");
    push_str(line, meta.target());
    event.record(&mut Members { line, text });
    let _ = REQUEST.try_with(|request| push_request(line, request));
    if let Some(span) = ctx.event_span(event) {
        line.extend_from_slice(b",\"span\":{\"name\":");
        push_str(line, span.name());
        if let Some(SpanFields(fields)) = span.extensions().get::<SpanFields>() {
            for (name, value) in fields {
                line.push(b',');
                push_str(line, name);
                line.push(b':');
                line.extend_from_slice(value.as_bytes());
            }
        }
        line.push(b'}');
    }
    line.extend_from_slice(b"}\n");
}

fn push_request(line: &mut Vec<u8>, request: &RequestContext) {
    let request_id = request.request_id.as_ref().and_then(|v| v.to_str().ok());
    let ids = [
        ("request_id", request_id),
        ("trace_id", request.trace_id.as_deref()),
        ("span_id", request.span_id.as_deref()),
    ];
    for (name, value) in ids {
        if let Some(value) = value {
            line.push(b',');
            push_str(line, name);
            line.push(b':');
            push_str(line, value);
        }
    }
}

/// Writes an event's fields as members of the line's object, each after a comma.
struct Members<'a> {
    line: &'a mut Vec<u8>,
    text: &'a mut String,
}

impl Members<'_> {
    fn key(&mut self, field: &Field) -> bool {
        if is_instruction(field.name()) {
            return false;
        }
        self.line.push(b',');
        push_str(self.line, field.name());
        self.line.push(b':');
        true
    }

    /// A value written with `fmt`, as a JSON string.
    fn formatted(&mut self, value: fmt::Arguments<'_>) {
        self.text.clear();
        let _ = self.text.write_fmt(value);
        push_str(self.line, self.text);
    }
}

impl Visit for Members<'_> {
    /// `message` (format arguments) and `%display` fields come out as their plain text.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            self.formatted(format_args!("{value:?}"));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            push_str(self.line, value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.key(field) {
            self.formatted(format_args!("{value}"));
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            if value.is_finite() {
                // zmij and itoa (below), not `write!`: the core::fmt machinery was a fifth of
                // the access line's instructions (callgrind), for three numbers.
                let mut digits = zmij::Buffer::new();
                self.line
                    .extend_from_slice(digits.format_finite(value).as_bytes());
            } else {
                self.line.extend_from_slice(b"null");
            }
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            self.line
                .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            self.line
                .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            let literal: &[u8] = if value { b"true" } else { b"false" };
            self.line.extend_from_slice(literal);
        }
    }
}

fn is_instruction(name: &str) -> bool {
    name.starts_with("otel.")
}

/// `value` as a JSON string, quoted and escaped. Most values (names, ids, routes) need no
/// escaping and are copied as they are; the others go through serde_json.
fn push_str(line: &mut Vec<u8>, value: &str) {
    if !needs_escape(value.as_bytes()) {
        line.reserve(value.len() + 2);
        line.push(b'"');
        line.extend_from_slice(value.as_bytes());
        line.push(b'"');
    } else {
        let _ = serde_json::to_writer(line, value);
    }
}

/// Whether a JSON string needs escapes: a control character, `"` or `\`. An access line has
/// about eleven strings, most of them short keys: those go through a table (3.5 instructions a
/// byte, unrolled by four; 5 in the tail), where the fold's scalar loop took 13 (objdump of the
/// release build). From 16 bytes on, the fold without early exit, which the compiler turns into
/// a vector loop (SSE compares).
fn needs_escape(bytes: &[u8]) -> bool {
    if bytes.len() < 16 {
        bytes
            .iter()
            .fold(false, |escapes, &byte| escapes | ESCAPED[usize::from(byte)])
    } else {
        bytes.iter().fold(false, |escapes, &byte| {
            escapes | (byte < 0x20) | (byte == b'"') | (byte == b'\\')
        })
    }
}

/// The bytes a JSON string cannot hold as they are.
const ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

fn json_string(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The second a timestamp falls in, formatted once (`2026-12-01T07:06:32`) and reused by every
/// line logged within it.
#[derive(Default)]
struct Second {
    unix: u64,
    text: String,
}

/// RFC 3339 in UTC with microseconds: `2026-12-01T07:06:32.468424Z`.
fn push_timestamp(out: &mut Vec<u8>, second: &mut Second, now: SystemTime) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let unix = since_epoch.as_secs();
    if second.text.is_empty() || second.unix != unix {
        second.unix = unix;
        second.text.clear();
        let (year, month, day) = civil_from_days(unix / 86_400);
        let seconds_of_day = unix % 86_400;
        let _ = write!(
            second.text,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            seconds_of_day / 3600,
            seconds_of_day / 60 % 60,
            seconds_of_day % 60
        );
    }
    out.extend_from_slice(second.text.as_bytes());
    // `.{:06}Z` by hand: this runs for every line, and core::fmt's padding path is slow.
    let mut fraction = *b".000000Z";
    let mut micros = since_epoch.subsec_micros();
    for digit in fraction[1..7].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out.extend_from_slice(&fraction);
}

/// (year, month, day) of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::telemetry::test_support::SharedBuffer;

    /// Runs `log` under a subscriber with only this layer; returns each line parsed.
    fn logged(log: impl FnOnce()) -> Vec<serde_json::Value> {
        let lines = SharedBuffer::default();
        let writer = lines.clone();
        let subscriber =
            tracing_subscriber::registry().with(JsonLines::new(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, log);
        let text = lines.text();
        assert!(text.ends_with('\n'), "{text:?}");
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    #[test]
    fn an_event_is_one_json_object_with_its_fields_flattened() {
        let lines = logged(|| {
            tracing::info!(
                method = "GET",
                status = 200u16,
                latency_ms = 0.25,
                negative = -3i64,
                ok = true,
                error = %"disk full",
                missing = tracing::field::Empty,
                "request"
            );
        });
        let [line] = &lines[..] else {
            panic!("{lines:?}")
        };
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], module_path!());
        assert_eq!(line["message"], "request");
        assert_eq!(line["method"], "GET");
        assert_eq!(line["status"], 200);
        assert_eq!(line["latency_ms"], 0.25);
        assert_eq!(line["negative"], -3);
        assert_eq!(line["ok"], true);
        assert_eq!(line["error"], "disk full");
        assert!(
            line.get("missing").is_none() && line.get("span").is_none(),
            "{line}"
        );
    }

    #[test]
    fn text_of_any_kind_stays_valid_json_and_comes_back_exactly() {
        let hostile =
            "quote \" backslash \\ newline \n tab \t nul \0 bell \x07 del \x7f é 🦀 \u{2028}";
        let lines = logged(|| {
            tracing::warn!(text = hostile, debug = ?hostile, "{hostile}");
            tracing::warn!(nan = f64::NAN, inf = f64::INFINITY, "not numbers");
        });
        assert_eq!(lines[0]["text"], hostile);
        assert_eq!(lines[0]["message"], hostile);
        assert_eq!(lines[0]["debug"], format!("{hostile:?}"));
        assert!(lines[1]["nan"].is_null() && lines[1]["inf"].is_null());
    }

    /// Strings under 16 bytes go through the table, longer ones through the fold: both must
    /// flag exactly the bytes JSON cannot hold as they are.
    #[test]
    fn the_short_and_the_long_escape_checks_agree_on_every_byte() {
        for byte in 0..=u8::MAX {
            let expected = byte < 0x20 || byte == b'"' || byte == b'\\';
            for len in [1, 15, 16, 40] {
                let mut bytes = vec![b'a'; len];
                bytes[len / 2] = byte;
                assert_eq!(
                    needs_escape(&bytes),
                    expected,
                    "byte {byte:#04x}, {len} bytes"
                );
            }
        }
    }

    /// The escape check runs in wide chunks: one character that needs escaping is found at any
    /// place, in the chunked part and in the tail.
    #[test]
    fn one_character_to_escape_is_found_anywhere_in_a_string() {
        for len in 1..100 {
            for at in 0..len {
                for special in ['"', '\\', '\n', '\u{1f}'] {
                    let mut text: String = "a".repeat(len);
                    text.replace_range(at..=at, &special.to_string());
                    let mut out = Vec::new();
                    push_str(&mut out, &text);
                    let back: String = serde_json::from_slice(&out)
                        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
                    assert_eq!(back, text);
                }
            }
        }
    }

    #[test]
    fn lines_inside_a_span_carry_its_latest_fields_once() {
        let lines = logged(|| {
            let span = tracing::info_span!(
                "request",
                otel.kind = "server",
                request_id = "r-1",
                trace_id = tracing::field::Empty
            );
            span.record("trace_id", "aaaa");
            span.record("trace_id", "bbbb");
            span.in_scope(|| tracing::error!("inside"));
        });
        let [line] = &lines[..] else {
            panic!("{lines:?}")
        };
        let span = line["span"].as_object().unwrap();
        assert_eq!(span["name"], "request");
        assert_eq!(span["request_id"], "r-1");
        assert_eq!(span["trace_id"], "bbbb");
        assert!(!span.contains_key("otel.kind"), "{line}");
        assert!(line.get("otel.kind").is_none());
    }

    #[test]
    fn lines_logged_while_a_request_is_handled_carry_its_ids() {
        let context = RequestContext {
            request_id: Some(HeaderValue::from_static("req-7")),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            span_id: None,
        };
        let lines = logged(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(async {
                let handled = in_request(context, async { tracing::warn!("inside") });
                tokio::pin!(handled);
                (&mut handled).await;
                assert_eq!(
                    handled.as_mut().take_value().unwrap().request_id.unwrap(),
                    "req-7"
                );
                tracing::warn!("after");
            });
        });
        assert_eq!(lines[0]["request_id"], "req-7");
        assert_eq!(lines[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(lines[0].get("span_id").is_none(), "{}", lines[0]);
        assert!(lines[1].get("request_id").is_none(), "{}", lines[1]);
    }

    #[test]
    fn numbers_come_out_as_json_numbers_that_read_back_exactly() {
        let floats = [
            0.0,
            -0.0,
            0.1 + 0.2,
            1e-7,
            123_456.789,
            1e300,
            -2.5e-300,
            f64::MAX,
        ];
        for value in floats {
            let lines = logged(|| tracing::info!(value, "float"));
            assert_eq!(lines[0]["value"].as_f64(), Some(value), "{}", lines[0]);
        }
        let lines = logged(|| tracing::info!(value = f64::NAN, "nan"));
        assert!(lines[0]["value"].is_null(), "{}", lines[0]);
        let lines = logged(|| tracing::info!(big = u64::MAX, small = i64::MIN, zero = 0u8, "ints"));
        assert_eq!(lines[0]["big"].as_u64(), Some(u64::MAX));
        assert_eq!(lines[0]["small"].as_i64(), Some(i64::MIN));
        assert_eq!(lines[0]["zero"].as_u64(), Some(0));
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let format = |unix_micros: u64| {
            let mut out = Vec::new();
            let at = UNIX_EPOCH + Duration::from_micros(unix_micros);
            push_timestamp(&mut out, &mut Second::default(), at);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(format(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(format(1_795_000_000_123_456), "2026-11-18T11:06:40.123456Z");
        assert_eq!(format(4_107_542_399_999_999), "2100-02-28T23:59:59.999999Z");
        // The date and time of day against the time crate, over a spread of instants (leap
        // years, month and year ends) up to 2120.
        let rfc3339 = time::format_description::well_known::Rfc3339;
        for step in 0..4_000u64 {
            let micros = step * 1_234_567_890_123 + 987_654;
            let nanos = i128::from(micros) * 1000;
            let expected = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
                .unwrap()
                .format(&rfc3339)
                .unwrap();
            let ours = format(micros);
            assert_eq!(ours[..19], expected[..19], "{micros}");
            assert_eq!(ours[19..], format!(".{:06}Z", micros % 1_000_000));
        }
    }

    #[test]
    fn the_formatted_second_is_reused_and_renewed() {
        let mut second = Second::default();
        let mut out = Vec::new();
        let at = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        push_timestamp(&mut out, &mut second, at);
        push_timestamp(&mut out, &mut second, at + Duration::from_micros(5));
        push_timestamp(&mut out, &mut second, at + Duration::from_secs(1));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-11-18T11:06:40.000000Z2026-11-18T11:06:40.000005Z2026-11-18T11:06:41.000000Z"
        );
    }
}
