//! Query strings: one parser for every endpoint, with errors in the API's shape.
//!
//! Each endpoint declares its parameters as a struct with `deny_unknown_fields`; a parameter
//! that is not there is `unknown_parameter`, a value that does not parse is `invalid_value`,
//! both naming the parameter.

use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer};

use super::error::ApiError;

/// Parses `raw` (the query string without `?`) into `T`.
pub fn parse<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, ApiError> {
    let pairs = form_urlencoded::parse(raw.unwrap_or("").as_bytes());
    serde_path_to_error::deserialize(serde_urlencoded::Deserializer::new(pairs)).map_err(|e| {
        let message = e.inner().to_string();
        if message.starts_with("unknown field") {
            return ApiError::bad_request("unknown_parameter", format!("query string: {message}"));
        }
        let value = |name: &str| {
            form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let name = e.path().to_string();
        ApiError::bad_request(
            "invalid_value",
            format!("query parameter {name}={:?}: {message}", value(&name)),
        )
    })
}

/// The query of an endpoint that takes no parameters: any parameter is `unknown_parameter`,
/// named, so that `DELETE …?dry_run=true` is refused rather than carried out for real.
pub struct NoQuery;

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, ApiError> {
        let Some(query) = parts.uri.query().filter(|q| !q.is_empty()) else {
            return Ok(NoQuery);
        };
        let name = form_urlencoded::parse(query.as_bytes())
            .next()
            .map(|(k, _)| k.into_owned())
            .unwrap_or_default();
        Err(ApiError::bad_request(
            "unknown_parameter",
            format!("query string: unknown parameter {name:?}; this endpoint takes none"),
        ))
    }
}

/// A flag: `true`/`1`, `false`/`0`, or the bare name (`?dry_run`) for true.
pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let text = String::deserialize(d)?;
    match text.as_str() {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(de::Error::custom(format!("{other:?} is not true, false, 1 or 0"))),
    }
}

/// A duration like `30s`, `5m` or `500ms` (a bare number is seconds), capped at `max`.
pub fn duration(text: &str, max: Duration) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 30s, 5m or 500ms");
    let (number, unit) = match text.strip_suffix("ms") {
        Some(n) => (n, 0.001),
        None => match text.strip_suffix('m') {
            Some(n) => (n, 60.0),
            None => (text.strip_suffix('s').unwrap_or(text), 1.0),
        },
    };
    let seconds: f64 = number.parse().map_err(|_| bad())?;
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(bad());
    }
    Ok(Duration::try_from_secs_f64(seconds * unit)
        .unwrap_or(max)
        .min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Params {
        #[serde(default)]
        generation: Option<u64>,
        #[serde(default, deserialize_with = "flag")]
        dry_run: bool,
    }

    #[test]
    fn parameters_parse_or_name_what_is_wrong() {
        let ok = |q| parse::<Params>(Some(q)).expect("parses");
        assert_eq!(
            ok(""),
            Params {
                generation: None,
                dry_run: false
            }
        );
        assert_eq!(
            ok("generation=7&dry_run"),
            Params {
                generation: Some(7),
                dry_run: true
            }
        );
        assert_eq!(
            ok("dry_run=0"),
            Params {
                generation: None,
                dry_run: false
            }
        );
        let err = |q| parse::<Params>(Some(q)).expect_err("refused");
        assert_eq!(err("colour=blue").code, "unknown_parameter");
        assert!(err("colour=blue").message.contains("colour"));
        assert_eq!(err("generation=-1").code, "invalid_value");
        assert!(
            err("generation=x").message.contains("generation=\"x\""),
            "{}",
            err("generation=x").message
        );
        assert_eq!(err("dry_run=maybe").code, "invalid_value");
    }

    #[test]
    fn durations() {
        let max = Duration::from_secs(300);
        assert_eq!(duration("30s", max), Ok(Duration::from_secs(30)));
        assert_eq!(duration("500ms", max), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2m", max), Ok(Duration::from_secs(120)));
        assert_eq!(duration("7", max), Ok(Duration::from_secs(7)));
        assert_eq!(duration("1e20", max), Ok(max), "capped, no overflow");
        assert_eq!(duration("1e308m", max), Ok(max));
        for bad in ["-1s", "soon", "NaN", ""] {
            assert!(duration(bad, max).is_err(), "{bad}");
        }
    }
}
