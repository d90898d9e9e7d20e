//! Line items of a purchase and the program's item bonuses: extra points for a SKU or a product
//! category when the POS sends the purchase's lines (README "Item bonuses").
//!
//! A purchase may carry up to [`MAX_ITEMS`] [`PurchaseItem`]s (sku, category, quantity, the
//! line's amount). They never change the purchase's own points, which count its whole amount;
//! an [`ItemBonus`] of the program adds to them, for each line it matches:
//! - `points_per_item` × the line's quantity: fixed points, which no multiplier changes;
//! - with `multiplier_pct` above 100, the extra `multiplier_pct − 100` % of what the line's
//!   amount earns: `amount × points_per_unit × tier % × schedule % × (multiplier_pct − 100) %`,
//!   so that the line earns `multiplier_pct` % of the points it would earn otherwise, the
//!   multipliers multiplying as they do for the purchase.
//!
//! When several bonuses match a line, the one giving the line the most points applies (the
//! first listed on a tie): bonuses never stack on one line, as schedules do not. Each bonus's
//! lines are summed, rounded once with the program's rounding, and written as one earn entry
//! `item_bonus:<name>`. Below the program's minimum basket a purchase earns nothing, bonuses
//! included.

use serde::{Deserialize, Serialize};

use crate::object;
use crate::program::{bounded, name};
use crate::{Cents, DomainError, ItemCategory, Points, Program, Sku, StoreId, Timestamp};

/// The most line items one purchase may carry.
pub const MAX_ITEMS: usize = 200;
/// The largest quantity of one line.
pub const MAX_ITEM_QUANTITY: i64 = 10_000;
/// The most item bonuses of a program.
pub const MAX_ITEM_BONUSES: usize = 32;
/// The most SKUs, and the most categories, one item bonus may list.
pub const MAX_BONUS_PRODUCTS: usize = 1_000;
/// The largest `points_per_item`.
const MAX_POINTS_PER_ITEM: i64 = 1_000_000;
const MAX_ITEM_MULTIPLIER_PCT: i64 = 10_000;
/// Points are computed in units of 10^-8 point: the rate's three percentages.
const SCALE: u128 = 100_000_000;

/// A line item as a client writes it (HTTP body, POS topic record), read only from a JSON
/// object. Numbers are signed so that a negative one gets an error naming its field.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseItemSpec {
    pub sku: String,
    #[serde(default)]
    pub category: Option<String>,
    pub quantity: i64,
    pub amount_cents: i64,
}

/// One validated line of a purchase: `quantity` units of `sku` for `amount_cents` (the line's
/// total, not a unit price).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseItem {
    pub sku: Sku,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<ItemCategory>,
    pub quantity: u32,
    pub amount_cents: Cents,
}

/// `deserialize_with` of an optional list of line items: each must be a JSON object.
pub fn item_specs<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<PurchaseItemSpec>>, D::Error> {
    Option::<Vec<object::Object<PurchaseItemSpec>>>::deserialize(d)
        .map(|v| v.map(|v| v.into_iter().map(|o| o.0).collect()))
}

/// Validates the line items of a purchase of `amount`: at most [`MAX_ITEMS`]; each with a sku
/// and an optional category of 1 to 64 characters of `[A-Za-z0-9_.:-]`, a quantity of 1 to
/// [`MAX_ITEM_QUANTITY`] and an amount of 0 or more; their amounts summed not above the
/// purchase's. The error names the first offending line (`items[3].quantity ...`).
pub fn parse_items(
    specs: &[PurchaseItemSpec],
    amount: Cents,
) -> Result<Vec<PurchaseItem>, DomainError> {
    let invalid = |reason: String| DomainError::invalid("items", reason);
    if specs.len() > MAX_ITEMS {
        return Err(invalid(format!(
            "a purchase has at most {MAX_ITEMS} items, got {}",
            specs.len()
        )));
    }
    let mut items = Vec::with_capacity(specs.len());
    let mut total: u64 = 0;
    for (i, s) in specs.iter().enumerate() {
        let token = |field: &str| {
            invalid(format!(
                "items[{i}].{field} must be 1 to 64 characters of [A-Za-z0-9_.:-]"
            ))
        };
        let sku = Sku::parse(&s.sku).map_err(|_| token("sku"))?;
        let category = match &s.category {
            None => None,
            Some(c) => Some(ItemCategory::parse(c).map_err(|_| token("category"))?),
        };
        if !(1..=MAX_ITEM_QUANTITY).contains(&s.quantity) {
            return Err(invalid(format!(
                "items[{i}].quantity must be between 1 and {MAX_ITEM_QUANTITY}, got {}",
                s.quantity
            )));
        }
        let line = Cents::new(s.amount_cents).map_err(|_| {
            invalid(format!(
                "items[{i}].amount_cents must be between 0 and {}, got {}",
                Cents::MAX,
                s.amount_cents
            ))
        })?;
        // Each line is at most 10^12 and there are at most 200: no overflow.
        total = total.saturating_add(line.get());
        items.push(PurchaseItem {
            sku,
            category,
            quantity: s.quantity as u32,
            amount_cents: line,
        });
    }
    if total > amount.get() {
        return Err(invalid(format!(
            "the items' amounts add up to {total} cents, more than the purchase's amount_cents ({})",
            amount.get()
        )));
    }
    Ok(items)
}

/// An item bonus as HQ writes it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemBonusSpec {
    pub name: String,
    #[serde(default)]
    pub skus: Option<Vec<String>>,
    #[serde(default)]
    pub categories: Option<Vec<String>>,
    #[serde(default)]
    pub points_per_item: Option<i64>,
    #[serde(default)]
    pub multiplier_pct: Option<i64>,
}

/// A validated item bonus: it matches a line whose sku is one of `skus` or whose category is
/// one of `categories` (compared exactly, as the POS sends them); it gives `points_per_item`
/// per unit and, above 100, the extra of `multiplier_pct` on the line's amount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ItemBonus {
    pub name: String,
    pub skus: Option<Vec<Sku>>,
    pub categories: Option<Vec<ItemCategory>>,
    pub points_per_item: u64,
    pub multiplier_pct: u64,
}

impl ItemBonus {
    /// Whether the bonus applies to `item`.
    pub fn matches(&self, item: &PurchaseItem) -> bool {
        self.skus.as_ref().is_some_and(|s| s.contains(&item.sku))
            || self
                .categories
                .as_ref()
                .zip(item.category.as_ref())
                .is_some_and(|(cs, c)| cs.contains(c))
    }

    /// What the bonus gives `item`, in 10^-8 points, where `rate` is the purchase's
    /// `points_per_unit × tier multiplier_pct × schedule multiplier_pct`.
    fn value(&self, item: &PurchaseItem, rate: u128) -> u128 {
        let fixed = u128::from(item.quantity)
            .saturating_mul(u128::from(self.points_per_item))
            .saturating_mul(SCALE);
        let extra = u128::from(item.amount_cents.get())
            .saturating_mul(rate)
            .saturating_mul(u128::from(self.multiplier_pct.saturating_sub(100)));
        fixed.saturating_add(extra)
    }
}

/// A list of 1 to [`MAX_BONUS_PRODUCTS`] tokens, or none.
fn products<T>(
    field: &str,
    v: &Option<Vec<String>>,
    parse: impl Fn(&str) -> Result<T, DomainError>,
) -> Result<Option<Vec<T>>, DomainError> {
    let Some(v) = v else { return Ok(None) };
    if v.is_empty() || v.len() > MAX_BONUS_PRODUCTS {
        return Err(DomainError::invalid_program(format!(
            "{field} must list 1 to {MAX_BONUS_PRODUCTS} entries, or be left out"
        )));
    }
    v.iter()
        .map(|s| {
            parse(s).map_err(|_| {
                DomainError::invalid_program(format!(
                    "{field} has {s:?}, not 1 to 64 characters of [A-Za-z0-9_.:-]"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Validates a program's item bonuses: at most [`MAX_ITEM_BONUSES`], names distinct, each
/// naming SKUs or categories and giving something (`points_per_item` of 1 or more, or
/// `multiplier_pct` above 100).
pub(crate) fn item_bonuses(specs: &[ItemBonusSpec]) -> Result<Vec<ItemBonus>, DomainError> {
    if specs.len() > MAX_ITEM_BONUSES {
        return Err(DomainError::invalid_program(format!(
            "at most {MAX_ITEM_BONUSES} item_bonuses"
        )));
    }
    let mut out: Vec<ItemBonus> = Vec::with_capacity(specs.len());
    for (i, b) in specs.iter().enumerate() {
        let f = |field: &str| format!("item_bonuses[{i}].{field}");
        let bonus = ItemBonus {
            name: name(&f("name"), &b.name)?,
            skus: products(&f("skus"), &b.skus, Sku::parse)?,
            categories: products(&f("categories"), &b.categories, ItemCategory::parse)?,
            points_per_item: bounded(
                &f("points_per_item"),
                b.points_per_item.unwrap_or(0),
                0,
                MAX_POINTS_PER_ITEM,
            )?,
            multiplier_pct: bounded(
                &f("multiplier_pct"),
                b.multiplier_pct.unwrap_or(100),
                100,
                MAX_ITEM_MULTIPLIER_PCT,
            )?,
        };
        if bonus.skus.is_none() && bonus.categories.is_none() {
            return Err(DomainError::invalid_program(format!(
                "item_bonuses[{i}] must name skus or categories (or both)"
            )));
        }
        if bonus.points_per_item == 0 && bonus.multiplier_pct == 100 {
            return Err(DomainError::invalid_program(format!(
                "item_bonuses[{i}] gives nothing: set points_per_item (1 or more) or \
                 multiplier_pct (above 100)"
            )));
        }
        if out.iter().any(|x| x.name == bonus.name) {
            return Err(DomainError::invalid_program(format!(
                "item bonus name {:?} appears twice",
                bonus.name
            )));
        }
        out.push(bonus);
    }
    Ok(out)
}

impl Program {
    /// The points each item bonus adds to a purchase of `amount_cents` with `items`, at `at`
    /// in `store`, by a member at the tier `tier`: `(bonus, points)` in the program's order, bonuses adding nothing left out; nothing below `min_basket_cents`.
    /// See the module's documentation for the rule. Saturates rather than wraps: a total past
    /// the balance limit is refused by the member.
    pub fn item_bonus_points(
        &self,
        items: &[PurchaseItem],
        amount_cents: u64,
        tier: usize,
        at: Timestamp,
        store: &StoreId,
    ) -> Vec<(&ItemBonus, Points)> {
        if items.is_empty() || self.item_bonuses.is_empty() || amount_cents < self.min_basket_cents
        {
            return Vec::new();
        }
        let tier_pct = self.tiers.get(tier).map_or(100, |t| t.multiplier_pct);
        let rate = u128::from(self.points_per_unit)
            * u128::from(tier_pct)
            * u128::from(self.bonus_pct(at, store));
        let mut sums = vec![0u128; self.item_bonuses.len()];
        for item in items {
            let mut best: Option<(usize, u128)> = None;
            for (i, b) in self.item_bonuses.iter().enumerate() {
                if !b.matches(item) {
                    continue;
                }
                let v = b.value(item, rate);
                if best.is_none_or(|(_, w)| v > w) {
                    best = Some((i, v));
                }
            }
            if let Some((i, v)) = best {
                sums[i] = sums[i].saturating_add(v);
            }
        }
        self.item_bonuses
            .iter()
            .zip(sums)
            .map(|(b, v)| {
                // Far below the cap with the validator's bounds; kept so rounding cannot overflow.
                let p = self.rounding.divide(v.min(u128::MAX / 2), SCALE);
                (b, u64::try_from(p).unwrap_or(u64::MAX))
            })
            .filter(|(_, p)| *p > 0)
            .collect()
    }
}
