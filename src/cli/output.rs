//! How client commands print: aligned tables for people, the API's JSON with `--json`.
//!
//! Answers go to stdout; notes about what happened ("node node-do removed") go to stderr, so
//! `TOKEN=$(stackdns node add …)` captures the token alone.

use std::io::Write;

use serde::Serialize;

use super::{CliError, LookupArgs};
use crate::api::types::{NodeList, StackResponse};
use crate::dns::lookup::Lookup;
use crate::model::Port;
use crate::placement::Verdict;

pub struct Output {
    pub json: bool,
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn emit(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

fn json(value: &impl Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Usage(e.to_string()))?;
    emit(&format!("{text}\n"));
    Ok(())
}

/// Columns padded to their widest cell, two spaces apart, no trailing blanks.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w.saturating_sub(cell.chars().count())));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn or_dash(text: String) -> String {
    if text.is_empty() { "-".to_owned() } else { text }
}

/// `80->80/tcp`, as `docker ps` shows a published port.
fn ports(ports: &[Port]) -> String {
    let shown: Vec<String> = ports
        .iter()
        .map(|p| match p.host_port {
            Some(host) => format!("{host}->{}/{}", p.container_port, p.protocol.as_str()),
            None => format!("{}/{}", p.container_port, p.protocol.as_str()),
        })
        .collect();
    or_dash(shown.join(","))
}

fn verdict(v: &Verdict) -> String {
    let counts = |containers: u32, of_service: u32| {
        let plural = if containers == 1 { "" } else { "s" };
        format!("{containers} container{plural}, {of_service} of this service")
    };
    match v {
        Verdict::Chosen {
            containers,
            of_service,
        } => format!("chosen ({})", counts(*containers, *of_service)),
        Verdict::Fits {
            containers,
            of_service,
        } => format!("fits ({})", counts(*containers, *of_service)),
        Verdict::Refused { reason } => format!("refused: {reason}"),
        Verdict::Stranded => "stranded: no live node can take it".to_owned(),
    }
}

impl Output {
    /// A secret shown once: alone on stdout, the note on stderr.
    pub fn token(&self, answer: &impl Serialize, token: &str, text: &str) -> Result<(), CliError> {
        if self.json {
            return json(answer);
        }
        note(text);
        emit(&format!("{token}\n"));
        Ok(())
    }

    /// An answer with nothing to show but what happened.
    pub fn note(&self, answer: &impl Serialize, text: &str) -> Result<(), CliError> {
        if self.json {
            return json(answer);
        }
        note(text);
        Ok(())
    }

    pub fn nodes(&self, list: &NodeList) -> Result<(), CliError> {
        if self.json {
            return json(list);
        }
        let rows: Vec<Vec<String>> = list
            .nodes
            .iter()
            .map(|n| {
                let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                vec![
                    n.name.clone(),
                    n.address.clone(),
                    n.state.clone(),
                    format!("{:.1}s ago", n.last_heartbeat_seconds_ago),
                    n.containers_running.to_string(),
                    or_dash(n.tags.join(",")),
                    or_dash(labels.join(",")),
                    n.fqdn.clone(),
                ]
            })
            .collect();
        let headers = [
            "NAME",
            "ADDRESS",
            "STATE",
            "HEARTBEAT",
            "CONTAINERS",
            "TAGS",
            "LABELS",
            "DNS",
        ];
        emit(&table(&headers, &rows));
        Ok(())
    }

    pub fn stack_names(&self, answer: &impl Serialize, names: &[(String, String)]) -> Result<(), CliError> {
        if self.json {
            return json(answer);
        }
        let rows: Vec<Vec<String>> = names.iter().map(|(u, s)| vec![u.clone(), s.clone()]).collect();
        emit(&table(&["USER", "STACK"], &rows));
        Ok(())
    }

    /// `stack ps`: services with their DNS names, then every container.
    pub fn stack(&self, answer: &StackResponse) -> Result<(), CliError> {
        if self.json {
            return json(answer);
        }
        emit(&stack_tables(answer));
        Ok(())
    }

    /// `stack up` and `service scale`: what changed (or, for a dry run, each node's verdict),
    /// then the stack.
    pub fn stack_change(&self, answer: &StackResponse) -> Result<(), CliError> {
        if self.json {
            return json(answer);
        }
        let name = format!("{}/{}", answer.stack.user, answer.stack.stack);
        let mut text = String::new();
        if answer.dry_run {
            note(&format!("dry run for stack {name}: nothing was changed"));
        } else if let Some(changes) = &answer.changes {
            let parts: Vec<String> = [
                ("added", &changes.added),
                ("removed", &changes.removed),
                ("moved", &changes.moved),
                ("redeployed", &changes.redeployed),
            ]
            .iter()
            .filter(|(_, list)| !list.is_empty())
            .map(|(what, list)| {
                // `web-1.quickstart-ruby.honeniq` is `web-1` within the stack named above.
                let suffix = format!(".{}.{}", answer.stack.stack, answer.stack.user);
                let short: Vec<&str> = list
                    .iter()
                    .map(|n| n.strip_suffix(&suffix).unwrap_or(n))
                    .collect();
                format!("{what} {}", short.join(" "))
            })
            .collect();
            let what = if parts.is_empty() {
                "no change".to_owned()
            } else {
                parts.join("; ")
            };
            note(&format!("stack {name}: {what} (serial {})", answer.serial));
        }
        text.push_str(&stack_tables(answer));
        if let Some(verdicts) = &answer.verdicts {
            let rows: Vec<Vec<String>> = verdicts
                .iter()
                .map(|v| {
                    vec![
                        v.container.name.to_string(),
                        v.node.to_string(),
                        verdict(&v.verdict),
                    ]
                })
                .collect();
            text.push('\n');
            text.push_str(&table(&["CONTAINER", "NODE", "VERDICT"], &rows));
        }
        emit(&text);
        Ok(())
    }

    pub fn lookup(&self, args: &LookupArgs, answer: &Lookup) -> Result<(), CliError> {
        if self.json {
            #[derive(Serialize)]
            struct View<'a> {
                name: &'a str,
                rtype: &'a str,
                rcode: &'a str,
                authoritative: bool,
                over_tcp: bool,
                answers: &'a [String],
                authority: &'a [String],
                additional: &'a [String],
            }
            return json(&View {
                name: &args.name,
                rtype: &args.rtype,
                rcode: &answer.rcode,
                authoritative: answer.authoritative,
                over_tcp: answer.over_tcp,
                answers: &answer.answers,
                authority: &answer.authority,
                additional: &answer.additional,
            });
        }
        let mut text = String::new();
        for line in answer.answers.iter().chain(&answer.additional) {
            text.push_str(line);
            text.push('\n');
        }
        emit(&text);
        Ok(())
    }
}

fn stack_tables(answer: &StackResponse) -> String {
    let s = &answer.stack;
    let services: Vec<Vec<String>> = s
        .services
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.image.clone(),
                v.target_num_containers.to_string(),
                v.assigned.to_string(),
                v.running.to_string(),
                v.endpoint.clone(),
                or_dash(v.srv.join(",")),
            ]
        })
        .collect();
    let containers: Vec<Vec<String>> = s
        .containers
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.service.clone(),
                c.node.clone(),
                c.state.clone(),
                ports(&c.ports),
                c.endpoint.clone(),
                c.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut text = table(
        &["SERVICE", "IMAGE", "TARGET", "ASSIGNED", "RUNNING", "DNS", "SRV"],
        &services,
    );
    text.push('\n');
    text.push_str(&table(
        &["CONTAINER", "SERVICE", "NODE", "STATE", "PORTS", "DNS", "DETAIL"],
        &containers,
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_trim() {
        let rows = vec![
            vec!["web-1".to_owned(), "node-do".to_owned(), String::new()],
            vec!["redis-10".to_owned(), "n".to_owned(), "x".to_owned()],
        ];
        assert_eq!(
            table(&["NAME", "NODE", "D"], &rows),
            "NAME      NODE     D\nweb-1     node-do\nredis-10  n        x\n"
        );
    }
}
