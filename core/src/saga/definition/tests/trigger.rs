//! Trigger subjects that would capture an installation's own subjects.

use super::*;

fn with_trigger(subject: &str) -> Result<DefinitionFile, DefinitionError> {
    yaml(&format!(
        "sagas:\n  s:\n    triggers:\n      - subject: '{subject}'\n    steps:\n      - {{id: a, service: svc, operation: op}}\n"
    ))
}

#[test]
fn any_installations_engine_subjects_are_refused() {
    for (subject, prefix, kind) in [
        ("jetsaga.task.payments", "jetsaga", "task"),
        ("acme.result.payments", "acme", "result"),
        ("acme.prod.start.>", "acme.prod", "start"),
        ("jetsaga.api.saga.start", "jetsaga", "api"),
        ("other.progress.*", "other", "progress"),
        ("acme.journal.>", "acme", "journal"),
        ("acme.outcome.>", "acme", "outcome"),
        ("jetsaga.lead.0.saga.get", "jetsaga", "lead"),
    ] {
        let e = with_trigger(subject).unwrap_err();
        assert_eq!(e.code(), "E-DEF-TRIGGER", "{subject}");
        assert_eq!(
            e.to_string(),
            format!(
                "bad.yaml: saga `s`: field `triggers[0].subject`: `{subject}` is a jetsaga engine subject (the {kind} subjects of an installation with prefix `{prefix}`), which that installation's streams capture; a trigger there would break it. Trigger on an application subject (one without a `{kind}` token after the first)"
            )
        );
    }
}

#[test]
fn system_subjects_and_inboxes_are_refused() {
    for (subject, why) in [
        ("$JS.API.STREAM.NAMES", "system subject"),
        ("$KV.bucket.key", "system subject"),
        ("_INBOX.abc", "reply inbox"),
        ("_INBOX", "reply inbox"),
    ] {
        let e = with_trigger(subject).unwrap_err();
        assert_eq!(e.code(), "E-DEF-TRIGGER", "{subject}");
        assert!(e.to_string().contains(why), "{subject}: {e}");
    }
}

#[test]
fn wildcards_alone_are_refused_like_a_lone_gt() {
    // `*.>` matches `jetsaga.task.payments` and every other installation's
    // engine subjects, as `>` does.
    for subject in [">", "*.>", "*.*.>", "*.*.*", "*"] {
        let e = with_trigger(subject).unwrap_err();
        assert_eq!(e.code(), "E-DEF-TRIGGER", "{subject}");
        assert_eq!(
            e.to_string(),
            format!(
                "bad.yaml: saga `s`: field `triggers[0].subject`: `{subject}` is wildcards alone: it would capture every message of that shape, the engine subjects of every installation among them; name the subjects (`orders.>`, `orders.*.created`)"
            )
        );
    }
}

#[test]
fn application_subjects_and_lifecycle_events_pass() {
    // Lifecycle events pass here; the engine checks their prefix on apply.
    for subject in [
        "orders.created",
        "orders.*.created",
        "orders.>",
        "stock.low.*",
        "shop.task",
        "task.created",
        "jetsaga.event.order.saga.completed",
        // Could stand for `acme.task.payments` of an installation `acme`,
        // but so could most subjects with a wildcard: not refused.
        "acme.*.payments",
        "*.created",
    ] {
        assert!(with_trigger(subject).is_ok(), "{subject}");
    }
}

#[test]
fn built_definitions_are_checked_too() {
    let mut def = built();
    def.triggers = vec![Trigger {
        subject: "jetsaga.start.x".into(),
        input: None,
    }];
    let e = validate(&def).unwrap_err();
    assert_eq!(e.code(), "E-DEF-TRIGGER");
    assert!(e.to_string().contains("is a jetsaga engine subject"), "{e}");
}
