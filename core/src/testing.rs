//! Test support shared by the machine tests: a [`Harness`] that drives any
//! [`Machine`] with a virtual clock, and the epoch that clock starts from.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::io::{Action, ConnId, Input, ListenerId, Machine};

/// The listener the harness reports connections on.
pub(crate) const LISTENER: ListenerId = ListenerId(1);

/// An arbitrary epoch for unit tests; the core itself never reads the clock.
#[allow(clippy::disallowed_methods)]
pub(crate) fn test_epoch() -> Instant {
    Instant::now()
}

/// A machine under test and its virtual `now`: inputs in, actions out, no sockets.
pub(crate) struct Harness<M: Machine> {
    pub(crate) machine: M,
    pub(crate) now: Instant,
}

impl<M: Machine> Harness<M> {
    /// Drive `machine` from [`test_epoch`].
    pub(crate) fn with_machine(machine: M) -> Self {
        Self {
            machine,
            now: test_epoch(),
        }
    }
    /// Handle `input` now; the actions it caused.
    pub(crate) fn input(&mut self, input: Input<'_>) -> Vec<Action> {
        self.machine.handle_input(input, self.now);
        self.drain()
    }
    /// Handle `command` now; the actions it caused.
    pub(crate) fn command(&mut self, command: M::Command) -> Vec<Action> {
        self.machine.handle_command(command, self.now);
        self.drain()
    }
    /// Every pending action.
    pub(crate) fn drain(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.machine.poll_action()).collect()
    }
    /// Every pending event.
    pub(crate) fn events(&mut self) -> Vec<M::Event> {
        std::iter::from_fn(|| self.machine.poll_event()).collect()
    }
    /// Move the clock on by `by` and run the timeouts; the actions they caused.
    pub(crate) fn advance(&mut self, by: Duration) -> Vec<Action> {
        self.now += by;
        self.machine.handle_timeout(self.now);
        self.drain()
    }
    /// Accept connection `id` on [`LISTENER`], checking the machine answers nothing.
    pub(crate) fn accept(&mut self, id: u64) -> ConnId {
        let conn = ConnId(id);
        let peer = "127.0.0.1:1".parse().unwrap();
        assert!(
            self.input(Input::Accepted {
                listener: LISTENER,
                conn,
                peer
            })
            .is_empty()
        );
        conn
    }
    /// `data` arrives on `conn`; the actions it caused.
    pub(crate) fn recv(&mut self, conn: ConnId, data: &[u8]) -> Vec<Action> {
        self.input(Input::Received { conn, data })
    }
}

/// Every byte `actions` sends to `to`, in order.
pub(crate) fn sent_to(actions: &[Action], to: ConnId) -> Vec<u8> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { conn, data } if *conn == to => Some(data.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Check that `actions`, a machine's answer to a listen command, is one
/// `Listen` on `addr` with a core-allocated listener.
pub(crate) fn assert_listens(actions: &[Action], addr: SocketAddr) {
    match actions {
        [Action::Listen { listener, addr: a }] => {
            assert!(listener.is_core_allocated());
            assert_eq!(*a, addr);
        }
        other => panic!("{other:?}"),
    }
}
