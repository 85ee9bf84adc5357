//! A machine with its associated types erased, so one simulation can host
//! machines of different protocols side by side.

use std::any::Any;
use std::marker::PhantomData;
use std::time::Instant;

use ferry_core::io::{Action, Input, Machine};

/// A typed handle to a machine hosted by a [`Sim`](super::Sim).
pub struct NodeId<M> {
    pub(super) index: usize,
    _machine: PhantomData<fn() -> M>,
}

impl<M> NodeId<M> {
    pub(super) fn new(index: usize) -> Self {
        Self {
            index,
            _machine: PhantomData,
        }
    }

    /// The node's position in the simulation (0 for the first machine added).
    pub fn index(self) -> usize {
        self.index
    }
}

impl<M> Clone for NodeId<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for NodeId<M> {}

impl<M> PartialEq for NodeId<M> {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index
    }
}

impl<M> Eq for NodeId<M> {}

impl<M> std::fmt::Debug for NodeId<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node#{}", self.index)
    }
}

/// The object-safe face of a hosted machine.
pub(super) trait Driven {
    fn input(&mut self, input: Input<'_>, now: Instant);
    fn timeout(&mut self, now: Instant);
    fn next_action(&mut self) -> Option<Action>;
    fn deadline(&self) -> Option<Instant>;
    /// The machine's [`Machine::HALF_CLOSE`].
    fn half_close(&self) -> bool;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A machine and the events it reported that the test has not taken yet.
pub(super) struct Hosted<M: Machine> {
    pub(super) machine: M,
    pub(super) events: Vec<M::Event>,
}

impl<M: Machine> Hosted<M> {
    /// Events are drained after every call, as the contract asks.
    pub(super) fn collect_events(&mut self) {
        while let Some(event) = self.machine.poll_event() {
            self.events.push(event);
        }
    }
}

impl<M> Driven for Hosted<M>
where
    M: Machine + 'static,
    M::Event: 'static,
{
    fn input(&mut self, input: Input<'_>, now: Instant) {
        self.machine.handle_input(input, now);
        self.collect_events();
    }

    fn timeout(&mut self, now: Instant) {
        self.machine.handle_timeout(now);
        self.collect_events();
    }

    fn next_action(&mut self) -> Option<Action> {
        let action = self.machine.poll_action();
        if action.is_none() {
            self.collect_events();
        }
        action
    }

    fn deadline(&self) -> Option<Instant> {
        self.machine.poll_timeout()
    }

    fn half_close(&self) -> bool {
        M::HALF_CLOSE
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
