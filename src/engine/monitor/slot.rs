//! One account's state machine as the monitor holds it, in 24 bytes.
//!
//! The monitor keeps one slot per account key. Held as plain fields — two [`AccountState`]s
//! (a warning carries its level, a 16-byte `Decimal`), the event sequence and an optional
//! funding time — a slot took 72 bytes. Almost every account is healthy or warned at a level
//! whose `Decimal` mantissa fits 64 bits, has had fewer than 2³² events and has never been
//! warned about a funding payment, so a slot keeps each state as a two-bit tag and its level as
//! the 64-bit magnitude and a sign-and-scale byte (the same `Decimal`, bit for bit:
//! `a_slot_reads_back_what_it_was_given`), its sequence as a `u32`, and keeps the rest of the
//! rare cases — a level wider than 64 bits, a later event, a funding time — in a box. The
//! ratio's tag's unused values tell the two layouts apart, so `Option<Slot>` is 24 bytes too
//! (32 until stop 33, with a 64-bit sequence and a byte per tag).

use crate::engine::map::{narrow, widen};
use crate::model::{AccountState, TimestampMs};

/// What `bits` holds: two flags, and the distance state's tag in bits 2–3.
const HAS_SHOCK: u8 = 1;
const LIQUIDATED: u8 = 2;
const SHOCK_SHIFT: u8 = 2;

/// An [`AccountState`]'s variant (its level kept beside it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Tag {
    Healthy,
    Warning,
    Triggered,
}

/// Every field of a slot, as the monitor reads and writes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Fields {
    pub(super) state: AccountState,
    pub(super) seq: u64,
    /// The distance state ([`super::distance`]).
    pub(super) shock: AccountState,
    /// The account had distance levels when last evaluated (the index asks for its bounds).
    pub(super) has_shock: bool,
    /// Marked liquidated by its trigger ([`super::AfterTrigger::MarkLiquidated`]): silent until
    /// the account's next update.
    pub(super) liquidated: bool,
    /// The funding time last warned about ([`super::MonitorState::funding_warned`]).
    pub(super) funding_warned: Option<TimestampMs>,
}

/// One account's state machine (see the module docs).
#[derive(Clone, Debug)]
pub(super) struct Slot(Repr);

#[derive(Clone, Debug)]
enum Repr {
    Compact {
        seq: u32,
        state_mag: u64,
        shock_mag: u64,
        state_flags: u8,
        shock_flags: u8,
        state: Tag,
        bits: u8,
    },
    Boxed(Box<Fields>),
}

/// A state as its tag, magnitude and flags, when its level's mantissa fits 64 bits (the map's
/// slots narrow their values the same way).
fn pack(s: &AccountState) -> Option<(Tag, u64, u8)> {
    match s {
        AccountState::Healthy => Some((Tag::Healthy, 0, 0)),
        AccountState::Triggered => Some((Tag::Triggered, 0, 0)),
        AccountState::Warning { level } => narrow(*level).map(|(m, f)| (Tag::Warning, m, f)),
    }
}

/// The distance state's tag, kept in `bits`.
fn shock_tag(bits: u8) -> Tag {
    match (bits >> SHOCK_SHIFT) & 3 {
        0 => Tag::Healthy,
        1 => Tag::Warning,
        _ => Tag::Triggered,
    }
}

/// The state [`pack`] took apart.
fn unpack(tag: Tag, mag: u64, flags: u8) -> AccountState {
    match tag {
        Tag::Healthy => AccountState::Healthy,
        Tag::Triggered => AccountState::Triggered,
        Tag::Warning => AccountState::Warning {
            level: widen(mag, flags),
        },
    }
}

impl Slot {
    /// A slot holding `f`.
    pub(super) fn new(f: Fields) -> Slot {
        let seq = u32::try_from(f.seq).ok();
        let compact = match (pack(&f.state), pack(&f.shock), f.funding_warned, seq) {
            (
                Some((state, state_mag, state_flags)),
                Some((shock, shock_mag, shock_flags)),
                None,
                Some(seq),
            ) => Some(Repr::Compact {
                seq,
                state_mag,
                shock_mag,
                state_flags,
                shock_flags,
                state,
                bits: if f.has_shock { HAS_SHOCK } else { 0 }
                    | if f.liquidated { LIQUIDATED } else { 0 }
                    | (shock as u8) << SHOCK_SHIFT,
            }),
            _ => None,
        };
        Slot(compact.unwrap_or_else(|| Repr::Boxed(Box::new(f))))
    }

    /// Every field.
    pub(super) fn fields(&self) -> Fields {
        match &self.0 {
            Repr::Compact {
                seq,
                state_mag,
                shock_mag,
                state_flags,
                shock_flags,
                state,
                bits,
            } => Fields {
                state: unpack(*state, *state_mag, *state_flags),
                seq: u64::from(*seq),
                shock: unpack(shock_tag(*bits), *shock_mag, *shock_flags),
                has_shock: bits & HAS_SHOCK != 0,
                liquidated: bits & LIQUIDATED != 0,
                funding_warned: None,
            },
            Repr::Boxed(f) => (**f).clone(),
        }
    }

    /// Changes some fields (the slot is packed again).
    pub(super) fn update<R>(&mut self, change: impl FnOnce(&mut Fields) -> R) -> R {
        let mut f = self.fields();
        let r = change(&mut f);
        *self = Slot::new(f);
        r
    }

    /// The state of the account's margin ratio.
    pub(super) fn state(&self) -> AccountState {
        match &self.0 {
            Repr::Compact {
                state_mag,
                state_flags,
                state,
                ..
            } => unpack(*state, *state_mag, *state_flags),
            Repr::Boxed(f) => f.state.clone(),
        }
    }

    /// The ratio's state is healthy (read without building it).
    pub(super) fn is_healthy(&self) -> bool {
        match &self.0 {
            Repr::Compact { state, .. } => *state == Tag::Healthy,
            Repr::Boxed(f) => f.state == AccountState::Healthy,
        }
    }

    /// The distance state.
    pub(super) fn shock(&self) -> AccountState {
        match &self.0 {
            Repr::Compact {
                shock_mag,
                shock_flags,
                bits,
                ..
            } => unpack(shock_tag(*bits), *shock_mag, *shock_flags),
            Repr::Boxed(f) => f.shock.clone(),
        }
    }

    /// The `seq` of the account's last event.
    #[cfg(test)]
    pub(super) fn seq(&self) -> u64 {
        match &self.0 {
            Repr::Compact { seq, .. } => u64::from(*seq),
            Repr::Boxed(f) => f.seq,
        }
    }

    /// See [`Fields::has_shock`].
    pub(super) fn has_shock(&self) -> bool {
        match &self.0 {
            Repr::Compact { bits, .. } => bits & HAS_SHOCK != 0,
            Repr::Boxed(f) => f.has_shock,
        }
    }

    /// See [`Fields::liquidated`].
    pub(super) fn liquidated(&self) -> bool {
        match &self.0 {
            Repr::Compact { bits, .. } => bits & LIQUIDATED != 0,
            Repr::Boxed(f) => f.liquidated,
        }
    }

    /// See [`Fields::funding_warned`].
    pub(super) fn funding_warned(&self) -> Option<TimestampMs> {
        match &self.0 {
            Repr::Compact { .. } => None,
            Repr::Boxed(f) => f.funding_warned,
        }
    }

    /// Kept in the compact layout (no box).
    #[cfg(test)]
    fn is_compact(&self) -> bool {
        matches!(self.0, Repr::Compact { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal::Decimal;

    #[test]
    fn a_slot_is_24_bytes_and_so_is_an_empty_one() {
        assert_eq!(std::mem::size_of::<Slot>(), 24);
        assert_eq!(std::mem::size_of::<Option<Slot>>(), 24);
    }

    fn decimal(hi: u32, mid: u32, lo: u32, negative: bool, scale: u32) -> Decimal {
        // `from_parts` clears the sign of zero; keep it, as arithmetic can leave it.
        let mut b = Decimal::from_parts(lo, mid, hi, false, scale).serialize();
        if negative {
            b[3] |= 0x80;
        }
        Decimal::deserialize(b)
    }

    fn state() -> impl Strategy<Value = AccountState> {
        prop_oneof![
            Just(AccountState::Healthy),
            Just(AccountState::Triggered),
            (
                0u32..3,
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<bool>(),
                0u32..=28
            )
                .prop_map(|(width, hi, mid, lo, negative, scale)| {
                    let (hi, mid) = match width {
                        0 => (0, 0),
                        1 => (0, mid),
                        _ => (hi.max(1), mid),
                    };
                    AccountState::Warning {
                        level: decimal(hi, mid, lo, negative, scale),
                    }
                }),
        ]
    }

    fn bits(s: &AccountState) -> Option<[u8; 16]> {
        match s {
            AccountState::Warning { level } => Some(level.serialize()),
            _ => None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Whatever a slot is given it reads back, levels bit for bit (scale and sign of zero
        /// included), through either layout and every accessor; it is compact exactly when
        /// both levels fit 64 bits, the sequence fits 32 and no funding time is held, and an
        /// update that clears what made it boxed makes it compact again.
        #[test]
        fn a_slot_reads_back_what_it_was_given(
            st in state(),
            sh in state(),
            seq in prop_oneof![0..=u64::from(u32::MAX), any::<u64>()],
            has_shock in any::<bool>(),
            liquidated in any::<bool>(),
            funding in proptest::option::of(any::<i64>()),
        ) {
            let f = Fields { state: st.clone(), seq, shock: sh.clone(), has_shock, liquidated, funding_warned: funding };
            let mut s = Slot::new(f.clone());
            let wide = |a: &AccountState| pack(a).is_none();
            prop_assert_eq!(
                s.is_compact(),
                !wide(&st) && !wide(&sh) && funding.is_none() && seq <= u64::from(u32::MAX)
            );
            let back = s.fields();
            prop_assert_eq!(&back, &f);
            prop_assert_eq!(bits(&back.state), bits(&st));
            prop_assert_eq!(bits(&back.shock), bits(&sh));
            prop_assert_eq!(bits(&s.state()), bits(&st));
            prop_assert_eq!(bits(&s.shock()), bits(&sh));
            prop_assert_eq!(
                (s.state(), s.shock(), s.seq(), s.has_shock(), s.liquidated(), s.funding_warned(), s.is_healthy()),
                (st.clone(), sh.clone(), seq, has_shock, liquidated, funding, st == AccountState::Healthy)
            );
            s.update(|f| {
                f.state = AccountState::Healthy;
                f.shock = AccountState::Triggered;
                f.funding_warned = None;
                f.seq = f.seq.wrapping_add(1);
            });
            prop_assert_eq!(s.is_compact(), seq.wrapping_add(1) <= u64::from(u32::MAX));
            prop_assert_eq!(
                (s.state(), s.shock(), s.seq(), s.has_shock(), s.liquidated(), s.funding_warned()),
                (AccountState::Healthy, AccountState::Triggered, seq.wrapping_add(1), has_shock, liquidated, None)
            );
            // Every distance state through the two bits that keep its tag.
            for shock in [AccountState::Healthy, AccountState::Triggered, st.clone()] {
                s.update(|f| {
                    f.shock = shock.clone();
                    f.seq = 7;
                });
                prop_assert_eq!(s.shock(), shock.clone());
                prop_assert_eq!(s.fields().shock, shock);
                prop_assert_eq!((s.has_shock(), s.liquidated()), (has_shock, liquidated));
            }
        }
    }
}
