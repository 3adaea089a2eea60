//! The pure saga state machine.
