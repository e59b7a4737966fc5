//! Account updates and fills on the map (rules in the parent module's docs): validation, the
//! slots of a new account state, fill arithmetic, and the commit under the lock order.

use std::collections::HashSet;

use rust_decimal::Decimal;

use super::*;

impl AccountMap {
    /// Applies an account update (see the module docs for the rules). On error nothing changes.
    pub fn apply_update(&self, update: AccountUpdate) -> Result<UpdateOutcome, AccountError> {
        let kind = match &update {
            AccountUpdate::Replace { .. } => "replace",
            AccountUpdate::Fill { .. } => "fill",
            AccountUpdate::Collateral { .. } => "collateral",
            AccountUpdate::Remove { .. } => "remove",
        };
        let account = update.account_id().clone();
        let r = self.apply_update_inner(update);
        match &r {
            Ok(_) => {
                self.changed_since_layout.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("liqwatch_accounts_updates_total", "kind" => kind).increment(1);
                metrics::gauge!("liqwatch_accounts_loaded").set(self.len() as f64);
            }
            Err(error) => {
                metrics::counter!("liqwatch_accounts_rejected_total", "kind" => kind).increment(1);
                tracing::warn!(%account, kind, %error, "Account update rejected");
            }
        }
        r
    }

    fn apply_update_inner(&self, update: AccountUpdate) -> Result<UpdateOutcome, AccountError> {
        match update {
            AccountUpdate::Replace { account } => {
                let (slots, thresholds) = self.build_slots(&account)?;
                let id = &account.id;
                loop {
                    // One shard of the directory is locked for this lookup/insert (see the
                    // lock order in the module docs of `map.rs`).
                    let key = self.ids.get_or_insert(
                        id,
                        |k| self.accounts.is(k, id),
                        || {
                            let key = self.alloc_key()?;
                            self.accounts.reserve(key, id);
                            Ok(key)
                        },
                    )?;
                    let _stripe = self.stripe(key);
                    if self.key_of(id) != Some(key) {
                        continue; // removed meanwhile: start again
                    }
                    let existed = self.accounts.with(key, |_| ()).is_some();
                    return match self.commit(id, key, Some((slots, thresholds))) {
                        Ok(()) if existed => Ok(UpdateOutcome::Updated(key)),
                        Ok(()) => Ok(UpdateOutcome::Created(key)),
                        Err(e) => {
                            if !existed {
                                self.ids.remove(id, key);
                                self.accounts.unreserve(key);
                            }
                            Err(e)
                        }
                    };
                }
            }
            AccountUpdate::Remove { account_id } => {
                let (key, _stripe) = self.lock_existing(&account_id)?;
                self.commit(&account_id, key, None)?;
                self.ids.remove(&account_id, key);
                Ok(UpdateOutcome::Removed(key))
            }
            AccountUpdate::Fill { account_id, fill } => {
                let (key, _stripe) = self.lock_existing(&account_id)?;
                let (slots, thresholds) = self.current(key, &account_id)?;
                let slots = self.apply_fill(&account_id, slots, &fill)?;
                self.commit(&account_id, key, Some((slots, thresholds)))?;
                Ok(UpdateOutcome::Updated(key))
            }
            AccountUpdate::Collateral {
                account_id,
                asset,
                delta,
            } => {
                let idx = self.collateral_idx(&account_id, &asset)?;
                let (key, _stripe) = self.lock_existing(&account_id)?;
                let (mut slots, thresholds) = self.current(key, &account_id)?;
                credit(&mut slots, idx, delta).ok_or_else(|| AccountError::Margin {
                    account: account_id.clone(),
                    source: MarginError::Overflow {
                        context: "collateral balance",
                    },
                })?;
                self.commit(&account_id, key, Some((slots, thresholds)))?;
                Ok(UpdateOutcome::Updated(key))
            }
        }
    }

    /// The update lock of an account key (striped: unrelated accounts may share one).
    fn stripe(&self, key: AccountKey) -> MutexGuard<'_, ()> {
        let i = key as usize % UPDATE_STRIPES;
        match self.stripes.get(i) {
            Some(m) => m.lock(),
            None => self.fallback_stripe.lock(),
        }
    }

    /// The key of an existing account with its update lock held, the directory still
    /// mapping the id to that key.
    fn lock_existing(
        &self,
        id: &AccountId,
    ) -> Result<(AccountKey, MutexGuard<'_, ()>), AccountError> {
        loop {
            let key = self
                .key_of(id)
                .ok_or_else(|| AccountError::UnknownAccount(id.clone()))?;
            let g = self.stripe(key);
            if self.key_of(id) == Some(key) {
                return Ok((key, g));
            }
        }
    }

    fn alloc_key(&self) -> Result<AccountKey, AccountError> {
        self.accounts.alloc().ok_or(AccountError::Capacity)
    }

    fn current(&self, key: AccountKey, id: &AccountId) -> Result<(Vec<Slot>, Meta), AccountError> {
        self.accounts
            .with(key, |e| {
                (
                    e.slots.to_vec(),
                    Meta {
                        thresholds: e.thresholds.clone(),
                        apply_funding: e.apply_funding,
                    },
                )
            })
            .ok_or_else(|| AccountError::UnknownAccount(id.clone()))
    }

    fn collateral_idx(
        &self,
        account: &AccountId,
        asset: &InstrumentId,
    ) -> Result<InstrumentIdx, AccountError> {
        let table = self.table();
        let idx = table
            .index(asset)
            .ok_or_else(|| AccountError::UnknownInstrument(asset.clone()))?;
        slot_checked(account, asset, idx)?;
        match table.get(idx) {
            Some(i) if !i.kind.is_contract() => Ok(idx),
            _ => Err(AccountError::Invalid {
                account: account.clone(),
                message: format!("{asset} is a contract, not a collateral asset"),
            }),
        }
    }

    fn contract_idx(
        &self,
        account: &AccountId,
        id: &InstrumentId,
    ) -> Result<(InstrumentIdx, Arc<InstrumentTable>), AccountError> {
        // Kind, underlying and contract size never change (a replacement of the terms may not
        // change them), so the table may be loaded here, before any instrument lock.
        let table = self.table();
        let idx = table
            .index(id)
            .ok_or_else(|| AccountError::UnknownInstrument(id.clone()))?;
        slot_checked(account, id, idx)?;
        match table.get(idx) {
            Some(i) if i.kind.is_contract() => Ok((idx, Arc::clone(&table))),
            _ => Err(AccountError::Invalid {
                account: account.clone(),
                message: format!(
                    "{id} is a collateral asset, not a contract: it cannot have a position"
                ),
            }),
        }
    }

    /// Validates a full account and turns it into unvalued slots.
    fn build_slots(&self, account: &Account) -> Result<(Vec<Slot>, Meta), AccountError> {
        let invalid = |message: String| AccountError::Invalid {
            account: account.id.clone(),
            message,
        };
        if let Some(p) = account.problems().into_iter().next() {
            return Err(invalid(p.to_string()));
        }
        let mut slots = Vec::with_capacity(account.collateral.len() + account.positions.len());
        for (asset, amount) in &account.collateral {
            let idx = self.collateral_idx(&account.id, asset)?;
            slots.push(Slot::new(idx, SlotKind::Collateral, *amount, Decimal::ZERO));
        }
        let mut seen = HashSet::new();
        for p in &account.positions {
            let (idx, _) = self.contract_idx(&account.id, &p.instrument)?;
            // Two ids naming one instrument (aliases) are one leg.
            if !seen.insert((idx, p.side)) {
                return Err(invalid(format!(
                    "two positions on {} side {:?}: merge them",
                    p.instrument, p.side
                )));
            }
            slots.push(Slot::new(
                idx,
                SlotKind::Position(p.side),
                p.quantity,
                p.entry_price,
            ));
        }
        if slots.len() > usize::from(u16::MAX) {
            return Err(invalid(format!("{} slots is too many", slots.len())));
        }
        Ok((
            slots,
            Meta {
                thresholds: account.thresholds.clone().map(Box::new),
                apply_funding: account.apply_funding,
            },
        ))
    }

    /// Applies a fill to a copy of the account's slots (rules in the module docs).
    fn apply_fill(
        &self,
        account: &AccountId,
        mut slots: Vec<Slot>,
        fill: &Fill,
    ) -> Result<Vec<Slot>, AccountError> {
        let invalid = |message: String| AccountError::Invalid {
            account: account.clone(),
            message,
        };
        let overflow = |context: &'static str| AccountError::Margin {
            account: account.clone(),
            source: MarginError::Overflow { context },
        };
        let (idx, table) = self.contract_idx(account, &fill.instrument)?;
        let inst = table
            .get(idx)
            .ok_or_else(|| AccountError::UnknownInstrument(fill.instrument.clone()))?;
        if fill.quantity.is_zero() {
            return Err(invalid("fill quantity must not be 0".into()));
        }
        if fill.price <= Decimal::ZERO {
            return Err(invalid(format!(
                "fill price must be positive, got {}",
                fill.price
            )));
        }
        let settle_id = match &fill.settle_asset {
            Some(s) => s.clone(),
            None if inst.kind.is_inverse() => InstrumentId::from(inst.underlying.as_str()),
            None => InstrumentId::from("USDT"),
        };
        let settle = self.collateral_idx(account, &settle_id)?;
        let kind = SlotKind::Position(fill.side);
        let pos = slots
            .iter()
            .position(|s| s.instr() == idx && s.kind() == kind);
        let (q, ep) = pos
            .and_then(|p| slots.get(p))
            .map(|s| (s.quantity(), s.entry()))
            .unwrap_or((Decimal::ZERO, Decimal::ZERO));
        let dq = fill.quantity;
        let p = fill.price;
        let cs = inst.contract_size;
        let new_q = q.checked_add(dq).ok_or_else(|| overflow("fill quantity"))?;
        check_leg(fill.side, new_q).map_err(|m| {
            invalid(format!(
                "fill of {dq} on the {:?} leg of {} would leave {new_q}: {m}",
                fill.side, fill.instrument
            ))
        })?;
        let increase = q.is_zero() || q.is_sign_positive() == dq.is_sign_positive();
        let mut realised = Decimal::ZERO;
        let new_entry = if increase {
            let (aq, adq) = (q.abs(), dq.abs());
            if q.is_zero() {
                p
            } else if inst.kind.is_inverse() {
                let denom = aq
                    .checked_div(ep)
                    .and_then(|a| adq.checked_div(p).and_then(|b| a.checked_add(b)))
                    .ok_or_else(|| overflow("inverse entry price"))?;
                aq.checked_add(adq)
                    .and_then(|n| n.checked_div(denom))
                    .ok_or_else(|| overflow("inverse entry price"))?
            } else {
                let num = aq
                    .checked_mul(ep)
                    .and_then(|a| adq.checked_mul(p).and_then(|b| a.checked_add(b)))
                    .ok_or_else(|| overflow("entry price"))?;
                aq.checked_add(adq)
                    .and_then(|d| num.checked_div(d))
                    .ok_or_else(|| overflow("entry price"))?
            }
        } else {
            let closed = dq.abs().min(q.abs());
            let signed = if q.is_sign_positive() {
                closed
            } else {
                -closed
            };
            let face = signed
                .checked_mul(cs)
                .ok_or_else(|| overflow("realised PnL"))?;
            realised = if inst.kind.is_inverse() {
                Decimal::ONE
                    .checked_div(ep)
                    .and_then(|a| Decimal::ONE.checked_div(p).and_then(|b| a.checked_sub(b)))
                    .and_then(|d| face.checked_mul(d))
            } else {
                p.checked_sub(ep).and_then(|d| face.checked_mul(d))
            }
            .map(margin::normalise)
            .ok_or_else(|| overflow("realised PnL"))?;
            if dq.abs() > q.abs() { p } else { ep }
        };
        let cash = realised
            .checked_sub(fill.fee)
            .ok_or_else(|| overflow("fill cash"))?;
        match pos {
            Some(i) if new_q.is_zero() => {
                slots.remove(i);
            }
            Some(i) => {
                if let Some(s) = slots.get_mut(i) {
                    s.set_quantity(new_q);
                    s.set_entry(new_entry);
                }
            }
            None => slots.push(Slot::new(idx, kind, new_q, new_entry)),
        }
        if !cash.is_zero() || !slots.iter().any(|s| s.instr() == settle) {
            credit(&mut slots, settle, cash).ok_or_else(|| overflow("settle balance"))?;
        }
        Ok(slots)
    }

    /// Values `slots` at the current prices and stores them (or removes the account when
    /// `new` is `None`), keeping the holders index exact. Caller holds the account's stripe.
    fn commit(
        &self,
        id: &AccountId,
        key: AccountKey,
        new: Option<(Vec<Slot>, Meta)>,
    ) -> Result<(), AccountError> {
        let old_instrs: Vec<InstrumentIdx> = self
            .accounts
            .with(key, |e| e.slots.iter().map(|s| s.instr()).collect())
            .unwrap_or_default();
        let mut new_instrs: Vec<InstrumentIdx> = new
            .as_ref()
            .map(|(s, _)| s.iter().map(|s| s.instr()).collect())
            .unwrap_or_default();
        new_instrs.sort_unstable();
        new_instrs.dedup();
        let mut all: Vec<InstrumentIdx> = old_instrs.iter().chain(&new_instrs).copied().collect();
        all.sort_unstable();
        all.dedup();
        let mut guards: Guards<'_> = Vec::with_capacity(all.len());
        for i in &all {
            if let Some(l) = self.instr.get(*i as usize) {
                guards.push((*i, l.write()));
            }
        }
        // Loaded under the instrument locks (see `AccountMap::table`).
        let table = self.table();
        let entry = match new {
            Some((mut slots, meta)) => {
                for s in slots.iter_mut() {
                    let Some(inst) = table.get(s.instr()) else {
                        continue;
                    };
                    let price = guard_of(&guards, s.instr()).and_then(|g| g.price);
                    let v = value_slot(inst, s, price).map_err(|source| AccountError::Margin {
                        account: id.clone(),
                        source,
                    })?;
                    let at = if inst.stable {
                        Decimal::ONE
                    } else {
                        price.unwrap_or(Decimal::ZERO)
                    };
                    s.set_value(v, at);
                }
                let mut e = Entry {
                    pending: false,
                    id: id.clone(),
                    slots: slots.into_boxed_slice(),
                    equity: zero_scaled(),
                    mm: zero_scaled(),
                    invalid: 0,
                    totals_ok: true,
                    thresholds: meta.thresholds,
                    apply_funding: meta.apply_funding,
                };
                e.recompute_totals();
                if !e.totals_ok {
                    return Err(AccountError::Margin {
                        account: id.clone(),
                        source: MarginError::Overflow {
                            context: "account totals",
                        },
                    });
                }
                Some(e)
            }
            None => None,
        };
        for (i, g) in guards.iter_mut() {
            if new_instrs.binary_search(i).is_ok() {
                g.holders.insert(key);
            } else {
                g.holders.remove(&key);
            }
        }
        self.accounts.put(key, entry);
        drop(guards);
        Ok(())
    }
}

/// Adds `delta` to the balance of `asset`, creating it. `None` on overflow.
fn credit(slots: &mut Vec<Slot>, asset: InstrumentIdx, delta: Decimal) -> Option<()> {
    match slots
        .iter_mut()
        .find(|s| s.instr() == asset && s.kind() == SlotKind::Collateral)
    {
        Some(s) => s.set_quantity(s.quantity().checked_add(delta)?),
        None => {
            // Balances come first, like the BTreeMap order of `Account::collateral` is kept
            // when listing them.
            let at = slots
                .iter()
                .position(|s| s.kind() != SlotKind::Collateral)
                .unwrap_or(slots.len());
            slots.insert(
                at,
                Slot::new(asset, SlotKind::Collateral, delta, Decimal::ZERO),
            );
        }
    }
    Some(())
}

fn check_leg(side: PositionSide, q: Decimal) -> Result<(), String> {
    match side {
        PositionSide::Long if q.is_sign_negative() && !q.is_zero() => {
            Err("a hedge-mode long leg cannot be negative".into())
        }
        PositionSide::Short if q.is_sign_positive() && !q.is_zero() => {
            Err("a hedge-mode short leg cannot be positive".into())
        }
        _ => Ok(()),
    }
}

/// What an entry carries besides its slots: its own levels and its funding switch.
pub(super) struct Meta {
    thresholds: Option<Box<Thresholds>>,
    apply_funding: bool,
}

/// A slot keeps its instrument in 16 bits: an update naming an instrument past the 65,536th of
/// the table is refused, naming it, before any slot is made.
fn slot_checked(
    account: &AccountId,
    instrument: &InstrumentId,
    idx: InstrumentIdx,
) -> Result<(), AccountError> {
    match slot::slot_instrument(idx) {
        Some(_) => Ok(()),
        None => Err(AccountError::Invalid {
            account: account.clone(),
            message: format!(
                "{instrument} is instrument {} of the table; an account can hold only the first {}",
                u64::from(idx) + 1,
                super::MAX_INSTRUMENTS
            ),
        }),
    }
}
