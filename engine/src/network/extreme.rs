//! The greatest (or least) value of one field over the facts of an alpha
//! memory without join key, kept as facts come and go.
//!
//! A `not X(v > bound)` or `exists X(v < bound)` needs one fact that passes
//! its one comparison, and the extreme fact passes if any does. Without it,
//! every token scans the memory until a blocker: Waltz's boundary rules
//! (`not Junction(base_point > j.base_point)`) tested 1.6 M junctions for 2,000
//! tokens, as many as there are junctions ordered the other way.
//!
//! Values are compared only when they are all of one kind (all integers, all
//! strings, ...; no NaN): then the order is total and the extreme is exact.
//! Otherwise the tracker says so, and joins scan as before.

use std::cell::Cell;
use std::cmp::Ordering;

use stoa_rules::{Sym, Value};

/// What a tracker knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not known: computed when next asked for.
    Stale,
    /// The values are not of one kind: scan.
    Mixed,
    /// The memory is empty.
    Empty,
    /// The fact slot holding the extreme.
    At(u32),
}

pub struct Tracker {
    pub field: Sym,
    /// The greatest value (else the least).
    pub max: bool,
    state: Cell<State>,
}

/// The kind of a value the order is total on, if any.
fn kind(v: &Value) -> Option<u8> {
    match v {
        Value::Bool(_) => Some(0),
        Value::Int(_) => Some(1),
        Value::Float(f) if !f.is_nan() => Some(2),
        Value::Str(_) => Some(3),
        _ => None,
    }
}

impl Tracker {
    pub fn new(field: Sym, max: bool) -> Tracker {
        Tracker { field, max, state: Cell::new(State::Stale) }
    }

    /// Whether `a` is beyond `b` (greater for a max), if both are of one
    /// kind.
    fn beyond(&self, a: &Value, b: &Value) -> Option<bool> {
        if kind(a)? != kind(b)? {
            return None;
        }
        let ord = a.partial_cmp_value(b)?;
        Some(if self.max { ord == Ordering::Greater } else { ord == Ordering::Less })
    }

    /// A fact entered the memory; `value` reads a slot's field.
    pub fn inserted<'a>(&self, slot: u32, value: impl Fn(u32) -> &'a Value) {
        let next = match self.state.get() {
            State::Stale | State::Mixed => return,
            State::Empty => match kind(value(slot)) {
                Some(_) => State::At(slot),
                None => State::Mixed,
            },
            State::At(best) => match self.beyond(value(slot), value(best)) {
                Some(true) => State::At(slot),
                Some(false) => State::At(best),
                None => State::Mixed,
            },
        };
        self.state.set(next);
    }

    /// A fact left the memory.
    pub fn removed(&self, slot: u32) {
        if matches!(self.state.get(), State::At(s) if s == slot) || self.state.get() == State::Mixed {
            self.state.set(State::Stale);
        }
    }

    /// The extreme over `slots` (the whole memory), computed if stale.
    pub fn get<'a>(&self, slots: &[u32], value: impl Fn(u32) -> &'a Value) -> State {
        if self.state.get() == State::Stale {
            let mut state = State::Empty;
            for &s in slots {
                state = match state {
                    State::Empty if kind(value(s)).is_some() => State::At(s),
                    State::At(best) => match self.beyond(value(s), value(best)) {
                        Some(true) => State::At(s),
                        Some(false) => State::At(best),
                        None => State::Mixed,
                    },
                    _ => State::Mixed,
                };
                if state == State::Mixed {
                    break;
                }
            }
            self.state.set(state);
        }
        self.state.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extreme_follows_inserts_and_removals() {
        let values = [Value::Int(5), Value::Int(9), Value::Int(2), Value::str("x"), Value::Int(9)];
        let value = |s: u32| &values[s as usize];
        let t = Tracker::new(Sym::new("v"), true);
        assert_eq!(t.get(&[0, 1, 2], value), State::At(1));
        t.inserted(4, value); // equal: the first stays
        assert_eq!(t.get(&[0, 1, 2, 4], value), State::At(1));
        t.removed(1);
        assert_eq!(t.get(&[0, 2, 4], value), State::At(4));
        t.inserted(3, value); // a string among integers
        assert_eq!(t.get(&[0, 2, 4, 3], value), State::Mixed);
        t.removed(3);
        assert_eq!(t.get(&[0, 2, 4], value), State::At(4));
        let least = Tracker::new(Sym::new("v"), false);
        assert_eq!(least.get(&[0, 1, 2], value), State::At(2));
        assert_eq!(least.get(&[], value), State::At(2), "kept until told");
        let empty = Tracker::new(Sym::new("v"), false);
        assert_eq!(empty.get(&[], value), State::Empty);
        empty.inserted(0, value);
        assert_eq!(empty.get(&[0], value), State::At(0));
    }
}
