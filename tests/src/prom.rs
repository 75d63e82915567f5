//! A strict parser of the Prometheus / `OpenMetrics` text format, for the metrics tests: every
//! line must be a `# HELP`, `# TYPE`, `# UNIT` or `# EOF` comment or a sample
//! `name{label="value",...} number`; names and label names must be valid; every sample must
//! belong to a family declared by `# TYPE` before it (a counter's samples end in `_total` or
//! `_created`); no series twice; `# EOF` last. Returns the samples by series.
//!
//! [`scrape`] fetches and parses a server's `GET /metrics`; [`endpoint_in_log`] finds where a
//! server binary's endpoint listens (`--metrics-listen 127.0.0.1:0`) in its log.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A series: metric name and sorted labels.
pub type Series = (String, Vec<(String, String)>);

/// Parsed samples, by series.
pub type Samples = BTreeMap<Series, f64>;

/// `GET /metrics` from `addr`: the answer must be a 200 in the `OpenMetrics` text format and
/// parse (see [`parse`]); the error says what was wrong.
pub fn scrape(addr: SocketAddr) -> Result<Samples, String> {
    let fail = |e: std::io::Error| format!("GET http://{addr}/metrics: {e}");
    let mut s = TcpStream::connect(addr).map_err(fail)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(fail)?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .map_err(fail)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(fail)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: no end of the header: {answer:?}"))?;
    if !head.starts_with("HTTP/1.1 200") || !head.contains("application/openmetrics-text") {
        return Err(format!("{addr}: not a 200 with OpenMetrics text: {head}"));
    }
    parse(body).map_err(|e| format!("{addr}: {e}\n{body}"))
}

/// Scrapes until `f` holds or 5 s pass, and returns the last scrape (the event loop publishes
/// its counters at the end of each turn, so they may lag the traffic a little).
///
/// # Panics
/// If a scrape fails.
pub fn scrape_until(addr: SocketAddr, f: impl Fn(&Samples) -> bool) -> Samples {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = scrape(addr).unwrap_or_else(|e| panic!("{e}"));
        if f(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where the metrics endpoint listens, from a server's log (`metrics endpoint listening: ...
/// addr=IP:PORT`).
pub fn endpoint_in_log(log: &str) -> Option<SocketAddr> {
    let line = log
        .lines()
        .find(|l| l.contains("metrics endpoint listening"))?;
    line.split("addr=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Parses `text`, or says which line is wrong and why.
pub fn parse(text: &str) -> Result<BTreeMap<Series, f64>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = BTreeMap::new();
    let mut eof = false;
    for (n, line) in text.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if eof {
            return Err(at("text after # EOF"));
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match parts.next() {
                Some("EOF") => eof = true,
                Some("HELP" | "UNIT") => {
                    let name = parts.next().ok_or_else(|| at("no metric name"))?;
                    check_name(name).map_err(|e| at(&e))?;
                }
                Some("TYPE") => {
                    let name = parts.next().ok_or_else(|| at("no metric name"))?;
                    check_name(name).map_err(|e| at(&e))?;
                    let kind = parts.next().ok_or_else(|| at("no type"))?;
                    let known = [
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "unknown",
                        "untyped",
                        "info",
                        "stateset",
                        "gaugehistogram",
                    ];
                    if !known.contains(&kind) {
                        return Err(at("unknown type"));
                    }
                    if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(at("family declared twice"));
                    }
                }
                _ => return Err(at("unknown comment")),
            }
            continue;
        }
        let (series, value) = sample(line).map_err(|e| at(&e))?;
        let family =
            family_of(&series.0, &types).ok_or_else(|| at("sample of an undeclared family"))?;
        if types[&family] == "counter" {
            if !(series.0.ends_with("_total") || series.0.ends_with("_created")) {
                return Err(at("counter sample not named _total"));
            }
            if value < 0.0 {
                return Err(at("negative counter"));
            }
        }
        if samples.insert(series, value).is_some() {
            return Err(at("series given twice"));
        }
    }
    if !eof {
        return Err("no # EOF at the end".to_owned());
    }
    Ok(samples)
}

/// The value of `name` with exactly `labels` (order free), if present.
pub fn value(samples: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    samples.get(&(name.to_owned(), labels)).copied()
}

fn family_of(sample: &str, types: &HashMap<String, String>) -> Option<String> {
    if types.contains_key(sample) {
        return Some(sample.to_owned());
    }
    ["_total", "_created", "_bucket", "_count", "_sum"]
        .iter()
        .find_map(|suffix| {
            sample
                .strip_suffix(suffix)
                .filter(|f| types.contains_key(*f))
        })
        .map(str::to_owned)
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

fn sample(line: &str) -> Result<(Series, f64), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        while let Some(&(i, c)) = chars.peek() {
            if c == '}' {
                end = Some(i);
                break;
            }
            let start = i;
            while chars.peek().is_some_and(|&(_, c)| c != '=') {
                chars.next();
            }
            let eq = chars.next().ok_or("label without =")?.0;
            let key = &body[start..eq];
            check_name(key).map_err(|_| format!("bad label name {key:?}"))?;
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted".into());
            }
            let mut value = String::new();
            loop {
                match chars.next().ok_or("unterminated label value")?.1 {
                    '"' => break,
                    '\\' => match chars.next().ok_or("bad escape")?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    c => value.push(c),
                }
            }
            labels.push((key.to_owned(), value));
            if chars.peek().is_some_and(|&(_, c)| c == ',') {
                chars.next();
            }
        }
        let end = end.ok_or("no closing }")?;
        rest = &body[end + 1..];
    }
    let value_text = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value_text = value_text.split(' ').next().unwrap_or_default();
    let value: f64 = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    labels.sort();
    Ok(((name.to_owned(), labels), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_good_text_and_names_bad_lines() {
        let good = "# HELP a_total x.\n# TYPE a counter\na_total{k=\"v\\\"\"} 3\n# TYPE g gauge\ng 1.5\n# EOF\n";
        let s = parse(good).unwrap();
        assert_eq!(value(&s, "a_total", &[("k", "v\"")]), Some(3.0));
        assert!(
            parse("# TYPE a counter\na 1\n# EOF\n")
                .unwrap_err()
                .contains("_total")
        );
        assert!(parse("b 1\n# EOF\n").unwrap_err().contains("undeclared"));
        assert!(
            parse("# TYPE g gauge\ng x\n# EOF\n")
                .unwrap_err()
                .contains("bad value")
        );
        assert!(parse("# TYPE g gauge\ng 1\n").unwrap_err().contains("EOF"));
        assert!(
            parse("# TYPE g gauge\ng 1\ng 2\n# EOF\n")
                .unwrap_err()
                .contains("twice")
        );
    }
}
