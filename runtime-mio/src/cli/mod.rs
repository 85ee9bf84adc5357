//! The subcommands of the `ferry` binary.

pub mod config;
pub mod daemon;
pub mod mount;
pub mod name_client;
pub mod port_relay;
pub mod vpn;
pub mod vpn_client;
