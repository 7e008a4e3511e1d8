//! The optional configuration file of `stackdns serve` (`--config`, TOML): one key per flag,
//! named like it (`ttl = 5`, `dns = "127.0.0.1:1053"`, `allow-transfer = ["10.0.0.0/8"]`;
//! `allow_transfer` is the same key). Precedence: flags, then environment variables, then the
//! file, then the defaults.
//!
//! The file is turned into flags placed before the command line's, leaving out every key whose
//! flag is on the command line or whose environment variable is set; clap then parses the lot
//! as usual, so a value from the file is checked exactly like the same flag typed by hand. An
//! unknown key is an error naming it.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::CommandFactory;

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("config file {path}: cannot read it: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: not valid TOML: {reason}")]
    Syntax { path: PathBuf, reason: String },
    #[error(
        "config file {path}: unknown key {key:?} (the keys are the flags of `stackdns serve --help`, without the dashes)"
    )]
    UnknownKey { path: PathBuf, key: String },
    #[error("config file {path}: {key} = {value}: {reason}")]
    Value {
        path: PathBuf,
        key: String,
        value: String,
        reason: String,
    },
}

/// A flag of `serve` that a file key may set.
struct Flag {
    long: String,
    env: Option<OsString>,
    /// Takes a value (otherwise it is a switch like `--help`, not settable from a file).
    takes_value: bool,
    /// May be given more than once (a list in the file).
    repeats: bool,
}

/// `args` (the process's, program name first) with the configuration file's settings added as
/// flags, if `serve` was asked for with `--config PATH` (or `STACKDNS_CONFIG`). `env` looks up
/// environment variables (the process's in `main`).
pub fn expand(
    args: Vec<OsString>,
    env: impl Fn(&OsStr) -> Option<OsString>,
) -> Result<Vec<OsString>, ConfigFileError> {
    // `serve` is the subcommand only in its place: `stackdns node add serve …` names a node.
    let serve_at = 1;
    if args.get(serve_at).is_none_or(|a| a != "serve") {
        return Ok(args);
    }
    let given = &args[serve_at + 1..];
    let Some(path) = config_path(given).or_else(|| env(OsStr::new(CONFIG_ENV)).map(PathBuf::from)) else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
        path: path.clone(),
        source,
    })?;
    let file_flags = flags_from(&path, &text, given, &env)?;
    let mut out = args[..=serve_at].to_vec();
    out.extend(file_flags);
    out.extend(given.iter().cloned());
    Ok(out)
}

/// The environment variable of `--config`.
const CONFIG_ENV: &str = "STACKDNS_CONFIG";

/// `--config PATH` or `--config=PATH` among the command line's arguments after `serve`.
fn config_path(given: &[OsString]) -> Option<PathBuf> {
    let mut args = given.iter();
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            return Some(PathBuf::from(path));
        }
    }
    None
}

/// The flags `text` sets, leaving out those `given` or set in the environment.
fn flags_from(
    path: &Path,
    text: &str,
    given: &[OsString],
    env: &impl Fn(&OsStr) -> Option<OsString>,
) -> Result<Vec<OsString>, ConfigFileError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigFileError::Syntax {
            path: path.to_owned(),
            reason: e.to_string().trim().replace('\n', " "),
        })?;
    let flags = serve_flags();
    let mut out = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let flag = flags
            .iter()
            .find(|f| f.long == long && f.takes_value && f.long != "config")
            .ok_or_else(|| ConfigFileError::UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
            })?;
        let on_command_line = given.iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")))
        });
        let in_environment = flag.env.as_deref().is_some_and(|name| env(name).is_some());
        let bad = |reason: &str| ConfigFileError::Value {
            path: path.to_owned(),
            key: key.clone(),
            value: value.to_string(),
            reason: reason.to_owned(),
        };
        let values = match value {
            toml::Value::Array(items) if flag.repeats => items
                .iter()
                .map(|v| scalar(v).ok_or_else(|| bad("a list holds strings or numbers")))
                .collect::<Result<Vec<_>, _>>()?,
            toml::Value::Array(_) => return Err(bad("this flag takes one value, not a list")),
            other => vec![scalar(other).ok_or_else(|| bad("expected a string, a number or true/false"))?],
        };
        if on_command_line || in_environment {
            continue;
        }
        for value in values {
            if let Some(reason) = refused(&long, &value) {
                return Err(bad(&reason));
            }
            out.push(OsString::from(format!("--{long}={value}")));
        }
    }
    Ok(out)
}

/// Why clap refuses `value` for `--long`, if it does: checked here, one flag at a time, so the
/// error names the file and the key instead of a flag the user never typed.
fn refused(long: &str, value: &str) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let flag = format!("--{long}");
    let e = super::Cli::command()
        .try_get_matches_from(["stackdns", "serve", &format!("{flag}={value}")])
        .err()?;
    if !matches!(e.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) {
        return None;
    }
    // Another flag's environment variable may be what is wrong: that is not this key's error.
    match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) if arg == &flag || arg.starts_with(&format!("{flag} ")) => {}
        _ => return None,
    }
    let text = e.to_string();
    let first = text.lines().next()?.trim();
    Some(first.strip_prefix("error: ").unwrap_or(first).to_owned())
}

/// A value as it would be typed after its flag; `true`/`false` as `on`/`off`.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(x) => Some(x.to_string()),
        toml::Value::Boolean(b) => Some(if *b { "on" } else { "off" }.to_owned()),
        _ => None,
    }
}

/// Every flag of `stackdns serve`, read from its clap definition, so the file cannot drift.
fn serve_flags() -> Vec<Flag> {
    let command = super::Cli::command();
    let Some(serve) = command.find_subcommand("serve") else {
        return Vec::new();
    };
    serve
        .get_arguments()
        .filter_map(|arg| {
            Some(Flag {
                long: arg.get_long()?.to_owned(),
                env: arg.get_env().map(OsStr::to_owned),
                takes_value: arg.get_action().takes_values(),
                repeats: matches!(arg.get_action(), clap::ArgAction::Append),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn with_file(text: &str, argv: &[&str], env: &[(&str, &str)]) -> Result<Vec<String>, ConfigFileError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stackdns.toml");
        std::fs::write(&path, text).expect("write");
        let mut full = vec!["stackdns", "serve", "--config"];
        let shown = path.display().to_string();
        full.push(&shown);
        full.extend(argv);
        let env: Vec<(OsString, OsString)> = env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        let out = expand(args(&full), |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })?;
        Ok(out.iter().map(|a| a.to_string_lossy().into_owned()).collect())
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let text = "ttl = 7\ndns = \"127.0.0.1:5300\"\nallow_transfer = [\"10.0.0.0/8\", \"192.0.2.1/32\"]\ncookies = false\n";
        let out = with_file(text, &[], &[]).expect("expands");
        for flag in [
            "--ttl=7",
            "--dns=127.0.0.1:5300",
            "--allow-transfer=10.0.0.0/8",
            "--allow-transfer=192.0.2.1/32",
            "--cookies=off",
        ] {
            assert!(out.contains(&flag.to_owned()), "{flag} in {out:?}");
        }
        let out = with_file(text, &["--ttl", "9"], &[("STACKDNS_DNS", "127.0.0.1:1")]).expect("expands");
        assert!(
            !out.iter().any(|a| a.starts_with("--ttl=")),
            "the flag wins: {out:?}"
        );
        assert!(
            !out.iter().any(|a| a.starts_with("--dns=")),
            "the environment wins: {out:?}"
        );
        // The result parses like any command line.
        let out = with_file(text, &["--ttl=9"], &[]).expect("expands");
        let cli = <super::super::Cli as clap::Parser>::try_parse_from(&out).expect("parses");
        let super::super::Command::Serve(serve) = cli.command else {
            panic!("serve")
        };
        assert_eq!(serve.ttl, 9);
        assert_eq!(serve.dns, "127.0.0.1:5300".parse().expect("addr"));
        assert_eq!(serve.allow_transfer.len(), 2);
        assert!(!serve.cookies);
    }

    #[test]
    fn an_unknown_key_or_a_bad_value_is_named() {
        let err = with_file("ttl = 5\nttl_seconds = 5\n", &[], &[]).expect_err("unknown");
        assert!(err.to_string().contains("unknown key \"ttl_seconds\""), "{err}");
        let err = with_file("ttl = [1, 2]\n", &[], &[]).expect_err("a list");
        assert!(
            err.to_string()
                .contains("ttl = [1, 2]: this flag takes one value, not a list"),
            "{err}"
        );
        let err = with_file("ttl = \n", &[], &[]).expect_err("syntax");
        assert!(err.to_string().contains("not valid TOML"), "{err}");
        let err = with_file("[dns]\nport = 1\n", &[], &[]).expect_err("a table");
        assert!(
            err.to_string()
                .contains("expected a string, a number or true/false"),
            "{err}"
        );
        let err = with_file("config = \"x\"\n", &[], &[]).expect_err("config in config");
        assert!(err.to_string().contains("unknown key \"config\""), "{err}");
        // A value clap refuses is reported with the file and the key, before anything is parsed.
        let err = with_file("ttl = \"soon\"\n", &[], &[]).expect_err("not a number");
        let text = err.to_string();
        assert!(
            text.contains("stackdns.toml: ttl = \"soon\": invalid value 'soon'"),
            "{text}"
        );
        let err =
            with_file("allow-transfer = [\"10.0.0.0/8\", \"nonsense\"]\n", &[], &[]).expect_err("a bad item");
        assert!(
            err.to_string()
                .contains("allow-transfer = [\"10.0.0.0/8\", \"nonsense\"]: invalid value 'nonsense'"),
            "{err}"
        );
        // A bad value the command line or the environment overrides does not matter.
        assert!(with_file("ttl = \"soon\"\n", &["--ttl", "3"], &[]).is_ok());
    }

    #[test]
    fn without_a_config_nothing_changes_and_the_sample_is_valid() {
        let plain = args(&["stackdns", "serve", "--ttl", "3"]);
        assert_eq!(expand(plain.clone(), |_| None).expect("no file"), plain);
        // STACKDNS_CONFIG applies to the server only, not to a node that happens to be called serve.
        let node = args(&["stackdns", "node", "add", "serve", "10.0.0.1"]);
        let env = |name: &OsStr| (name == CONFIG_ENV).then(|| OsString::from("/nonexistent.toml"));
        assert_eq!(expand(node.clone(), env).expect("not serve"), node);
        assert!(
            expand(args(&["stackdns", "serve"]), env).is_err(),
            "serve reads it"
        );
        let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/stackdns.toml");
        let out =
            expand(args(&["stackdns", "serve", "--config", sample]), |_| None).expect("the sample expands");
        <super::super::Cli as clap::Parser>::try_parse_from(&out).expect("the sample's values parse");
    }
}
