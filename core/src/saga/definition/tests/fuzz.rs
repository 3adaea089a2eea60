//! Whatever the input, parsing and validation never panic.

use super::*;
use proptest::prelude::*;
use std::time::Duration;

// --- never panic -------------------------------------------------------

#[test]
fn deeply_nested_input_is_rejected_without_overflow() {
    for text in [
        "[".repeat(100_000),
        "{\"sagas\":".repeat(100_000),
        format!("sagas:\n  s:\n    steps: {}", "[".repeat(100_000)),
        format!("sagas:\n  s:\n    steps: {}", "- ".repeat(100_000)),
    ] {
        assert!(yaml(&text).is_err());
        assert!(json(&text).is_err());
    }
}

fn mutate(base: &str, edits: &[(usize, u8, char)]) -> String {
    let mut chars: Vec<char> = base.chars().collect();
    for &(pos, kind, c) in edits {
        let pos = pos % (chars.len() + 1);
        match kind % 3 {
            0 => chars.insert(pos, c),
            1 if pos < chars.len() => {
                chars.remove(pos);
            }
            _ if pos < chars.len() => chars[pos] = c,
            _ => chars.push(c),
        }
    }
    chars.into_iter().collect()
}

fn interesting_char() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::sample::select(vec![
            '{', '}', '[', ']', ':', ',', '-', ' ', '\n', '\t', '"', '\'', '#', '&', '*', '!', '|',
            '>', '0', '9', 'a', '.', '\\', '\u{0}', '\u{feff}',
        ]),
        any::<char>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        let _ = parse_str("fuzz", &text, Format::Yaml);
        let _ = parse_str("fuzz", &text, Format::Json);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse_str("fuzz", &text, Format::Yaml);
        let _ = parse_str("fuzz", &text, Format::Json);
    }

    #[test]
    fn mutated_valid_files_never_panic(
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), interesting_char()), 1..8),
    ) {
        for base in [EXAMPLE_YAML, EXAMPLE_JSON] {
            let text = mutate(base, &edits);
            for format in [Format::Yaml, Format::Json] {
                if let Ok(file) = parse_str("fuzz", &text, format) {
                    // Whatever parses also revalidates as a built definition.
                    for saga in &file.sagas {
                        prop_assert!(validate(saga).is_ok(), "{text}");
                    }
                }
            }
        }
    }

    #[test]
    fn validate_never_panics_on_built_definitions(
        deps in prop::collection::vec(prop::collection::vec(0usize..12, 0..4), 0..10),
        jitter in any::<f64>(),
        factor in any::<f64>(),
        attempts in any::<u32>(),
        delay_ms in any::<u64>(),
    ) {
        let mut def = built();
        let template = def.steps[0].clone();
        def.steps = deps
            .iter()
            .enumerate()
            .map(|(i, d)| StepDefinition {
                id: format!("s{i}"),
                depends_on: d.clone(),
                retry: RetryPolicy {
                    max_attempts: attempts,
                    initial_delay: Duration::from_millis(delay_ms),
                    backoff_factor: factor,
                    jitter,
                    ..RetryPolicy::default()
                },
                ..template.clone()
            })
            .collect();
        let _ = validate(&def);
        for step in &def.steps {
            for attempt in 0..4 {
                prop_assert!(step.retry.delay(attempt, jitter) <= step.retry.max_delay);
            }
        }
    }
}
