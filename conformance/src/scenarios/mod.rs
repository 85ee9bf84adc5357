//! Scenario bodies that every executor must pass, over real sockets.

pub mod name_relay;
