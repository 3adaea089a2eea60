//! Tests of the state machine: unit tests grouped by behaviour on shared
//! [`fixtures`], and property tests against an oracle ([`properties`]).

mod attempts;
mod cancel;
mod compensation;
mod fencing;
mod fixtures;
mod forward;
mod invariants;
mod properties;
mod retry;
mod sim;

use super::*;
use crate::saga::definition::RetryPolicy;
use fixtures::*;
use serde_json::json;
