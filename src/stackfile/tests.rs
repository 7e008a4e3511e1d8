//! Stackfiles in, structs or errors out: the seed Stackfiles of issue 3, every accepted form,
//! and every error kind with its message and line.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::*;
use crate::model::Protocol;

/// The README's quick-start Stackfile, then the same stack grown (one copy for every test).
const SEED_FIRST: &str = include_str!("../../tests/data/quickstart/stackfile.yml");

const SEED_SECOND: &str = include_str!("../../tests/data/quickstart/stackfile-scaled.yml");

fn label(name: &str) -> Label {
    Label::parse("test", name).expect("valid label")
}

fn port(container_port: u16, host_port: Option<u16>, protocol: Protocol) -> PortSpec {
    PortSpec {
        container_port,
        host_port,
        protocol,
    }
}

fn yaml(text: &str) -> Stackfile {
    parse(text.as_bytes(), Some("application/yaml")).unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
}

/// The one service of a single-service Stackfile.
fn only(text: &str) -> ServiceDef {
    let mut stackfile = yaml(text);
    assert_eq!(stackfile.services.len(), 1);
    stackfile
        .services
        .pop_first()
        .map(|(_, def)| def)
        .expect("one service")
}

fn error(text: &str) -> StackfileError {
    match parse(text.as_bytes(), None) {
        Ok(parsed) => panic!("accepted: {parsed:?}\n---\n{text}"),
        Err(e) => e,
    }
}

fn redis() -> ServiceDef {
    let mut redis = ServiceDef::new("tutum/redis:latest");
    redis.environment.insert("REDIS_PASS".into(), "password".into());
    redis
}

fn web(ports: Vec<PortSpec>) -> ServiceDef {
    let mut web = ServiceDef::new("honeniq/quickstart-ruby:latest");
    web.links = vec![label("redis")];
    web.ports = ports;
    web
}

#[test]
fn first_seed_stackfile() {
    let expected = BTreeMap::from([
        (label("redis"), redis()),
        (label("web"), web(vec![port(80, Some(80), Protocol::Tcp)])),
    ]);
    assert_eq!(yaml(SEED_FIRST).services, expected);
}

#[test]
fn second_seed_stackfile() {
    let mut haproxy = ServiceDef::new("tutum/haproxy:latest");
    haproxy.links = vec![label("web")];
    haproxy.ports = vec![port(80, Some(80), Protocol::Tcp)];
    let mut web = web(vec![port(80, None, Protocol::Tcp)]);
    web.target_num_containers = 3;
    let expected = BTreeMap::from([
        (label("haproxy"), haproxy),
        (label("redis"), redis()),
        (label("web"), web),
    ]);
    assert_eq!(yaml(SEED_SECOND).services, expected);
}

#[test]
fn json_reads_the_same_as_yaml() {
    let json = r#"{
        "redis": {"image": "tutum/redis:latest", "environment": ["REDIS_PASS=password"]},
        "web": {"image": "honeniq/quickstart-ruby:latest", "links": ["redis"], "ports": ["80:80"]}
    }"#;
    let from_yaml = yaml(SEED_FIRST);
    assert_eq!(
        parse(json.as_bytes(), Some("application/json")).expect("json"),
        from_yaml
    );
    // Sniffed without a content type, and with a type that says nothing about the format.
    assert_eq!(parse(json.as_bytes(), None).expect("sniffed"), from_yaml);
    assert_eq!(
        parse(json.as_bytes(), Some("text/plain")).expect("sniffed"),
        from_yaml
    );
    // Declared YAML: JSON is YAML too.
    assert_eq!(
        parse(json.as_bytes(), Some("application/yaml")).expect("as yaml"),
        from_yaml
    );
    // A byte-order mark does not change the format.
    let with_bom = format!("\u{feff}{json}");
    assert_eq!(parse(with_bom.as_bytes(), None).expect("bom"), from_yaml);
    // …and is still sniffed as JSON: the error is serde_json's.
    let broken = format!("\u{feff}{json},");
    assert_eq!(
        parse(broken.as_bytes(), None).expect_err("trailing").code(),
        "invalid_json"
    );
}

#[test]
fn declared_json_is_read_as_json() {
    let e = parse(SEED_FIRST.as_bytes(), Some("application/json; charset=utf-8")).expect_err("yaml as json");
    assert_eq!(e.code(), "invalid_json");
    assert_eq!(e.line(), Some(1));
}

#[test]
fn port_forms() {
    let def = only(
        "svc:
  image: x
  ports:
    - '80'
    - '8080:80/udp'
    - '8053:53/udp'
    - '53/tcp'
    - 443
    - 9000:9000
",
    );
    let expected = vec![
        port(80, None, Protocol::Tcp),
        port(80, Some(8080), Protocol::Udp),
        port(53, Some(8053), Protocol::Udp),
        port(53, None, Protocol::Tcp),
        port(443, None, Protocol::Tcp),
        port(9000, Some(9000), Protocol::Tcp),
    ];
    assert_eq!(def.ports, expected);
    assert_eq!(
        only("svc: {image: x, ports: '53/udp'}").ports,
        [port(53, None, Protocol::Udp)]
    );
    assert_eq!(
        only("svc: {image: x, ports: 80}").ports,
        [port(80, None, Protocol::Tcp)]
    );
    assert_eq!(only("svc: {image: x, ports: []}").ports, []);
    assert_eq!(only("svc: {image: x, ports: }").ports, []);
}

#[test]
fn environment_list_and_map_forms() {
    let list = only("svc:\n  image: x\n  environment:\n    - A=1\n    - B=x=y\n    - EMPTY=\n    - BARE\n");
    let map = only("svc:\n  image: x\n  environment:\n    A: 1\n    B: x=y\n    EMPTY: ''\n    BARE:\n");
    let expected: BTreeMap<String, String> = [("A", "1"), ("B", "x=y"), ("EMPTY", ""), ("BARE", "")]
        .map(|(k, v)| (k.into(), v.into()))
        .into();
    assert_eq!(list.environment, expected);
    assert_eq!(map.environment, expected);
}

#[test]
fn environment_values_become_strings_as_written() {
    let def = only(
        "svc:
  image: x
  environment:
    INT: 42
    FLOAT: 1.5
    BOOL: true
    YES: yes
    NO: no
    OCTAL: 0755
    UNDERSCORE: 1_000
    QUOTED: '007'
",
    );
    let env = |k: &str| def.environment.get(k).map(String::as_str);
    assert_eq!(env("INT"), Some("42"));
    assert_eq!(env("FLOAT"), Some("1.5"));
    assert_eq!(env("BOOL"), Some("true"));
    // YAML 1.2: `yes`/`no` are strings, not booleans, and numbers keep their spelling.
    assert_eq!(env("YES"), Some("yes"));
    assert_eq!(env("NO"), Some("no"));
    assert_eq!(env("OCTAL"), Some("0755"));
    assert_eq!(env("UNDERSCORE"), Some("1_000"));
    assert_eq!(env("QUOTED"), Some("007"));
    assert_eq!(
        only("svc: {image: x, environment: {INF: .inf}}").environment["INF"],
        ".inf"
    );
}

#[test]
fn mem_limit_forms() {
    let mem = |value: &str| only(&format!("svc: {{image: x, mem_limit: {value}}}")).mem_limit_mb;
    assert_eq!(mem("512m"), Some(512));
    assert_eq!(mem("1g"), Some(1024));
    assert_eq!(mem("256M"), Some(256));
    assert_eq!(mem("268435456"), Some(256));
    assert_eq!(mem("'268435456'"), Some(256));
    assert_eq!(mem("100k"), Some(1));
    assert_eq!(mem("1.5g"), Some(1536));
    assert_eq!(mem("0"), None);
    let e = error("svc: {image: x, mem_limit: 12x}");
    assert_eq!(e.code(), "invalid_value");
    assert!(
        e.message()
            .starts_with("line 1: service \"svc\", mem_limit: \"12x\" is not a memory size"),
        "{e}"
    );
    assert_eq!(error("svc: {image: x, mem_limit: -5}").code(), "invalid_value");
    assert_eq!(error("svc: {image: x, mem_limit: 1.5}").code(), "invalid_value");
}

#[test]
fn every_honoured_key() {
    let def = only(
        "Svc:
  image: registry.example:5000/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
  target_num_containers: 0
  deployment_strategy: high_availability
  tags: [Production, eu-west, production]
  cpu_shares: 512
  command: bundle exec thin -p \"30 00\"
  entrypoint: ['/bin/entry', 1]
  restart: on-failure:5
  autorestart: ON_FAILURE
",
    );
    assert_eq!(
        def.image,
        "registry.example:5000/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    assert_eq!(def.target_num_containers, 0);
    assert_eq!(def.deployment_strategy, Strategy::HighAvailability);
    assert_eq!(def.tags, [label("production"), label("eu-west")]);
    assert_eq!(def.cpu_shares, Some(512));
    assert_eq!(
        def.command,
        Some(
            ["bundle", "exec", "thin", "-p", "30 00"]
                .map(String::from)
                .to_vec()
        )
    );
    assert_eq!(
        def.entrypoint,
        Some(vec!["/bin/entry".to_owned(), "1".to_owned()])
    );
    assert_eq!(def.restart, Restart::OnFailure { max_retries: Some(5) });
    assert_eq!(
        yaml("Svc: {image: x}").services.keys().next(),
        Some(&label("svc"))
    );
}

#[test]
fn defaults() {
    let def = only("svc: {image: x}");
    assert_eq!(def, ServiceDef::new("x"));
    assert_eq!(def.target_num_containers, 1);
    assert_eq!(def.deployment_strategy, Strategy::EmptiestNode);
    assert_eq!(def.restart, Restart::No);
    assert_eq!(def.command, None);
}

#[test]
fn empty_entrypoint_overrides_with_nothing() {
    assert_eq!(only("svc: {image: x, entrypoint: ''}").entrypoint, Some(vec![]));
    assert_eq!(only("svc: {image: x, command: []}").command, Some(vec![]));
}

#[test]
fn restart_and_autorestart() {
    assert_eq!(only("svc: {image: x, restart: always}").restart, Restart::Always);
    assert_eq!(only("svc: {image: x, restart: no}").restart, Restart::No);
    assert_eq!(
        only("svc: {image: x, autorestart: ALWAYS}").restart,
        Restart::Always
    );
    assert_eq!(
        only("svc: {image: x, autorestart: OFF, restart: 'no'}").restart,
        Restart::No
    );
    let json = parse(br#"{"svc": {"image": "x", "restart": false}}"#, None).expect("json false");
    assert_eq!(json.services[&label("svc")].restart, Restart::No);

    let e = error("svc:\n  image: x\n  restart: always\n  autorestart: OFF\n");
    assert_eq!(e.code(), "invalid_value");
    assert_eq!(
        e.message(),
        "line 4: service \"svc\", autorestart: \"OFF\" contradicts restart \"always\"; give only one of \
         the two keys"
    );
}

#[test]
fn links_keep_the_service_of_tutum_aliases() {
    let stackfile = yaml("db: {image: x}\nweb: {image: y, links: ['db:database', db, DB]}\n");
    assert_eq!(stackfile.services[&label("web")].links, [label("db")]);
    let e = error("db: {image: x}\nweb: {image: y, links: ['amqp.staging:amqp']}\n");
    assert_eq!(e.code(), "unknown_link");
    assert!(e.message().contains("another stack"), "{e}");
    assert_eq!(error("web: {image: y, links: [web]}").code(), "invalid_value");
    assert_eq!(
        error("db: {image: x}\nweb: {image: y, links: ['db:']}").code(),
        "invalid_value"
    );
}

#[test]
fn ignored_keys_are_checked_and_runtime_ones_kept() {
    let def = only(
        "svc:
  image: x
  autodestroy: on-success
  autoredeploy: true
  sequential_deployment: false
  roles: [global]
  hostname: web
  privileged: false
  volumes: ['/data', 'etc-data:/etc:ro']
  labels: {com.example.team: finance}
  expose: [80, '90/udp']
  memswap_limit: 1g
  net: bridge
",
    );
    let kept: Vec<&str> = def.runtime_options.keys().map(String::as_str).collect();
    assert_eq!(
        kept,
        [
            "expose",
            "hostname",
            "labels",
            "memswap_limit",
            "net",
            "privileged",
            "volumes"
        ]
    );
    assert_eq!(
        def.runtime_options["volumes"],
        serde_json::json!(["/data", "etc-data:/etc:ro"])
    );
    assert_eq!(def.runtime_options["expose"], serde_json::json!([80, "90/udp"]));

    let e = error("svc: {image: x, autoredeploy: sometimes}");
    assert_eq!(e.code(), "invalid_value");
    assert_eq!(
        e.message(),
        "line 1: service \"svc\", autoredeploy: expected true or false, found a string"
    );
    let e = error("svc: {image: x, net: host}");
    assert_eq!(e.code(), "invalid_value");
    assert!(
        e.message()
            .contains("\"host\" is not supported; use \"bridge\"; host networking"),
        "{e}"
    );
    assert_eq!(
        error("svc: {image: x, autodestroy: later}").code(),
        "invalid_value"
    );
}

#[test]
fn unknown_key_names_key_service_and_line() {
    let e = error("web:\n  image: nginx\n  imagee: nginx\n");
    assert_eq!(e.code(), "unknown_key");
    assert_eq!(e.line(), Some(3));
    assert_eq!(
        e.message(),
        "line 3: unknown key \"imagee\" in service \"web\" (did you mean \"image\"?)"
    );
    let e = error("web:\n  image: nginx\n  deploy: {replicas: 2}\n");
    assert_eq!(
        e.message(),
        "line 3: unknown key \"deploy\" in service \"web\"; docs/stackfile.md lists the keys a service \
         may have"
    );
}

#[test]
fn unsupported_keys_say_what_to_do() {
    let e = error("web:\n  image: nginx\n  build: .\n");
    assert_eq!(e.code(), "unsupported_key");
    assert_eq!(
        e.message(),
        "line 3: service \"web\": build is not supported: stackdns runs published images; build and push \
         the image, then name it in image"
    );
    assert_eq!(error("web: {image: x, env_file: .env}").code(), "unsupported_key");
    assert_eq!(
        error("web: {image: x, external_links: [a]}").code(),
        "unsupported_key"
    );
}

#[test]
fn bad_ports() {
    let e = error("web:\n  image: x\n  ports:\n    - '80:80'\n    - '70000'\n");
    assert_eq!(e.code(), "invalid_port");
    assert_eq!(
        e.message(),
        "line 5: service \"web\", ports: \"70000\": container port 70000 is out of range: ports are 1-65535"
    );
    let e = error("web:\n  image: x\n  ports: [80, '8080:80']\n");
    assert_eq!(e.code(), "invalid_port");
    assert_eq!(
        e.message(),
        "line 3: service \"web\", ports: container port 80/tcp is published twice"
    );
    let e = error("web:\n  image: x\n  ports: ['80:80', '80:81']\n");
    assert_eq!(
        e.message(),
        "line 3: service \"web\", ports: host port 80/tcp is used twice"
    );
    // The same port number over both protocols is two ports.
    assert_eq!(
        only("web: {image: x, ports: ['53:53', '53:53/udp']}").ports.len(),
        2
    );
    for bad in [
        "0",
        "-1",
        "'80/sctp'",
        "'8000-8010'",
        "'1.2.3.4:80:80'",
        "true",
        "{a: 1}",
        "8.5",
    ] {
        let e = error(&format!("web: {{image: x, ports: [{bad}]}}"));
        assert_eq!(e.code(), "invalid_port", "{bad}: {e}");
        assert_eq!(e.line(), Some(1));
    }
}

#[test]
fn bad_names() {
    let e = error("redis: {image: x}\nWeb_1:\n  image: x\n");
    assert_eq!(e.code(), "invalid_name");
    assert_eq!(e.line(), Some(2));
    assert_eq!(
        e.message(),
        "line 2: service \"Web_1\" is not a valid name: it contains a character other than a-z, 0-9 and \
         '-'; names are DNS labels of 1-63 characters a-z, 0-9 and '-', starting and ending with a letter \
         or digit (try \"web-1\")"
    );
    let e = error("web: {image: x, links: [my_db]}");
    assert_eq!(e.code(), "invalid_name");
    assert!(
        e.message()
            .starts_with("line 1: service \"web\", links: link \"my_db\" is not a valid name"),
        "{e}"
    );
    let e = error("web: {image: x, tags: ['-edge']}");
    assert_eq!(e.code(), "invalid_name");
    assert!(e.message().contains("tag \"-edge\""), "{e}");
}

#[test]
fn unknown_link_names_link_and_service() {
    let e = error("redis: {image: x}\nweb:\n  image: y\n  links:\n    - redis\n    - rediss\n");
    assert_eq!(e.code(), "unknown_link");
    assert_eq!(
        e.message(),
        "line 6: service \"web\" links to \"rediss\", which is not a service of this Stackfile; did you mean \
         \"redis\"?"
    );
    let e = error("redis: {image: x}\nweb: {image: y, links: [postgres]}\n");
    assert_eq!(
        e.message(),
        "line 2: service \"web\" links to \"postgres\", which is not a service of this Stackfile (its \
         services: \
         redis, web)"
    );
    // A link may name a service declared further down.
    assert_eq!(
        yaml("web: {image: y, links: [redis]}\nredis: {image: x}\n")
            .services
            .len(),
        2
    );
}

#[test]
fn duplicate_keys() {
    let e = error("web:\n  image: x\n  ports: [80]\n  image: y\n");
    assert_eq!(e.code(), "duplicate_key");
    assert_eq!(e.line(), Some(4));
    assert!(e.message().starts_with("line 4: duplicate key \"image\""), "{e}");

    let e = error("web: {image: x}\nWEB: {image: y}\n");
    assert_eq!(e.code(), "duplicate_key");
    assert_eq!(
        e.message(),
        "line 2: service \"web\" is declared twice (names are case-insensitive)"
    );

    let e = error("web: {image: x, environment: [A=1, B=2, A=3]}");
    assert_eq!(e.code(), "duplicate_key");
    assert!(e.message().contains("variable \"A\" is set twice"), "{e}");

    let json = "{\n  \"web\": {\n    \"image\": \"x\",\n    \"image\": \"y\"\n  }\n}";
    let e = error(json);
    assert_eq!(e.code(), "duplicate_key");
    assert_eq!(
        e.message(),
        "line 4: duplicate key \"image\": a key may appear only once in a mapping"
    );
}

#[test]
fn yaml_syntax_error() {
    let e = error("web:\n  image: x\n  ports: [80\nredis: {image: y}\n");
    assert_eq!(e.code(), "invalid_yaml");
    assert!(e.line().is_some());
    assert!(
        e.message()
            .starts_with(&format!("line {}, column ", e.line().unwrap_or(0))),
        "{e}"
    );
    assert!(e.message().contains("invalid YAML: "), "{e}");

    let e = error("web:\n  image: x\n bad indentation: y\n");
    assert_eq!(e.code(), "invalid_yaml");
    assert_eq!(e.line(), Some(3), "{e}");

    let e = error("web: {image: x}\n---\nweb: {image: y}\n");
    assert_eq!(e.code(), "invalid_yaml");
    assert_eq!(
        e.message(),
        "line 3, column 1: invalid YAML: a second document starts here (---); a Stackfile is one document"
    );
    assert_eq!(error("web: {image: *nothing}\n").code(), "invalid_yaml");
    assert_eq!(error("web: {image: !custom x}\n").code(), "invalid_yaml");
    let e = parse(b"web: {image: \xff}\n", None).expect_err("not utf-8");
    assert_eq!((e.code(), e.line()), ("invalid_yaml", Some(1)));
}

#[test]
fn json_errors_carry_serde_json_lines() {
    let e = error("{\n  \"web\": {\n    \"image\": \"x\",\n  }\n}");
    assert_eq!(e.code(), "invalid_json");
    assert_eq!(e.line(), Some(4));
    assert!(
        e.message()
            .starts_with("line 4, column 3: invalid JSON: trailing comma"),
        "{e}"
    );

    let e = error("{\n  \"web\": {\n    \"image\": \"x\",\n    \"imagee\": \"y\"\n  }\n}");
    assert_eq!(
        e.message(),
        "line 4: unknown key \"imagee\" in service \"web\" (did you mean \"image\"?)"
    );

    let e = error("{\"web\": {\"image\": \"x\",\n \"ports\": [\n  \"80\",\n  \"0\"]}}");
    assert_eq!((e.code(), e.line()), ("invalid_port", Some(4)));

    let e = error("{\"web\": {\"image\": \"x\"}} trailing");
    assert_eq!(e.code(), "invalid_json");
}

#[test]
fn missing_image_and_wrong_shapes() {
    let e = error("web:\n  ports: [80]\n");
    assert_eq!(e.code(), "missing_key");
    assert_eq!(
        e.message(),
        "line 1: service \"web\" has no image; image is the one required key"
    );
    assert_eq!(error("web:\n").code(), "missing_key");
    assert_eq!(error("web: {image: ''}").code(), "invalid_value");
    assert_eq!(error("web: {image: 5}").code(), "invalid_value");
    assert_eq!(error("web: {image: 'two words'}").code(), "invalid_value");
    assert_eq!(error("web: nginx").code(), "invalid_value");
    assert_eq!(error("- web").code(), "invalid_value");
    assert_eq!(error("").code(), "invalid_value");
    assert_eq!(error("{}").code(), "invalid_value");
    assert_eq!(
        error("web: {image: x, target_num_containers: -1}").code(),
        "invalid_value"
    );
    assert_eq!(
        error("web: {image: x, target_num_containers: 2.5}").code(),
        "invalid_value"
    );
    assert_eq!(
        error("web: {image: x, deployment_strategy: random}").code(),
        "invalid_value"
    );
    assert_eq!(error("web: {image: x, cpu_shares: 1}").code(), "invalid_value");
    assert_eq!(
        error("web: {image: x, command: 'echo \"oops'}").code(),
        "invalid_value"
    );
    assert_eq!(error("web: {image: x, command: [[a]]}").code(), "invalid_value");
    assert_eq!(
        error("web: {image: x, environment: {A: [1]}}").code(),
        "invalid_value"
    );
    assert_eq!(
        error("web: {image: x, environment: ['=x']}").code(),
        "invalid_value"
    );
    assert_eq!(
        error("web: {image: x, restart: sometimes}").code(),
        "invalid_value"
    );
    assert_eq!(error("web: {image: x, ? [a]: b}").code(), "invalid_value");
}

#[test]
fn compose_files_are_recognised() {
    let e = error("version: '2'\nservices:\n  web:\n    image: nginx\n");
    assert_eq!(e.code(), "invalid_value");
    assert!(
        e.message()
            .starts_with("line 2: this looks like a Docker Compose file"),
        "{e}"
    );
}

#[test]
fn budgets() {
    let big = format!("web: {{image: x}}\n#{}\n", "x".repeat(MAX_BODY_BYTES));
    assert_eq!(error(&big).code(), "too_large");

    let services: String = (0..=MAX_SERVICES)
        .map(|i| format!("s{i}: {{image: x}}\n"))
        .collect();
    let e = error(&services);
    assert_eq!(e.code(), "too_large");
    assert!(e.message().contains("the limit is 1000"), "{e}");
    let json = format!(
        "{{{}}}",
        (0..=MAX_SERVICES)
            .map(|i| format!("\"s{i}\": {{\"image\": \"x\"}}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(error(&json).code(), "too_large");

    let e = error("web: {image: x, target_num_containers: 10001}");
    assert_eq!(e.code(), "invalid_value");
    assert!(e.message().contains("not between 0 and 10000"), "{e}");
    assert_eq!(
        only("web: {image: x, target_num_containers: 10000}").target_num_containers,
        10_000
    );

    let deep_yaml = format!(
        "web:\n  image: x\n  labels: {}1{}\n",
        "[".repeat(40),
        "]".repeat(40)
    );
    assert_eq!(error(&deep_yaml).code(), "too_large", "{}", error(&deep_yaml));
    let deep_json = format!(
        "{{\"web\": {{\"image\": \"x\", \"labels\": {}1{}}}}}",
        "[".repeat(40),
        "]".repeat(40)
    );
    let e = error(&deep_json);
    assert_eq!(e.code(), "too_large", "{e}");
    assert!(e.message().contains("nests more than 16 levels"), "{e}");

    let many = format!(
        "{{\"web\": {{\"image\": \"x\", \"labels\": [{}]}}}}",
        vec!["1"; MAX_NODES].join(",")
    );
    assert_eq!(error(&many).code(), "too_large");
}

#[test]
fn alias_bomb_is_refused_quickly() {
    let mut bomb = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (name, previous) in ["b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
    {
        let refs = vec![format!("*{previous}"); 9].join(", ");
        bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    let started = Instant::now();
    let e = error(&bomb);
    // 9^9 ≈ 387 million values if expanded; refused after a few tens of thousands. The bound
    // only catches an unbounded expansion, it is not a benchmark.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(e.code(), "too_large", "{e}");
    assert!(e.message().contains("over the parser's limits"), "{e}");
    assert!(e.message().contains("alias"), "{e}");
}

#[test]
fn anchors_and_merge_keys_work_within_budget() {
    let stackfile = yaml(
        "web: &base
  image: x
  environment: {A: '1'}
worker:
  <<: *base
  image: y
  command: work
",
    );
    // Keys written next to a merge override the merged ones, as YAML specifies.
    let worker = &stackfile.services[&label("worker")];
    assert_eq!(worker.image, "y");
    assert_eq!(worker.environment["A"], "1");
    assert_eq!(worker.command, Some(vec!["work".to_owned()]));
}

#[test]
fn error_codes_are_stable() {
    let kinds = [
        (ErrorKind::InvalidYaml, "invalid_yaml"),
        (ErrorKind::InvalidJson, "invalid_json"),
        (ErrorKind::DuplicateKey, "duplicate_key"),
        (ErrorKind::TooLarge, "too_large"),
        (ErrorKind::UnknownKey, "unknown_key"),
        (ErrorKind::UnsupportedKey, "unsupported_key"),
        (ErrorKind::MissingKey, "missing_key"),
        (ErrorKind::InvalidValue, "invalid_value"),
        (ErrorKind::InvalidPort, "invalid_port"),
        (ErrorKind::InvalidName, "invalid_name"),
        (ErrorKind::UnknownLink, "unknown_link"),
    ];
    for (kind, code) in kinds {
        assert_eq!(kind.code(), code);
    }
}

#[test]
fn spec_hash_is_stable() {
    let def = &yaml(SEED_FIRST).services[&label("web")];
    let mut canonical = String::new();
    write_canonical(&def.canonical_spec(), &mut canonical);
    let expected = concat!(
        r#"{"command":null,"cpu_shares":null,"entrypoint":null,"environment":{},"#,
        r#""image":"honeniq/quickstart-ruby:latest","links":["redis"],"mem_limit_mb":null,"#,
        r#""ports":[{"container_port":80,"host_port":80,"protocol":"tcp"}],"restart":"no","#,
        r#""runtime_options":{}}"#,
    );
    assert_eq!(canonical, expected);
    // Pinned: a change here redeploys every service of every stack on upgrade.
    assert_eq!(def.spec_hash(), 0x9720_92e5_94ae_dccc);
    assert_eq!(def.spec_hash(), def.clone().spec_hash());
}

#[test]
fn spec_hash_follows_what_runs() {
    const BASE: &str = "web: {image: x, environment: {A: '1'}, command: run, ports: ['80', '53/udp']";
    let hash = |text: &str| only(text).spec_hash();
    let with = |extra: &str| hash(&format!("{BASE}, {extra}}}"));
    let base = hash(&format!("{BASE}}}"));

    // How many run and where: not part of the spec.
    for extra in [
        "target_num_containers: 5",
        "tags: [blue]",
        "deployment_strategy: every_node",
    ] {
        assert_eq!(with(extra), base, "{extra}");
    }
    // Tutum platform keys are dropped; order and form in the document do not matter.
    assert_eq!(with("autoredeploy: true"), base);
    assert_eq!(
        hash("web: {ports: ['53/udp', '80'], command: [run], environment: [A=1], image: x}"),
        base
    );

    let different = [
        "web: {image: y, environment: {A: '1'}, command: run, ports: ['80', '53/udp']}",
        "web: {image: x, environment: {A: '2'}, command: run, ports: ['80', '53/udp']}",
        "web: {image: x, environment: {A: '1', B: ''}, command: run, ports: ['80', '53/udp']}",
        "web: {image: x, environment: {A: '1'}, command: run now, ports: ['80', '53/udp']}",
        "web: {image: x, environment: {A: '1'}, ports: ['80', '53/udp']}",
        "web: {image: x, environment: {A: '1'}, command: run, ports: ['80:80', '53/udp']}",
    ];
    for text in different {
        assert_ne!(hash(text), base, "{text}");
    }
    let extras = [
        "entrypoint: sh",
        "cpu_shares: 100",
        "mem_limit: 1g",
        "restart: always",
        "hostname: h",
    ];
    for extra in extras {
        assert_ne!(with(extra), base, "{extra}");
    }
}

#[test]
fn round_trips_through_its_own_serde_form() {
    let stackfile = yaml(SEED_SECOND);
    let stored = serde_json::to_string(&stackfile).expect("serialize");
    let loaded: Stackfile = serde_json::from_str(&stored).expect("deserialize");
    assert_eq!(loaded, stackfile);
}

#[test]
fn health_checks_fill_defaults_and_name_what_is_wrong() {
    let def = only(
        "web:\n  image: x\n  ports: ['8080', '53/udp']\n  health_check:\n    http: /healthz\n    interval: 500ms\n",
    );
    let check = def.health_check.expect("a health check");
    assert_eq!(
        check.probe,
        crate::stackfile::Probe::Http {
            path: "/healthz".to_owned()
        }
    );
    assert_eq!(check.port, Some(8080), "the first published TCP port");
    assert_eq!(
        (check.interval_ms, check.timeout_ms),
        (500, 500),
        "the default timeout fits the interval"
    );
    assert_eq!((check.healthy_threshold, check.unhealthy_threshold), (2, 3));

    let tcp = only(
        "web:\n  image: x\n  ports: ['80', '81']\n  health_check: {tcp: true, port: 81, timeout: 1s, interval: 2s, healthy_threshold: 1}\n",
    );
    let check = tcp.health_check.expect("a health check");
    assert_eq!(
        (check.probe, check.port, check.timeout_ms, check.healthy_threshold),
        (crate::stackfile::Probe::Tcp, Some(81), 1000, 1)
    );

    for (text, says) in [
        (
            "  ports: ['80']\n  health_check: {interval: 5s}\n",
            "it needs a probe",
        ),
        ("  health_check: {tcp: true}\n", "publishes no TCP port"),
        (
            "  ports: ['80']\n  health_check: {tcp: true, port: 81}\n",
            "port 81 is not a published TCP port",
        ),
        (
            "  ports: ['80']\n  health_check: {tcp: true, timeout: 5s, interval: 1s}\n",
            "longer than the interval",
        ),
        (
            "  ports: ['80']\n  health_check: {tcp: true, interval: 10ms}\n",
            "between 100 ms and 1 hour",
        ),
        ("  ports: ['80']\n  health_check: {tcp: true, interval: 5}\n", ""),
        (
            "  ports: ['80']\n  health_check: {http: healthz}\n",
            "is not a path",
        ),
        (
            "  ports: ['80']\n  health_check: {tcp: true, retries: 3}\n",
            "unknown key \"retries\"",
        ),
        (
            "  ports: ['80']\n  health_check: {tcp: true, unhealthy_threshold: 0}\n",
            "not between 1 and 100",
        ),
        (
            "  ports: ['80']\n  health_check: /healthz\n",
            "expected a mapping",
        ),
    ] {
        let stackfile = format!("web:\n  image: x\n{text}");
        if says.is_empty() {
            assert!(
                crate::stackfile::parse(stackfile.as_bytes(), None).is_ok(),
                "{stackfile}"
            );
            continue;
        }
        let e = error(&stackfile);
        assert!(e.to_string().contains(says), "{stackfile}: {e}");
        assert!(e.to_string().contains("health_check"), "names the key: {e}");
    }
}

/// Values a platform should refuse (issue "tenants cannot hurt each other", finding 3): each
/// refusal names the key, the value and the rule, with its line.
#[test]
fn values_runtimes_would_not_take_are_refused_with_their_line() {
    let huge_host = "x".repeat(600_000);
    let cases: Vec<(String, &str)> = vec![
        (
            "  mem_limit: '18446744073709551615'\n".to_owned(),
            "more than a container may have",
        ),
        (format!("  hostname: '{huge_host}'\n"), "is not a host name"),
        (
            "  expose: ['99999', '0', '-5', 'abc']\n".to_owned(),
            "is not a port",
        ),
        (
            "  extra_hosts: ['bad', ':::']\n".to_owned(),
            "is not \"host:address\"",
        ),
        ("  links: ['b:c:d']\n".to_owned(), "is not a link"),
        ("  privileged: true\n".to_owned(), "--privileged-users"),
        (
            "  devices: [/dev/mem:/dev/mem]\n".to_owned(),
            "reaches outside the container",
        ),
        ("  pid: host\n".to_owned(), "reaches outside the container"),
        ("  cap_add: [ALL]\n".to_owned(), "reaches outside the container"),
        (
            "  volumes: ['/:/host']\n".to_owned(),
            "reaches outside the container",
        ),
    ];
    for (extra, says) in cases {
        let text = format!("b:\n  image: x\nweb:\n  image: x\n{extra}");
        let e = error(&text);
        let message = e.to_string();
        assert!(message.contains(says), "{extra}: {message}");
        assert!(message.starts_with("line 5:"), "{extra}: {message}");
        assert!(
            message.len() < 600,
            "the message stays readable: {}",
            message.len()
        );
    }
    for image in ["$(id)", "-rf", "UPPER/Case"] {
        let e = error(&format!("web:\n  image: '{image}'\n"));
        assert!(
            e.to_string().contains("is not an image reference"),
            "{image}: {e}"
        );
    }
    // Allowed where they are harmless: a named volume, privileged: false, an empty cap_add.
    let ok = "web:\n  image: x\n  volumes: ['data:/data', '/scratch']\n  privileged: false\n  cap_add: []\n";
    assert!(parse(ok.as_bytes(), None).is_ok());
}
