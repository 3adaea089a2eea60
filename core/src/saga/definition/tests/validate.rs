//! `validate()` on definitions that arrive already built.

use super::*;
use std::time::Duration;

// --- validate() on built definitions -----------------------------------

#[test]
fn validate_checks_built_definitions() {
    let mut def = built();
    def.steps[0].depends_on = vec![7];
    let e = validate(&def).unwrap_err();
    assert_eq!(e.code(), "E-DEF-UNKNOWN-DEPENDENCY");
    assert_eq!(
        e.to_string(),
        "request: saga `deploy_environment`, step `register_manifest`: field `depends_on`: step index 7 is out of range (the saga has 2 steps)"
    );

    let mut def = built();
    def.steps[0].depends_on = vec![1];
    let e = validate(&def).unwrap_err();
    assert_eq!(
        e.to_string(),
        "request: saga `deploy_environment`: dependency cycle register_manifest -> deploy_containers -> register_manifest; remove one of these dependencies"
    );

    let mut def = built();
    def.name = "a b".into();
    def.timeout = Some(Duration::ZERO);
    def.steps[1].id = "register_manifest".into();
    def.steps[1].timeout = Duration::from_secs(400 * 86_400);
    def.steps[1].retry.jitter = f64::NAN;
    def.steps[1].retry.backoff_factor = f64::INFINITY;
    def.steps[1].retry.max_attempts = 0;
    def.steps[1].compensation = Some(String::new());
    let e = validate_in("api", &def).unwrap_err();
    assert_eq!(
        codes(&e),
        [
            "E-DEF-NAME",
            "E-DEF-DURATION",
            "E-DEF-DUPLICATE-STEP",
            "E-DEF-NAME",
            "E-DEF-DURATION",
            "E-DEF-RETRY",
            "E-DEF-RETRY",
            "E-DEF-RETRY",
        ]
    );
    assert!(
        e.to_string()
            .lines()
            .all(|l| l.starts_with("api: saga `a b`")),
        "{e}"
    );

    let mut def = built();
    def.steps.clear();
    assert_eq!(validate(&def).unwrap_err().code(), "E-DEF-EMPTY");
}
