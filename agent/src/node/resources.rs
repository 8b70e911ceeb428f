//! The agent's own resources and attributes: Mesos's `--resources` and `--attributes` strings
//! parsed into protobufs, and the machine's cpus and memory detected when `--resources` does not
//! name them (pure but for the detection).
//!
//! `--resources` is Mesos's text form: `name(role):value;...` where a value is a scalar
//! (`cpus:2.5`), ranges (`ports:[31000-32000, 33000-33010]`) or a set (`zones:{a,b}`); the role
//! defaults to `*`. `--attributes` is `name:value;...` where a value is a scalar, ranges, or
//! text.

use mesoblk_proto::mesos::v1::{value, Attribute, Resource};
pub use mesoblk_proto::resource::scalar;
use thiserror::Error;

/// The ports Mesos's agent offers when `--resources` names none.
pub const DEFAULT_PORTS: (u64, u64) = (31000, 32000);
/// Memory Mesos's agent keeps for the system when detecting (1 GiB, or half on small machines).
const RESERVED_MEM_MB: f64 = 1024.0;

/// A `--resources` or `--attributes` string that does not parse.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{what} entry {entry:?}: {reason}")]
pub struct ParseError {
    /// `resource` or `attribute`.
    pub what: &'static str,
    /// The offending `name:value`.
    pub entry: String,
    /// What is wrong with it.
    pub reason: String,
}

fn error(what: &'static str, entry: &str, reason: impl Into<String>) -> ParseError {
    ParseError {
        what,
        entry: entry.to_owned(),
        reason: reason.into(),
    }
}

/// Splits `a:1;b:2` into `("a", "1")` pairs, skipping empty entries.
fn entries<'a>(
    text: &'a str,
    what: &'static str,
) -> impl Iterator<Item = Result<(String, String), ParseError>> + 'a {
    text.split(';')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(move |entry| {
            let (name, value) = entry
                .split_once(':')
                .ok_or_else(|| error(what, entry, "expected name:value"))?;
            let (name, value) = (name.trim(), value.trim());
            if name.is_empty() || value.is_empty() {
                return Err(error(what, entry, "empty name or value"));
            }
            Ok((name.to_owned(), value.to_owned()))
        })
}

fn parse_scalar(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|x| x.is_finite())
}

fn parse_ranges(text: &str) -> Option<value::Ranges> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    let mut range = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (begin, end) = part.split_once('-')?;
        let (begin, end) = (begin.trim().parse().ok()?, end.trim().parse().ok()?);
        if begin > end {
            return None;
        }
        range.push(value::Range { begin, end });
    }
    Some(value::Ranges { range })
}

fn parse_set(text: &str) -> Option<value::Set> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let item = inner
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(str::to_owned)
        .collect();
    Some(value::Set { item })
}

/// Parses `--resources` (see the module docs).
pub fn parse_resources(text: &str) -> Result<Vec<Resource>, ParseError> {
    let what = "resource";
    let mut out = Vec::new();
    for entry in entries(text, what) {
        let (name, text_value) = entry?;
        let shown = format!("{name}:{text_value}");
        let (name, role) = match name.split_once('(') {
            Some((name, rest)) => {
                let role = rest
                    .strip_suffix(')')
                    .filter(|r| !r.is_empty())
                    .ok_or_else(|| error(what, &shown, "a role is written name(role)"))?;
                (name.to_owned(), Some(role.to_owned()))
            }
            None => (name, None),
        };
        let mut resource = Resource {
            name,
            ..Default::default()
        };
        if let Some(ranges) = parse_ranges(&text_value) {
            resource.r#type = value::Type::Ranges as i32;
            resource.ranges = Some(ranges);
        } else if let Some(set) = parse_set(&text_value) {
            resource.r#type = value::Type::Set as i32;
            resource.set = Some(set);
        } else if let Some(x) = parse_scalar(&text_value).filter(|x| *x >= 0.0) {
            resource.r#type = value::Type::Scalar as i32;
            resource.scalar = Some(value::Scalar { value: x });
        } else {
            return Err(error(
                what,
                &shown,
                "not a non-negative number, [ranges] or {set}",
            ));
        }
        if let Some(role) = role.filter(|r| r != "*") {
            resource.reservations = vec![mesoblk_proto::mesos::v1::resource::ReservationInfo {
                r#type: Some(
                    mesoblk_proto::mesos::v1::resource::reservation_info::Type::Static as i32,
                ),
                role: Some(role),
                ..Default::default()
            }];
        }
        out.push(resource);
    }
    Ok(out)
}

/// Parses `--attributes` (see the module docs).
pub fn parse_attributes(text: &str) -> Result<Vec<Attribute>, ParseError> {
    entries(text, "attribute")
        .map(|entry| {
            let (name, text_value) = entry?;
            let mut attribute = Attribute {
                name,
                ..Default::default()
            };
            if let Some(ranges) = parse_ranges(&text_value) {
                attribute.r#type = value::Type::Ranges as i32;
                attribute.ranges = Some(ranges);
            } else if let Some(x) = parse_scalar(&text_value) {
                attribute.r#type = value::Type::Scalar as i32;
                attribute.scalar = Some(value::Scalar { value: x });
            } else {
                attribute.r#type = value::Type::Text as i32;
                attribute.text = Some(value::Text { value: text_value });
            }
            Ok(attribute)
        })
        .collect()
}

/// What the machine has: its cpus, and its memory less what Mesos's agent keeps for the
/// system (1 GiB, or half when that leaves less than 1 GiB).
pub fn detected() -> (f64, f64) {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let total_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| (kb / 1024.0).floor());
    let mem = if total_mb >= 2.0 * RESERVED_MEM_MB {
        total_mb - RESERVED_MEM_MB
    } else {
        (total_mb / 2.0).floor()
    };
    (cpus, mem)
}

/// `--resources` completed as Mesos's agent does: cpus, mem and ports are detected (ports:
/// [`DEFAULT_PORTS`]) unless the string names them.
pub fn with_defaults(mut given: Vec<Resource>) -> Vec<Resource> {
    let has = |name: &str| given.iter().any(|r| r.name == name);
    let (cpus, mem) = detected();
    let mut defaults = Vec::new();
    if !has("cpus") {
        defaults.push(scalar("cpus", cpus));
    }
    if !has("mem") {
        defaults.push(scalar("mem", mem));
    }
    if !has("ports") {
        defaults.push(Resource {
            name: "ports".into(),
            r#type: value::Type::Ranges as i32,
            ranges: Some(value::Ranges {
                range: vec![value::Range {
                    begin: DEFAULT_PORTS.0,
                    end: DEFAULT_PORTS.1,
                }],
            }),
            ..Default::default()
        });
    }
    defaults.append(&mut given);
    defaults
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scalars_ranges_sets_and_roles() {
        let r = parse_resources(
            "cpus:2;mem:1024.5; ports:[31000-32000, 40000-40010];z:{a,b};disk(ops):10",
        )
        .unwrap();
        assert_eq!(r.len(), 5);
        assert_eq!(r[0].scalar.as_ref().unwrap().value, 2.0);
        assert_eq!(r[1].scalar.as_ref().unwrap().value, 1024.5);
        let ranges = &r[2].ranges.as_ref().unwrap().range;
        assert_eq!((ranges[1].begin, ranges[1].end), (40000, 40010));
        assert_eq!(r[3].set.as_ref().unwrap().item, ["a", "b"]);
        assert_eq!(r[4].reservations[0].role.as_deref(), Some("ops"));
    }

    #[test]
    fn refuses_malformed_resources() {
        for bad in [
            "cpus",
            "cpus:",
            "cpus:-1",
            "cpus:abc",
            "ports:[5-1]",
            "x(:1",
        ] {
            assert!(parse_resources(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn attributes_are_scalars_ranges_or_text() {
        let a = parse_attributes("rack:r1;level:3;span:[1-2]").unwrap();
        assert_eq!(a[0].text.as_ref().unwrap().value, "r1");
        assert_eq!(a[1].scalar.as_ref().unwrap().value, 3.0);
        assert_eq!(a[2].ranges.as_ref().unwrap().range.len(), 1);
        assert!(parse_attributes("novalue").is_err());
    }

    #[test]
    fn defaults_fill_only_what_is_missing() {
        let r = with_defaults(parse_resources("cpus:3").unwrap());
        let names: Vec<&str> = r.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["mem", "ports", "cpus"]);
        assert_eq!(r[2].scalar.as_ref().unwrap().value, 3.0);
        assert!(r[0].scalar.as_ref().unwrap().value > 0.0);
    }
}
