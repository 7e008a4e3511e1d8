//! The command-line client (design §9): the same binary speaks the API.
//!
//! ```text
//! stackdns node add|ls|rm|token     stackdns stack up|ls|ps|rm     stackdns service scale
//! stackdns user token|revoke        stackdns lookup NAME [TYPE]
//! ```
//!
//! Arguments are checked here, requests go through [`crate::client`] with the API's own types,
//! and `output.rs` renders answers as tables (or JSON with `--json`). Exit codes, which scripts
//! may rely on: 0 done; 1 the server refused (its code and message are printed), or a lookup
//! found no records; 2 bad usage or a local file that cannot be read; 3 the API or DNS could not
//! be reached, or answered something unexpected (5xx included).

mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::api::types::NodeRequest;
use crate::client::{Client, ClientError};
use crate::dns::lookup::{self, LookupError};

/// Where the API is and who we are, shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// API address(es), comma-separated: tried in turn until one answers.
    #[arg(
        long,
        env = "STACKDNS_API",
        default_value = "http://127.0.0.1:8053",
        global = true
    )]
    pub api: String,
    /// Bearer token (admin, user or node). Else --token-file, else ./stackdns-data/admin.token.
    #[arg(long, env = "STACKDNS_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, env = "STACKDNS_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Register a node (or update it); prints the node's token when it is new.
    Add {
        name: String,
        /// The node's IPv4 or IPv6 address: `<node>.node.<zone>` answers it.
        #[arg(long)]
        address: String,
        /// A label KEY=VALUE (`region`, `provider` spread high_availability services).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// A deploy tag; services with `tags` only run on nodes carrying all of them.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// A platform node's user (admin only; repeatable): only their containers run here.
        /// Without it a platform node serves every user. A user's token registers a node that
        /// serves that user alone.
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        /// Memory placement may hand out on this node, MiB (with --cpus).
        #[arg(long, requires = "cpus")]
        memory_mb: Option<u64>,
        #[arg(long, requires = "memory_mb")]
        cpus: Option<f64>,
    },
    /// List nodes with their lease state.
    Ls,
    /// Remove a node; its containers leave DNS.
    Rm { name: String },
    /// Give a node a new token (the old one stops working); prints it.
    Token { name: String },
}

#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// Declare a stack from a Stackfile; placement decides where each container runs.
    Up {
        /// USER/STACK
        stack: String,
        /// The Stackfile (YAML or JSON); `-` reads standard input.
        #[arg(short = 'f', long = "file", default_value = "stackfile.yml")]
        file: PathBuf,
        /// Show the plan and every node's verdict without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// List stacks: all you may see, or USER's.
    Ls { user: Option<String> },
    /// A stack's services and containers: node, state, ports, DNS names.
    Ps {
        /// USER/STACK
        stack: String,
    },
    /// Remove a stack and all its containers.
    Rm {
        /// USER/STACK
        stack: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Set how many containers a service runs.
    Scale {
        /// USER/STACK/SERVICE
        service: String,
        count: u32,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Issue a token that acts on USER's stacks only; prints it.
    Token { user: String },
    /// Revoke every token of USER.
    Revoke { user: String },
}

/// `stackdns lookup NAME [TYPE]`.
#[derive(Debug, Clone, Args)]
pub struct LookupArgs {
    /// A name; one not ending in the zone gets the zone appended (`web.stack.user.svc`).
    pub name: String,
    #[arg(default_value = "A")]
    pub rtype: String,
    /// The DNS server to ask (default: the one the API names).
    #[arg(long)]
    pub dns: Option<std::net::SocketAddr>,
}

/// One client command, with its connection.
#[derive(Debug)]
pub enum Request {
    Node(NodeCommand),
    Stack(StackCommand),
    Service(ServiceCommand),
    User(UserCommand),
    Lookup(LookupArgs),
}

/// Why a command failed, and the exit code that says so.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Nothing went wrong, but the answer is negative (a lookup with no records).
    #[error("{0}")]
    Negative(String),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Client(e) if e.status().is_some_and(|s| s < 500) => 1,
            CliError::Negative(_) => 1,
            CliError::Usage(_) | CliError::Read { .. } => 2,
            CliError::Client(_) | CliError::Lookup(_) => 3,
        })
    }
}

/// Runs one client command, printing its answer on stdout.
pub async fn run(connection: Connection, request: Request) -> Result<(), CliError> {
    let client = Client::new(&connection.api, token(&connection)?)?;
    let out = output::Output {
        json: connection.json,
    };
    match request {
        Request::Node(command) => node(&client, &out, command).await,
        Request::Stack(command) => stack(&client, &out, command).await,
        Request::Service(ServiceCommand::Scale {
            service,
            count,
            dry_run,
        }) => {
            let parts = split::<3>(&service, "USER/STACK/SERVICE")?;
            let answer = client
                .scale((parts[0], parts[1], parts[2]), count, dry_run)
                .await?;
            out.stack_change(&answer)
        }
        Request::User(UserCommand::Token { user }) => {
            let answer = client.issue_user_token(label("user", &user)?).await?;
            out.token(
                &answer,
                &answer.token,
                &format!("token for user {user} issued; it is shown once"),
            )
        }
        Request::User(UserCommand::Revoke { user }) => {
            let answer = client.revoke_user_tokens(label("user", &user)?).await?;
            let note = format!("{} token(s) of user {user} revoked", answer.revoked);
            out.note(&answer, &note)
        }
        Request::Lookup(args) => lookup(&client, &out, args).await,
    }
}

/// The token: `--token`, else `--token-file`, else the admin token a default `serve` wrote.
fn token(connection: &Connection) -> Result<String, CliError> {
    if let Some(token) = &connection.token {
        return Ok(token.trim().to_owned());
    }
    let (path, given) = match &connection.token_file {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from("stackdns-data/admin.token"), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
        Ok(_) => Err(CliError::Usage(format!(
            "the token file {} is empty",
            path.display()
        ))),
        Err(source) if given => Err(CliError::Read { path, source }),
        Err(_) => Err(CliError::Usage(
            "no token: pass --token or --token-file, or set STACKDNS_TOKEN".to_owned(),
        )),
    }
}

/// Splits `USER/STACK[/SERVICE]` into its `N` parts, each a DNS label.
fn split<'a, const N: usize>(text: &'a str, form: &str) -> Result<[&'a str; N], CliError> {
    let parts: Vec<&str> = text.split('/').collect();
    let parts = <[&str; N]>::try_from(parts.as_slice())
        .ok()
        .filter(|p| p.iter().all(|s| !s.is_empty()))
        .ok_or_else(|| CliError::Usage(format!("{text:?} is not {form}")))?;
    for part in parts {
        label("name", part)?;
    }
    Ok(parts)
}

/// A name the API takes as a path segment: checked here, so a name like `a/../b` or `n#x`
/// can never become another URL.
fn label<'a>(what: &'static str, text: &'a str) -> Result<&'a str, CliError> {
    crate::model::Label::parse(what, text)
        .map(|_| text)
        .map_err(|e| CliError::Usage(e.to_string()))
}

async fn node(client: &Client, out: &output::Output, command: NodeCommand) -> Result<(), CliError> {
    match command {
        NodeCommand::Add {
            name,
            address,
            labels,
            tags,
            tenants,
            memory_mb,
            cpus,
        } => {
            let labels = labels
                .iter()
                .map(|l| {
                    l.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .ok_or_else(|| CliError::Usage(format!("--label {l:?} is not KEY=VALUE")))
                })
                .collect::<Result<_, _>>()?;
            let capacity = memory_mb
                .zip(cpus)
                .map(|(memory_mb, cpus)| crate::model::Capacity { memory_mb, cpus });
            let request = NodeRequest {
                address,
                labels,
                tags,
                capacity,
                tenants: (!tenants.is_empty()).then_some(tenants),
            };
            let answer = client.put_node(label("node", &name)?, &request).await?;
            match &answer.token {
                Some(token) => out.token(
                    &answer,
                    token,
                    &format!(
                        "node {name} registered at {}; its token is shown once",
                        answer.node.address
                    ),
                ),
                None => out.note(&answer, &format!("node {name} updated (it keeps its token)")),
            }
        }
        NodeCommand::Ls => out.nodes(&client.nodes().await?),
        NodeCommand::Rm { name } => {
            let answer = client.delete_node(label("node", &name)?).await?;
            out.note(&answer, &format!("node {name} removed"))
        }
        NodeCommand::Token { name } => {
            let answer = client.rotate_node_token(label("node", &name)?).await?;
            let token = answer.token.clone().unwrap_or_default();
            out.token(
                &answer,
                &token,
                &format!("new token for node {name}; the old one no longer works"),
            )
        }
    }
}

async fn stack(client: &Client, out: &output::Output, command: StackCommand) -> Result<(), CliError> {
    match command {
        StackCommand::Up { stack, file, dry_run } => {
            let [user, name] = split::<2>(&stack, "USER/STACK")?;
            let body = if file.as_os_str() == "-" {
                let mut text = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut text).map_err(|source| {
                    CliError::Read {
                        path: file.clone(),
                        source,
                    }
                })?;
                text
            } else {
                std::fs::read(&file).map_err(|source| CliError::Read {
                    path: file.clone(),
                    source,
                })?
            };
            let json = file.extension().is_some_and(|e| e == "json");
            let content_type = if json {
                "application/json"
            } else {
                "application/yaml"
            };
            let answer = client
                .apply_stack((user, name), &body, content_type, dry_run)
                .await?;
            out.stack_change(&answer)
        }
        StackCommand::Ls { user: Some(user) } => {
            let answer = client.stacks_of(label("user", &user)?).await?;
            let names: Vec<(String, String)> =
                answer.stacks.iter().map(|s| (user.clone(), s.clone())).collect();
            out.stack_names(&answer, &names)
        }
        StackCommand::Ls { user: None } => {
            let answer = client.all_stacks().await?;
            let names: Vec<(String, String)> = answer
                .stacks
                .iter()
                .map(|s| (s.user.clone(), s.stack.clone()))
                .collect();
            out.stack_names(&answer, &names)
        }
        StackCommand::Ps { stack } => {
            let [user, name] = split::<2>(&stack, "USER/STACK")?;
            out.stack(&client.stack(user, name).await?)
        }
        StackCommand::Rm { stack } => {
            let [user, name] = split::<2>(&stack, "USER/STACK")?;
            let answer = client.delete_stack(user, name).await?;
            out.note(&answer, &format!("stack {user}/{name} removed"))
        }
    }
}

async fn lookup(client: &Client, out: &output::Output, args: LookupArgs) -> Result<(), CliError> {
    let needs_zone = !args.name.ends_with('.');
    let (server, name) = match (args.dns, needs_zone) {
        (Some(server), false) => (server, args.name.clone()),
        (dns, _) => {
            let info = client.info().await?;
            let server = match dns {
                Some(server) => server,
                None => info.dns.parse().map_err(|_| {
                    CliError::Usage(format!(
                        "the API names DNS at {:?}; pass --dns ADDR:PORT",
                        info.dns
                    ))
                })?,
            };
            (server, qualify(&args.name, &info.zone))
        }
    };
    let rtype = args.rtype.clone();
    let answer =
        tokio::task::spawn_blocking(move || lookup::lookup(server, &name, &rtype, Duration::from_secs(3)))
            .await
            .map_err(|e| CliError::Usage(format!("the lookup did not finish: {e}")))??;
    out.lookup(&args, &answer)?;
    match (answer.rcode.as_str(), answer.answers.is_empty()) {
        ("NOERROR", false) => Ok(()),
        ("NOERROR", true) => Err(CliError::Negative(format!(
            "{} has no {} records",
            args.name, args.rtype
        ))),
        (rcode, _) => Err(CliError::Negative(format!("{}: {rcode}", args.name))),
    }
}

/// `name` made absolute within `zone` (`cluster.test.`) unless it already is.
fn qualify(name: &str, zone: &str) -> String {
    let bare = name.trim_end_matches('.').to_ascii_lowercase();
    let apex = zone.trim_end_matches('.').to_ascii_lowercase();
    if name.ends_with('.') || bare == apex || bare.ends_with(&format!(".{apex}")) {
        format!("{}.", name.trim_end_matches('.'))
    } else {
        format!("{}.{zone}", name.trim_end_matches('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_qualified_within_the_zone() {
        let zone = "cluster.test.";
        assert_eq!(qualify("web.s.u.svc", zone), "web.s.u.svc.cluster.test.");
        assert_eq!(
            qualify("web.s.u.svc.cluster.test", zone),
            "web.s.u.svc.cluster.test."
        );
        assert_eq!(qualify("other.example.", zone), "other.example.");
        assert_eq!(qualify("cluster.test", zone), "cluster.test.");
    }

    #[test]
    fn paths_split_into_their_parts() {
        assert_eq!(split::<2>("honeniq/qs", "U/S").ok(), Some(["honeniq", "qs"]));
        assert!(split::<2>("honeniq", "U/S").is_err());
        assert!(split::<2>("a//", "U/S").is_err());
        assert!(split::<2>("a/..", "U/S").is_err(), "no path tricks");
        assert!(split::<2>("a/b#c", "U/S").is_err());
        assert_eq!(split::<3>("a/b/c", "U/S/V").ok(), Some(["a", "b", "c"]));
    }
}
