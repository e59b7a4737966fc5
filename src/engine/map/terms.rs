//! Replacing the margin terms of instruments the map already knows (a venue changed a bracket
//! table): the table is swapped and every slot on a changed instrument is revalued, under that
//! instrument's write lock, so no tick, update or materialisation ever sees slots cached on the
//! old terms next to a table that holds the new ones.
//!
//! Only the *terms* may change: tiers, liquidation fee, margin options, haircut and the
//! `source_note`. What a quantity means (kind, underlying, contract size, stable) may not: an
//! account's positions were entered in those units, and the update and fill rules rely on them.
//! Price sources are kept as configured (the feeds subscribe at start-up).

use super::*;

/// Why a replacement definition was refused (nothing was changed for any instrument).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TermsError {
    /// The id is not in the map's table (instruments are fixed for the map's lifetime).
    #[error("{0}: not a configured instrument (instruments are added by a restart)")]
    Unknown(InstrumentId),
    /// The new definition changes what a quantity of the instrument means.
    #[error(
        "{id}: {field} changed from {old} to {new}; only margin terms are replaced live (restart with reviewed presets)"
    )]
    Identity {
        /// The instrument.
        id: InstrumentId,
        /// The field (`kind`, `underlying`, `contract_size`, `stable`).
        field: &'static str,
        /// The configured value.
        old: String,
        /// The new value.
        new: String,
    },
}

/// The first identity field `new` changes against `old`, if any.
pub fn identity_change(old: &Instrument, new: &Instrument) -> Option<TermsError> {
    let err = |field, o: String, n: String| {
        Some(TermsError::Identity {
            id: old.id.clone(),
            field,
            old: o,
            new: n,
        })
    };
    if old.kind != new.kind {
        return err("kind", format!("{:?}", old.kind), format!("{:?}", new.kind));
    }
    if old.underlying != new.underlying {
        return err("underlying", old.underlying.clone(), new.underlying.clone());
    }
    if old.contract_size != new.contract_size {
        return err(
            "contract_size",
            old.contract_size.to_string(),
            new.contract_size.to_string(),
        );
    }
    if old.stable != new.stable {
        return err("stable", old.stable.to_string(), new.stable.to_string());
    }
    None
}

/// `old` with the margin terms of `new` (id, kind, underlying, contract size, stable and the
/// price sources stay `old`'s). A liquidation fee of 0 in `new` means the source does not
/// publish one (Binance brackets without `exchangeInfo`): `old`'s is kept. The haircut is
/// taken only for collateral (the importers read contracts, whose haircut fields are unused).
pub fn with_terms_of(old: &Instrument, new: &Instrument) -> Instrument {
    let collateral = !old.kind.is_contract();
    Instrument {
        tiers: new.tiers.clone(),
        liquidation_fee_rate: if new.liquidation_fee_rate.is_zero() {
            old.liquidation_fee_rate
        } else {
            new.liquidation_fee_rate
        },
        margin: new.margin.clone(),
        collateral_ratio: if collateral {
            new.collateral_ratio
        } else {
            old.collateral_ratio
        },
        haircut_tiers: if collateral {
            new.haircut_tiers.clone()
        } else {
            old.haircut_tiers.clone()
        },
        source_note: new.source_note.clone(),
        ..old.clone()
    }
}

impl AccountMap {
    /// Replaces the margin terms of the given instruments (see the module docs; each must be a
    /// configured id with the same kind, underlying, contract size and stable flag, else
    /// nothing changes) and revalues every slot on them at the instrument's current engine
    /// price. Returns, per instrument in `defs` order, the keys of its holders (sorted). The
    /// holders' other slots are left as they were: materialise them before evaluating.
    pub fn replace_terms(
        &self,
        defs: &[Instrument],
    ) -> Result<Vec<(InstrumentId, Vec<AccountKey>)>, TermsError> {
        let old = self.table();
        let mut idxs = Vec::with_capacity(defs.len());
        for d in defs {
            let idx = old
                .index(&d.id)
                .ok_or_else(|| TermsError::Unknown(d.id.clone()))?;
            let cur = old
                .get(idx)
                .ok_or_else(|| TermsError::Unknown(d.id.clone()))?;
            if let Some(e) = identity_change(cur, d) {
                return Err(e);
            }
            idxs.push(idx);
        }
        // Lock order: instrument locks ascending, then one account cell at a time.
        let mut order: Vec<InstrumentIdx> = idxs.clone();
        order.sort_unstable();
        order.dedup();
        let mut guards: Guards<'_> = Vec::with_capacity(order.len());
        for i in &order {
            if let Some(l) = self.instr.get(*i as usize) {
                guards.push((*i, l.write()));
            }
        }
        // The new table: loaded again under the locks, so a concurrent swap is not undone.
        let mut table = (*self.table()).clone();
        for (d, idx) in defs.iter().zip(&idxs) {
            if let Some(slot) = table.get(*idx) {
                let next = with_terms_of(slot, d);
                table.set(*idx, next);
            }
        }
        let table = Arc::new(table);
        *self.table.write() = Arc::clone(&table);
        let mut out = Vec::with_capacity(defs.len());
        for (d, idx) in defs.iter().zip(&idxs) {
            let (Some(inst), Some(state)) = (table.get(*idx), guard_of(&guards, *idx)) else {
                out.push((d.id.clone(), Vec::new()));
                continue;
            };
            let price = if inst.stable {
                Some(Decimal::ONE)
            } else {
                state.price
            };
            let mut keys = Vec::with_capacity(state.holders.len());
            for &key in state.holders.iter() {
                let Some(cell) = self.accounts.cell(key) else {
                    continue;
                };
                let mut g = cell.lock();
                let Some(e) = super::live_mut(&mut g) else {
                    continue;
                };
                for i in 0..e.slots.len() {
                    let Some(slot) = e.slots.get(i) else { break };
                    if slot.instr() != *idx {
                        continue;
                    }
                    let new = match value_slot(inst, slot, price) {
                        Ok(v) => v,
                        Err(error) => {
                            tracing::warn!(account = %e.id, instrument = %inst.id, %error, "Slot not valued on the new terms");
                            None
                        }
                    };
                    e.set_slot(i, new, price.unwrap_or(Decimal::ZERO));
                }
                keys.push(key);
            }
            out.push((d.id.clone(), keys));
        }
        drop(guards);
        Ok(out)
    }
}
