//! Sagas: definitions, state and the pure state machine.

pub mod definition;
pub mod machine;
pub mod state;
pub mod transition;
