use super::tokens::Role;
use super::*;
use std::path::Path;

fn yaml(text: &str) -> Layer {
    Layer::parse_str(text, FileFormat::Yaml).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn file(text: &str) -> Option<(PathBuf, Layer)> {
    Some((PathBuf::from("jetsaga.yaml"), yaml(text)))
}

fn env(pairs: &[(&str, &str)]) -> Env {
    Env::from_pairs(pairs.iter().copied())
}

fn resolve(file_text: Option<&str>, env_pairs: &[(&str, &str)], flags: Layer) -> Loaded {
    Config::resolve(
        Config::default(),
        file_text.and_then(file),
        &env(env_pairs),
        flags,
    )
    .expect("resolves")
}

/// A value for `key` unlike its default, as a file, a variable and a flag
/// would write it.
fn sample(key: &str, which: u8) -> String {
    match key {
        "nats.url" => format!("nats://host{which}:4222"),
        "nats.nkey" => format!("/etc/jetsaga/user{which}.nk"),
        "nats.tls.required" | "http_insecure" => "true".into(),
        "http_tokens" => format!("t{which}:operate:{}", "ab".repeat(32)),
        "max_payload" => format!("{}", 2048 + u32::from(which)),
        "duplicate_window" | "ack_wait" | "http_header_timeout" | "http_body_timeout" => {
            format!("{}s", 30 + which)
        }
        "outcome_ttl" => format!("{}h", 30 + which),
        "retention" => format!("{}h", 1 + which),
        "lease_ttl" => format!("{}s", 10 + which),
        "lease_renew" => format!("{}ms", 1500 + u32::from(which)),
        "engine_id" => format!("engine-{which}"),
        "batch_size"
        | "replicas"
        | "max_running_sagas"
        | "http_max_connections"
        | "snapshot_every"
        | "partitions"
        | "max_definition_steps"
        | "max_definition_fan_out"
        | "max_definition_bytes" => format!("{}", 2 + which),
        "http_listen" => format!("127.0.0.1:{}", 9000 + u32::from(which)),
        "log_format" => "json".into(),
        "log" => format!("debug,x{which}=trace"),
        "prefix" => format!("p{which}"),
        _ => format!("/value/{which}/{}", key.replace('.', "-")),
    }
}

#[test]
fn keys_are_the_fields_of_config() {
    fn leaves(value: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    leaves(v, &p, out);
                }
            }
            _ => out.push(path.to_string()),
        }
    }
    let mut found = Vec::new();
    leaves(
        &serde_json::to_value(Config::default()).unwrap(),
        "",
        &mut found,
    );
    found.sort();
    let mut keys: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
    keys.sort();
    assert_eq!(found, keys);
}

#[test]
fn every_key_has_an_environment_variable() {
    let vars: Vec<(String, String)> = KEYS.iter().map(|k| (env_var(k), sample(k, 2))).collect();
    let loaded = Config::resolve(
        Config::default(),
        None,
        &Env::from_pairs(vars.clone()),
        Layer::default(),
    )
    .unwrap();
    for key in KEYS {
        assert_eq!(
            loaded.sources.get(key),
            Source::Env { var: env_var(key) },
            "{key}"
        );
    }
    assert_eq!(loaded.config.nats.url, "nats://host2:4222");
    assert_eq!(loaded.config.ack_wait, Duration::from_secs(32));
    assert_eq!(loaded.config.log_format, LogFormat::Json);
    assert!(loaded.config.nats.tls.required);
    assert!(loaded.config.http_insecure);
    assert_eq!(
        loaded.config.http_tokens,
        vec![HttpToken {
            name: "t2".into(),
            role: Role::Operate,
            sha256: "ab".repeat(32).parse().unwrap(),
        }]
    );
    assert_eq!(
        loaded.config.nats.nkey,
        Some(Nkey::File("/etc/jetsaga/user2.nk".into()))
    );
    assert_eq!(
        loaded.config.nats.password.as_ref().map(Secret::expose),
        Some("/value/2/nats-password")
    );
    assert_eq!(env_var("nats.tls.ca"), "JETSAGA_NATS_TLS_CA");
    assert_eq!(env_var("log"), "JETSAGA_LOG");
    assert_eq!(flag_name("nats.tls.ca"), "--nats-tls-ca");
    assert_eq!(flag_name("http_listen"), "--http-listen");
}

#[test]
fn every_key_can_be_set_in_a_file() {
    for key in KEYS {
        let value = sample(key, 1);
        let value = match *key {
            "definitions" => format!("[{value:?}]"),
            "http_tokens" => format!(
                "[{{name: t1, role: read, sha256: \"{}\"}}]",
                "cd".repeat(32)
            ),
            "nats.tls.required"
            | "http_insecure"
            | "max_payload"
            | "batch_size"
            | "replicas"
            | "max_running_sagas"
            | "http_max_connections"
            | "max_definition_steps"
            | "max_definition_fan_out"
            | "max_definition_bytes" => value,
            _ => format!("{value:?}"),
        };
        // Flow mappings, one line per key: `{nats: {tls: {ca: "x"}}}`.
        let parts: Vec<&str> = key.split('.').collect();
        let mut line = value;
        for part in parts.iter().rev() {
            line = format!("{{{part}: {line}}}");
        }
        let layer = yaml(&line[1..line.len() - 1]);
        let loaded = Config::resolve(
            Config::default(),
            Some(("f.yaml".into(), layer)),
            &Env::default(),
            Layer::default(),
        )
        .unwrap();
        assert_eq!(
            loaded.sources.get(key),
            Source::File {
                path: "f.yaml".into()
            },
            "{key}"
        );
    }
}

#[test]
fn precedence_is_default_file_env_flag() {
    let text = "prefix: from-file\nbatch_size: 10\nreplicas: 3\nack_wait: 30s\nnats:\n  user: file-user\n  password: file-pass\n";
    let flags = Layer {
        replicas: Some(5),
        nats: NatsLayer {
            password: Some("flag-pass".into()),
            ..NatsLayer::default()
        },
        ..Layer::default()
    };
    let loaded = resolve(
        Some(text),
        &[
            ("JETSAGA_BATCH_SIZE", "20"),
            ("JETSAGA_REPLICAS", "4"),
            ("JETSAGA_NATS_PASSWORD", "env-pass"),
        ],
        flags,
    );
    let c = &loaded.config;
    // default only
    assert_eq!(c.max_payload, Config::default().max_payload);
    assert_eq!(loaded.sources.get("max_payload"), Source::Default);
    // file over default
    assert_eq!(c.prefix, "from-file");
    assert_eq!(c.ack_wait, Duration::from_secs(30));
    assert_eq!(
        loaded.sources.get("prefix"),
        Source::File {
            path: "jetsaga.yaml".into()
        }
    );
    assert_eq!(c.nats.user.as_deref(), Some("file-user"));
    // env over file
    assert_eq!(c.batch_size, 20);
    assert_eq!(
        loaded.sources.get("batch_size"),
        Source::Env {
            var: "JETSAGA_BATCH_SIZE".into()
        }
    );
    // flag over env over file
    assert_eq!(c.replicas, 5);
    assert_eq!(
        loaded.sources.get("replicas"),
        Source::Flag {
            flag: "--replicas".into()
        }
    );
    assert_eq!(c.nats.password.as_ref().unwrap().expose(), "flag-pass");
    assert_eq!(
        loaded.sources.get("nats.password").to_string(),
        "flag --nats-password"
    );
    assert_eq!(loaded.file.as_deref(), Some(Path::new("jetsaga.yaml")));
}

#[test]
fn command_defaults_are_the_lowest_layer() {
    let dev = Config {
        http_listen: Some("127.0.0.1:8080".into()),
        ..Config::default()
    };
    let loaded = Config::resolve(dev.clone(), None, &Env::default(), Layer::default()).unwrap();
    assert_eq!(loaded.config, dev);
    let off = Config::resolve(
        dev,
        file("http_listen: off\n"),
        &Env::default(),
        Layer::default(),
    )
    .unwrap();
    assert_eq!(off.config.http_listen, None);
}

#[test]
fn empty_environment_values_count_as_unset() {
    let loaded = resolve(
        Some("replicas: 3\n"),
        &[("JETSAGA_REPLICAS", "")],
        Layer::default(),
    );
    assert_eq!(loaded.config.replicas, 3);
}

#[test]
fn environment_lists_and_errors() {
    let loaded = resolve(
        None,
        &[("JETSAGA_DEFINITIONS", "a.yaml, defs/ ,,b.json")],
        Layer::default(),
    );
    assert_eq!(
        loaded.config.definitions,
        vec![
            PathBuf::from("a.yaml"),
            PathBuf::from("defs/"),
            PathBuf::from("b.json")
        ]
    );
    for (var, value, says) in [
        ("JETSAGA_MAX_PAYLOAD", "lots", "max_payload"),
        ("JETSAGA_ACK_WAIT", "10 parsecs", "ack_wait"),
        ("JETSAGA_NATS_TLS_REQUIRED", "perhaps", "true or false"),
        ("JETSAGA_LOG_FORMAT", "xml", "text or json"),
    ] {
        let err = Config::resolve(
            Config::default(),
            None,
            &env(&[(var, value)]),
            Layer::default(),
        )
        .unwrap_err();
        assert_eq!(err.code(), ErrorCode::ConfigEnv);
        let text = err.to_string();
        assert!(text.contains(var) && text.contains(says), "{text}");
    }
}

#[test]
fn unknown_keys_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text, key) in [
        ("a.yaml", "replicas: 1\nreplica: 3\n", "`replica`"),
        (
            "b.yaml",
            "nats:\n  url: nats://x:4222\n  pasword: x\n",
            "`nats.pasword`",
        ),
        (
            "c.yml",
            "nats:\n  tls:\n    cafile: ca.pem\n",
            "`nats.tls.cafile`",
        ),
        ("d.json", "{\"nats\": {\"usr\": \"a\"}}", "`nats.usr`"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let err = Layer::from_file(&path).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ConfigFile);
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(&format!("unknown key {key}")), "{text}");
        assert!(text.contains("line"), "no position: {text}");
    }
    let path = dir.path().join("b.yaml");
    let text = Layer::from_file(&path).unwrap_err().to_string();
    assert!(
        text.contains("url, creds, user, password") || text.contains("password"),
        "{text}"
    );
}

#[test]
fn file_errors() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("jetsaga.toml");
    std::fs::write(&toml, "replicas = 3\n").unwrap();
    assert!(
        Layer::from_file(&toml)
            .unwrap_err()
            .to_string()
            .contains("*.yaml, *.yml or *.json")
    );
    let missing = Layer::from_file(&dir.path().join("nope.yaml")).unwrap_err();
    assert!(missing.to_string().contains("cannot read it"), "{missing}");
    let bad = Layer::parse_str("ack_wait: 10 parsecs\n", FileFormat::Yaml).unwrap_err();
    assert!(bad.contains("not a duration"), "{bad}");
    let bad = Layer::parse_str("replicas: many\n", FileFormat::Yaml).unwrap_err();
    assert!(bad.contains("line 1"), "{bad}");
    let dup = Layer::parse_str("replicas: 1\nreplicas: 2\n", FileFormat::Yaml).unwrap_err();
    assert!(dup.contains("duplicate"), "{dup}");
    assert_eq!(yaml(""), Layer::default());
    assert_eq!(yaml("# nothing yet\n"), Layer::default());
    let json = Layer::parse_str(
        "{\"log_format\": \"json\", \"replicas\": 3}",
        FileFormat::Json,
    )
    .unwrap();
    assert_eq!(json.log_format, Some(LogFormat::Json));
    assert_eq!(json.replicas, Some(3));
}

#[test]
fn yaml_numbers_are_taken_as_passwords() {
    let loaded = resolve(
        Some("nats:\n  user: a\n  password: 123456\n"),
        &[],
        Layer::default(),
    );
    assert_eq!(loaded.config.nats.password.unwrap().expose(), "123456");
}

#[test]
fn secrets_are_masked_everywhere() {
    let text = "nats:\n  user: app\n  password: hunter2-file\n";
    let loaded = resolve(
        Some(text),
        &[("JETSAGA_NATS_TOKEN", "tok-env-9")],
        Layer::default(),
    );
    let shown = [
        format!("{:?}", loaded.config),
        format!("{loaded:?}"),
        loaded.annotated_yaml(),
        loaded.to_json().to_string(),
        serde_json::to_string(&loaded.config).unwrap(),
    ];
    for text in &shown {
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("tok-env-9"), "{text}");
        assert!(text.contains("***"), "{text}");
    }
}

#[test]
fn annotated_yaml_shows_sources_and_parses_back() {
    let text = "replicas: 3\nnats:\n  url: nats://a:4222,nats://b:4222\n  tls:\n    required: true\ndefinitions: [defs/a.yaml]\n";
    let flags = Layer {
        http_listen: Some("127.0.0.1:0".into()),
        ..Layer::default()
    };
    let loaded = resolve(Some(text), &[("JETSAGA_BATCH_SIZE", "7")], flags);
    let out = loaded.annotated_yaml();
    for line in [
        "# configuration file: jetsaga.yaml",
        "nats:\n  url: \"nats://a:4222,nats://b:4222\"  # file\n",
        "  tls:\n    ca: null  # default\n",
        "    required: true  # file\n",
        "prefix: \"jetsaga\"  # default\n",
        "definitions: [\"defs/a.yaml\"]  # file\n",
        "duplicate_window: \"2m\"  # default\n",
        "batch_size: 7  # env JETSAGA_BATCH_SIZE\n",
        "http_listen: \"127.0.0.1:0\"  # flag --http-listen\n",
        "log: null  # default\n",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    // What `config check` prints is a configuration file giving the same result.
    let again = Config::resolve(
        Config::default(),
        Some(("printed.yaml".into(), yaml(&out))),
        &Env::default(),
        Layer::default(),
    )
    .unwrap();
    assert_eq!(again.config, loaded.config);
}

#[test]
fn json_view_has_every_source() {
    let loaded = resolve(
        Some("replicas: 3\n"),
        &[("JETSAGA_PREFIX", "acme")],
        Layer::default(),
    );
    let json = loaded.to_json();
    assert_eq!(json["file"], "jetsaga.yaml");
    assert_eq!(json["config"]["replicas"], 3);
    assert_eq!(json["config"]["nats"]["tls"]["required"], false);
    assert_eq!(json["sources"]["replicas"]["from"], "file");
    assert_eq!(json["sources"]["prefix"]["from"], "env");
    assert_eq!(json["sources"]["prefix"]["var"], "JETSAGA_PREFIX");
    assert_eq!(json["sources"]["nats.url"]["from"], "default");
    assert_eq!(json["sources"].as_object().unwrap().len(), KEYS.len());
}

#[test]
fn http_connection_limits_must_be_usable() {
    for (config, key) in [
        (
            Config {
                http_header_timeout: Duration::from_millis(10),
                ..Config::default()
            },
            "http_header_timeout",
        ),
        (
            Config {
                http_body_timeout: Duration::ZERO,
                ..Config::default()
            },
            "http_body_timeout",
        ),
        (
            Config {
                http_max_connections: 0,
                ..Config::default()
            },
            "http_max_connections",
        ),
    ] {
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
    let c = Config::default();
    assert_eq!(
        (
            c.http_header_timeout,
            c.http_body_timeout,
            c.http_max_connections
        ),
        (Duration::from_secs(10), Duration::from_secs(30), 1024)
    );
}

#[test]
fn http_listen_is_host_and_port() {
    let with = |addr: &str| Config {
        http_listen: Some(addr.into()),
        http_insecure: true,
        ..Config::default()
    };
    assert!(Config::default().validate().is_ok());
    for good in ["127.0.0.1:8080", "0.0.0.0:0", "[::1]:8080", "localhost:80"] {
        assert!(with(good).validate().is_ok(), "{good}");
    }
    for bad in ["127.0.0.1", "8080x", "host:99999", ""] {
        let err = with(bad).validate().unwrap_err();
        assert!(err.to_string().contains("http_listen"), "{bad}: {err}");
    }
}

#[test]
fn validation_names_what_is_wrong() {
    let cases: Vec<(Config, &str)> = vec![
        (
            Config {
                outcome_ttl: Duration::from_secs(30),
                ..Config::default()
            },
            "outcome_ttl must be at least 1m",
        ),
        (
            Config {
                outcome_ttl: Duration::from_secs(120),
                duplicate_window: Duration::from_secs(600),
                ..Config::default()
            },
            "outcome_ttl (2m) must be at least duplicate_window (10m)",
        ),
        (
            Config {
                replicas: 6,
                ..Config::default()
            },
            "replicas 6",
        ),
        (
            Config {
                max_payload: 10,
                ..Config::default()
            },
            "max_payload",
        ),
        (
            Config {
                batch_size: 0,
                ..Config::default()
            },
            "batch_size",
        ),
        (
            Config {
                ack_wait: Duration::from_millis(10),
                ..Config::default()
            },
            "ack_wait",
        ),
        (
            Config {
                prefix: "a b".into(),
                ..Config::default()
            },
            "prefix",
        ),
        (
            Config {
                log: Some("info,[".into()),
                ..Config::default()
            },
            "log",
        ),
        (
            Config {
                nats: NatsConfig {
                    token: Some("t".into()),
                    nkey: Some(Nkey::File("k.nk".into())),
                    ..NatsConfig::default()
                },
                ..Config::default()
            },
            "more than one NATS authentication method is set (token, nkey)",
        ),
        (
            Config {
                nats: NatsConfig::new("nats://app:hunter2@host:4222"),
                ..Config::default()
            },
            "nats.url carries credentials",
        ),
    ];
    for (config, says) in cases {
        let err = config.validate().unwrap_err();
        assert_eq!(err.code(), ErrorCode::Config);
        let text = err.to_string();
        assert!(text.contains(says), "{says:?} not in {text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
    // A client checks only what it uses.
    let engine_only = Config {
        replicas: 9,
        ..Config::default()
    };
    assert!(engine_only.validate_client().is_ok());
}

fn digest(byte: &str) -> String {
    byte.repeat(32)
}

#[test]
fn http_tokens_in_a_file_the_environment_and_flags() {
    let text = format!(
        "http_tokens:\n  - {{ name: viewer, role: read, sha256: \"{}\" }}\n  - {{ name: root, role: admin, sha256: \"{}\" }}\n",
        digest("01"),
        digest("02")
    );
    let loaded = resolve(Some(&text), &[], Layer::default());
    let tokens = &loaded.config.http_tokens;
    assert_eq!(tokens.len(), 2);
    assert_eq!(
        (tokens[0].name.as_str(), tokens[0].role),
        ("viewer", Role::Read)
    );
    assert_eq!(
        (tokens[1].name.as_str(), tokens[1].role),
        ("root", Role::Admin)
    );
    assert!(loaded.config.validate().is_ok());
    // The environment replaces the file's list.
    let env_value = format!("ops:operate:{}", digest("03"));
    let loaded = resolve(
        Some(&text),
        &[("JETSAGA_HTTP_TOKENS", env_value.as_str())],
        Layer::default(),
    );
    assert_eq!(loaded.config.http_tokens.len(), 1);
    assert_eq!(loaded.config.http_tokens[0].name, "ops");
    // What `config check` prints reads back.
    let again = Config::resolve(
        Config::default(),
        Some(("printed.yaml".into(), yaml(&loaded.annotated_yaml()))),
        &Env::default(),
        Layer::default(),
    )
    .unwrap();
    assert_eq!(again.config.http_tokens, loaded.config.http_tokens);
    // Bad values name the variable or the field.
    for (value, says) in [
        ("ops:operate", "name:role:sha256"),
        ("ops:root:00", "unknown role"),
        ("ops:read:00", "64 hex digits"),
    ] {
        let err = Config::resolve(
            Config::default(),
            None,
            &env(&[("JETSAGA_HTTP_TOKENS", value)]),
            Layer::default(),
        )
        .unwrap_err();
        assert_eq!(err.code(), ErrorCode::ConfigEnv);
        assert!(err.to_string().contains(says), "{err}");
    }
    for (text, says) in [
        (
            "http_tokens:\n  - { name: a, role: root, sha256: \"00\" }\n",
            "read, operate, admin",
        ),
        (
            "http_tokens:\n  - { name: a, role: read, sha256: \"00\" }\n",
            "64 hex digits",
        ),
        ("http_tokens:\n  - { name: a, role: read }\n", "sha256"),
    ] {
        let err = Layer::parse_str(text, FileFormat::Yaml).unwrap_err();
        assert!(err.contains(says), "{says:?} not in {err}");
    }
}

#[test]
fn http_tokens_are_checked_together() {
    let token = |name: &str, d: &str| HttpToken {
        name: name.into(),
        role: Role::Read,
        sha256: digest(d).parse().unwrap(),
    };
    let with = |tokens: Vec<HttpToken>| Config {
        http_tokens: tokens,
        ..Config::default()
    };
    assert!(
        with(vec![token("a", "01"), token("b", "02")])
            .validate()
            .is_ok()
    );
    for (config, says) in [
        (with(vec![token("a", "01"), token("a", "02")]), "used twice"),
        (
            with(vec![token("a", "01"), token("b", "01")]),
            "digest of another token",
        ),
        (with(vec![token("a b", "01")]), "http_tokens: name"),
    ] {
        let err = config.validate().unwrap_err();
        assert_eq!(err.code(), ErrorCode::Config);
        assert!(err.to_string().contains(says), "{says:?} not in {err}");
    }
    let half = Config {
        http_tls_cert: Some("cert.pem".into()),
        ..Config::default()
    };
    assert!(
        half.validate()
            .unwrap_err()
            .to_string()
            .contains("go together")
    );
}

#[test]
fn a_listener_beyond_loopback_needs_tokens_or_http_insecure() {
    let listen = |addr: &str| Config {
        http_listen: Some(addr.into()),
        ..Config::default()
    };
    for open in [
        "127.0.0.1:8080",
        "127.1.2.3:0",
        "[::1]:8080",
        "localhost:80",
    ] {
        assert!(listen(open).validate().is_ok(), "{open}");
    }
    for exposed in [
        "0.0.0.0:8080",
        "[::]:8080",
        "10.0.0.5:80",
        "engine.example:8080",
    ] {
        let err = listen(exposed).validate().unwrap_err();
        assert_eq!(err.code(), ErrorCode::HttpInsecure, "{exposed}");
        let text = err.to_string();
        assert!(
            text.contains("--http-insecure") && text.contains(exposed),
            "{text}"
        );
        let insecure = Config {
            http_insecure: true,
            ..listen(exposed)
        };
        assert!(insecure.validate().is_ok(), "{exposed}");
        let with_tokens = Config {
            http_tokens: vec![HttpToken::of("ops", Role::Operate, "t")],
            ..listen(exposed)
        };
        assert!(with_tokens.validate().is_ok(), "{exposed}");
    }
}
