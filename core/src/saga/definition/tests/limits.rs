//! Size limits: steps per saga, fan-out, file size (`E-DEF-TOO-LARGE`).

use super::*;

const SMALL: DefinitionLimits = DefinitionLimits {
    max_steps: 3,
    max_fan_out: 2,
    max_file_bytes: 4096,
};

fn within(text: &str, limits: &DefinitionLimits) -> Result<DefinitionFile, DefinitionError> {
    parse_str_within("big.yaml", text, Format::Yaml, limits)
}

/// A chain of `n` steps: each depends on the one before.
fn chain(n: usize) -> String {
    let mut steps = step("s0", "");
    for i in 1..n {
        steps.push_str(&step(
            &format!("s{i}"),
            &format!("        depends_on: [s{}]\n", i - 1),
        ));
    }
    saga_with_steps(&steps)
}

#[test]
fn defaults_are_far_above_real_sagas_and_documented() {
    let limits = DefinitionLimits::default();
    assert_eq!(limits.max_steps, 200);
    assert_eq!(limits.max_fan_out, 100);
    assert_eq!(limits.max_file_bytes, 1024 * 1024);
    assert!(yaml(EXAMPLE_YAML).is_ok());
}

#[test]
fn a_saga_at_the_step_limit_is_accepted_and_one_more_is_refused() {
    assert!(within(&chain(3), &SMALL).is_ok());
    let e = within(&chain(4), &SMALL).unwrap_err();
    assert_eq!(e.code(), "E-DEF-TOO-LARGE");
    assert_eq!(
        e.to_string(),
        "big.yaml: saga `s`: field `steps`: the saga has 4 steps; at most 3 (max_definition_steps); split it into several sagas"
    );
}

#[test]
fn too_many_steps_without_dependencies_are_refused() {
    let steps: String = (0..3).map(|i| step(&format!("r{i}"), "")).collect();
    let e = within(&saga_with_steps(&steps), &SMALL).unwrap_err();
    assert_eq!(e.code(), "E-DEF-TOO-LARGE");
    assert_eq!(
        e.to_string(),
        "big.yaml: saga `s`: field `steps`: 3 steps have no dependencies and would start at once; at most 2 (max_definition_fan_out)"
    );
}

#[test]
fn too_many_dependents_of_one_step_are_refused() {
    let mut steps = step("root", "");
    for i in 0..3 {
        steps.push_str(&step(&format!("leaf{i}"), "        depends_on: [root]\n"));
    }
    let limits = DefinitionLimits {
        max_steps: 10,
        ..SMALL
    };
    let e = within(&saga_with_steps(&steps), &limits).unwrap_err();
    assert_eq!(e.code(), "E-DEF-TOO-LARGE");
    assert_eq!(
        e.to_string(),
        "big.yaml: saga `s`, step `root`: 3 steps depend on this step and would start at once; at most 2 (max_definition_fan_out)"
    );
    // Two dependents are within the limit.
    let mut steps = step("root", "");
    for i in 0..2 {
        steps.push_str(&step(&format!("leaf{i}"), "        depends_on: [root]\n"));
    }
    assert!(within(&saga_with_steps(&steps), &limits).is_ok());
}

#[test]
fn a_text_over_the_size_limit_is_refused_before_parsing() {
    let limits = DefinitionLimits {
        max_file_bytes: 64,
        ..SMALL
    };
    // Not even valid YAML: the size is checked first.
    let text = format!("sagas: [{}", "x".repeat(100));
    let e = within(&text, &limits).unwrap_err();
    assert_eq!(e.code(), "E-DEF-TOO-LARGE");
    assert_eq!(
        e.to_string(),
        format!(
            "big.yaml: the definition file is {} bytes; at most 64 (max_definition_bytes); split it into several files",
            text.len()
        )
    );
}

#[test]
fn a_file_over_the_size_limit_is_refused_naming_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    let text = chain(2);
    std::fs::write(&path, &text).unwrap();
    let limits = DefinitionLimits {
        max_file_bytes: 32,
        ..SMALL
    };
    let e = parse_file_within(&path, &limits).unwrap_err();
    assert_eq!(e.code(), "E-DEF-TOO-LARGE");
    assert!(
        e.to_string().ends_with(&format!(
            "the definition file is {} bytes; at most 32 (max_definition_bytes); split it into several files",
            text.len()
        )),
        "{e}"
    );
    assert!(parse_file_within(&path, &SMALL).is_ok());
}

#[test]
fn validate_within_checks_built_definitions() {
    let def = within(&chain(3), &SMALL).unwrap().sagas.remove(0);
    assert!(validate_within("api", &def, &SMALL).is_ok());
    let tighter = DefinitionLimits {
        max_steps: 2,
        ..SMALL
    };
    let e = validate_within("api", &def, &tighter).unwrap_err();
    assert_eq!(e.code(), "E-DEF-TOO-LARGE");
    assert!(
        e.to_string().contains("the saga has 3 steps; at most 2"),
        "{e}"
    );
}

#[test]
fn the_defaults_refuse_the_fan_out_that_stalled_an_engine() {
    // 4,900 steps all depending on one: over both default limits.
    let mut steps = step("root", "");
    for i in 0..4_900 {
        steps.push_str(&step(&format!("s{i}"), "        depends_on: [root]\n"));
    }
    let e = yaml(&saga_with_steps(&steps)).unwrap_err();
    assert_eq!(codes(&e), ["E-DEF-TOO-LARGE", "E-DEF-TOO-LARGE"]);
    let text = messages(&e).join("\n");
    assert!(
        text.contains("the saga has 4901 steps; at most 200"),
        "{text}"
    );
    assert!(text.contains("4900 steps depend on this step"), "{text}");
}
