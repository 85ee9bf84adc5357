//! The name relay scenarios (spec/name-relay.md) against the async-std runtime.

use ferry_conformance::served::AsyncStdNameRelay;

ferry_conformance::name_relay_conformance!(AsyncStdNameRelay::start());
